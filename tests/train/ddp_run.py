"""Run by tests/train/test_loop.py, once plainly and once under `torchrun --nproc_per_node 2`.

Fine-tunes the tiny classifier (dropout off, so both runs see identical arithmetic up to summation
order) and writes the history and a weight checksum as JSON (rank 0 only).
"""
import json
import os
import sys

import torch

torch.set_num_threads(1)

from leanlm.models.tiny import tiny_encoder  # noqa: E402
from leanlm.train.finetune import FinetuneConfig, finetune  # noqa: E402
from leanlm.train.loop import LoopConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_finetune import _toy_splits  # noqa: E402

model = tiny_encoder()
for m in model.module.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
cfg = FinetuneConfig(loop=LoopConfig(epochs=2, lr=3e-3, warmup_ratio=0.0, patience=0, eval_every=2), batch_size=8)
out = finetune(model, _toy_splits(), cfg, output=sys.argv[2] if len(sys.argv) > 2 else None, progress=False)
if int(os.environ.get("RANK", "0")) == 0:
    weights = {k: float(v.double().abs().sum()) for k, v in out.module.state_dict().items()}
    with open(sys.argv[1], "w") as f:
        json.dump({"history": out.record.training["result"]["history"], "weights": weights,
                   "world": int(os.environ.get("WORLD_SIZE", "1"))}, f)
