"""No "`loss_type=None` ... ForCausalLMLoss" message from loading encoders and tracing them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A fresh process: transformers warns once per process, so an in-process test could pass only
# because an earlier test already used up the warning.
SCRIPT = """
import logging, torch
import leanlm
from leanlm.models.tiny import tiny_encoder
seen = []
class Catch(logging.Handler):
    def emit(self, record):
        seen.append(record.getMessage())
logging.getLogger("transformers").addHandler(Catch())
logging.getLogger("transformers").setLevel(logging.INFO)
for task in ("sequence-classification", "feature-extraction"):
    m = tiny_encoder(task)
    m.save(f"{DIR}/{task}")
    m = leanlm.load(f"{DIR}/{task}")
    batch = m.encode(["a fine film", "a dull film"])
    if task == "sequence-classification":
        m.module(**batch, labels=torch.tensor([1, 0])).loss.item()
        inner = m.module.bert
    else:
        m(**batch)
        inner = m.module
    # what torch.jit.trace (OpenVINO/NNCF conversion) does to every submodule
    hasattr(inner, "loss_function")
    torch.jit.trace(m.module, (batch["input_ids"],), strict=False)
print("LOGS:", [s for s in seen if "loss" in s.lower()])
"""


def test_load_forward_trace_print_no_loss_type_warning(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = SCRIPT.replace("{DIR}", str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "loss_type" not in out and "ForCausalLMLoss" not in out, out[-2000:]
    assert "LOGS: []" in r.stdout, r.stdout
