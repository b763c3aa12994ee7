"""ONNX Runtime backend: run an exported encoder graph (float or int8) on the CPU.

A model directory for this backend holds `model.onnx` (the whole graph, weights inside),
`config.json` and the tokenizer. Loading builds an `InferenceSession` with all graph
optimizations on and `intra_op_num_threads` = $LEANLM_THREADS, else every core this process may
use. The session is wrapped in `OrtRunner`, a callable that takes the same torch tensors as a
PyTorch model (`runner(**batch)`) and returns a torch tensor, so `LeanModel` code is unchanged.

Example:
    >>> ort_model = leanlm.runtime.convert.convert(leanlm.load("runs/sentiment"), "onnxruntime")
    >>> ort_model.predict(["a fine film"])
    >>> ort_model.save("runs/sentiment-ort")             # model.onnx + config.json + tokenizer
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel, Record
from leanlm.errors import ArtifactError, UnsupportedError
from leanlm.runtime import register_backend
from leanlm.runtime.onnx_export import OUTPUT_NAMES, require_ort

ONNX_FILE = "model.onnx"
_NP_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(bool)": np.bool_}


def thread_count() -> int:
    """Threads for a runtime session: $LEANLM_THREADS if set, else every core this process may use."""
    value = os.environ.get("LEANLM_THREADS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise UnsupportedError(f"LEANLM_THREADS must be a positive integer, got {value!r}") from None
        if n < 1:
            raise UnsupportedError(f"LEANLM_THREADS must be a positive integer, got {value!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class GraphSource:
    """The bytes of a graph, held in memory (fresh export) or read back from a model directory.

    Holding a path keeps a loaded model's memory to what the runtime needs; the file's size and
    mtime are remembered so that a file replaced after loading is refused instead of copied.
    """

    def __init__(self, data: bytes | None = None, path: Path | None = None):
        if (data is None) == (path is None):
            raise ValueError("GraphSource needs exactly one of data or path")
        self.data = data
        self.path = Path(path) if path is not None else None
        self._stamp = self._stat() if self.path is not None else None

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()  # type: ignore[union-attr]
        return st.st_size, st.st_mtime_ns

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        if not self.path.exists() or self._stat() != self._stamp:
            raise ArtifactError(f"{self.path} changed or vanished since this model was loaded; load it again")
        return self.path.read_bytes()

    def for_runtime(self) -> bytes | str:
        return self.data if self.data is not None else str(self.path)

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else self._stamp[0]  # type: ignore[index]


def to_feed(batch: dict[str, torch.Tensor], wanted: dict[str, Any]) -> dict[str, np.ndarray]:
    """Numpy inputs for a graph: only the inputs it declares, in its dtypes; token types default to 0."""
    feed = {}
    for name, dtype in wanted.items():
        value = batch.get(name)
        if value is None:
            if name == "token_type_ids" and "input_ids" in batch:
                value = torch.zeros_like(batch["input_ids"])
            else:
                raise ArtifactError(f"the graph needs input {name!r}; the batch has {sorted(batch)}")
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feed[name] = np.ascontiguousarray(arr, dtype=dtype)
    return feed


def output_count(task: str) -> int:
    """How many leading graph outputs a runner returns for `task`: 1 (a tensor) or more (a tuple)."""
    return len(OUTPUT_NAMES.get(task, ("output",)))


def as_outputs(arrays: Sequence[Any], count: int) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One tensor, or a tuple of `count` tensors (question answering: start, end logits)."""
    tensors = tuple(torch.from_numpy(np.asarray(a)) for a in arrays[:count])
    return tensors[0] if count == 1 else tensors


class OrtRunner:
    """An InferenceSession behind the PyTorch calling convention: `runner(**batch) -> torch.Tensor`.

    With `outputs` > 1 (question answering) it returns a tuple of the first `outputs` graph outputs.
    """

    def __init__(self, source: GraphSource, config: Any = None, threads: int | None = None, outputs: int = 1):
        ort = require_ort()
        self.source = source
        self.config = config  # HF config: LeanModel reads max_position_embeddings from it
        self.threads = threads or thread_count()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only: unused-initializer notices are not actionable
        try:
            self.session = ort.InferenceSession(source.for_runtime(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for invalid graphs
            raise ArtifactError(f"ONNX Runtime cannot load the graph: {str(e).splitlines()[0]}") from e
        self.inputs = {i.name: _NP_TYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        graph_outputs = [o.name for o in self.session.get_outputs()]
        if len(graph_outputs) < outputs:
            raise ArtifactError(f"the graph has {len(graph_outputs)} output(s); this task needs {outputs}")
        self.outputs = graph_outputs[:outputs]
        self.output = self.outputs[0]

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return as_outputs(self.session.run(self.outputs, to_feed(batch, self.inputs)), len(self.outputs))

    def __deepcopy__(self, memo: dict) -> "OrtRunner":
        import copy

        # Sessions cannot be copied; the graph bytes are immutable, so a new session shares them.
        return OrtRunner(self.source, copy.deepcopy(self.config, memo), self.threads, len(self.outputs))


def ort_model(source: GraphSource, model: LeanModel, info: dict[str, Any]) -> LeanModel:
    """A LeanModel running `source` on ONNX Runtime, with `model`'s tokenizer and a copy of its record."""
    import copy

    config = getattr(model.module, "config", None) or getattr(model.runner, "config", None)
    record = copy.deepcopy(model.record)
    record.backend = "onnxruntime"
    record.weights = ONNX_FILE
    record.extra["runtime"] = {"backend": "onnxruntime", **info}
    runner = OrtRunner(source, copy.deepcopy(config), outputs=output_count(model.task))
    return LeanModel(None, model.tokenizer, record, runner=runner)


def save_graph(model: LeanModel, directory: Path, kind: type) -> str:
    runner = model.runner
    if not isinstance(runner, kind):
        raise ArtifactError(f"{model.backend} backend cannot save a model whose runner is {type(runner).__name__}")
    (directory / ONNX_FILE).write_bytes(runner.source.read())
    if runner.config is not None:
        runner.config.save_pretrained(directory)
    return ONNX_FILE


def load_parts(directory: Path, record: Record, device: str | None) -> tuple[Any, Any]:
    """Tokenizer and HF config of a graph model directory (shared with the OpenVINO backend)."""
    from transformers import AutoConfig, AutoTokenizer

    from leanlm.models.loading import quiet_transformers

    if device not in (None, "cpu"):
        raise UnsupportedError(f"the {record.backend} backend runs on the CPU; got device={device!r}")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        config = AutoConfig.from_pretrained(directory) if (directory / "config.json").exists() else None
    return tokenizer, config


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def save(self, model: LeanModel, directory: Path) -> str:
        return save_graph(model, directory, OrtRunner)

    def load(self, directory: Path, record: Record, device: str | None = None) -> LeanModel:
        tokenizer, config = load_parts(directory, record, device)
        runner = OrtRunner(GraphSource(path=directory / record.weights), config, outputs=output_count(record.task))
        return LeanModel(None, tokenizer, record, runner=runner)


register_backend(OnnxRuntimeBackend())
