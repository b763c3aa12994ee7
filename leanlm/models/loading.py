"""`load`: a bundled name, a leanlm model directory, a plain HF directory, or a hub id."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from leanlm.artifact import RECORD_FILE, TASKS, LeanModel, Record, load_dir, read_record
from leanlm.errors import ArtifactError, LeanlmError, did_you_mean
from leanlm.models.registry import BUNDLED


class _NoLossProbeWarning(logging.Filter):
    """Drop transformers' "`loss_type=None` ... Using the default loss: `ForCausalLMLoss`".

    A headless module (BertModel, also the `bert` inside every BertForSequenceClassification) has
    no loss, so its `loss_function` property warns on mere attribute access; torch.jit.trace
    (OpenVINO and NNCF conversion) probes every attribute with hasattr, so the warning appeared on
    every encoder even though no loss is ever computed with it. A real, unrecognized loss_type
    (not None) still warns.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`loss_type=None` was set in the config but it is unrecognized")


# modeling_utils is the logger that emits it; every leanlm load path imports this module first
logging.getLogger("transformers.modeling_utils").addFilter(_NoLossProbeWarning())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for leanlm's own loads."""
    import transformers

    tl = transformers.utils.logging
    level = tl.get_verbosity()
    tl.set_verbosity_error()
    bars = tl.is_progress_bar_enabled()
    tl.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()


def auto_class(task: str) -> Any:
    """The transformers Auto class for a task (shared by loading here and the torch backend)."""
    import transformers

    return {
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "feature-extraction": transformers.AutoModel,
        "causal-lm": transformers.AutoModelForCausalLM,
        "question-answering": transformers.AutoModelForQuestionAnswering,  # start/end span logits
        "masked-lm": transformers.AutoModelForMaskedLM,
        "pretraining": transformers.AutoModelForPreTraining,  # MLM + next-sentence prediction heads
    }[task]


def infer_task(architectures: Sequence[str] | None) -> str:
    """Guess the task from config.architectures (BertModel -> feature-extraction, ...)."""
    for arch in architectures or ():
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
        if arch.endswith("ForCausalLM"):
            return "causal-lm"
        if arch.endswith("ForQuestionAnswering"):
            return "question-answering"
        if arch.endswith("ForMaskedLM"):
            return "masked-lm"
        if arch.endswith("ForPreTraining"):
            return "pretraining"
    return "feature-extraction"


def load(
    name_or_path: str | os.PathLike,
    task: str | None = None,
    labels: Sequence[str] | None = None,
    device: str | None = None,
    verify: bool = True,
) -> LeanModel:
    """Load a model by bundled name, leanlm model directory, HF directory or hub id.

    Args:
        name_or_path: "minilm-l6", "smollm2-135m", a directory, or a Hugging Face hub id.
        task: "sequence-classification", "feature-extraction", "causal-lm" or "question-answering";
            inferred if None.
        labels: class names, to add a fresh classification head (fine-tuning).
        device: "cpu", "cuda", ... (default: where the weights load, the CPU).
        verify: check file checksums of leanlm model directories.

    Example:
        >>> enc = leanlm.load("minilm-l6")                       # sentence embedder
        >>> clf = leanlm.load("runs/sentiment")                  # a fine-tuned model directory
    """
    if task is not None and task not in TASKS:
        raise LeanlmError(did_you_mean(task, TASKS, "task"))
    if labels is not None and task is None:
        task = "sequence-classification"
    s = str(name_or_path)
    path = Path(s).expanduser()
    if (path / RECORD_FILE).exists():
        if labels is not None and _plain_float_dir(path, task, verify):
            # a fresh classification head on a float model directory of another task (fine-tuning
            # a pre-trained encoder): transformers keeps the encoder weights and builds the head
            record = read_record(path, verify=False)
            return _load_hf(path, task, record.base_model, labels, device, notes=list(record.notes))
        model = load_dir(path, verify=verify, device=device)
        if task and task != model.task and not (task == "feature-extraction" and model.backend == "torch"):
            raise LeanlmError(f"{path} is a {model.task} model, not {task}")
        return model
    if s in BUNDLED:
        spec = BUNDLED[s]
        return _load_hf(spec.resolve(), task or spec.default_task, s, labels, device, notes=list(spec.notes))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ArtifactError(f"{path} is not a model directory (no {RECORD_FILE} or config.json)")
        return _load_hf(path, task, str(path), labels, device)
    looks_like_path = s.startswith((".", "/", "~")) or s.count("/") > 1 or os.sep + os.sep in s
    if looks_like_path:
        raise ArtifactError(f"model directory {path} does not exist")
    if s.count("/") == 1:
        return _load_hf(s, task, s, labels, device)  # hub id: the real code path, works when online
    raise LeanlmError(did_you_mean(s, list(BUNDLED), "model") + " (or a model directory / hub id)")


def _plain_float_dir(path: Path, task: str | None, verify: bool) -> bool:
    """A leanlm directory saved by save_pretrained (no technique applied) whose task differs from `task`."""
    record = read_record(path, verify=verify)
    return record.task != task and record.backend == "torch" and not record.techniques and record.weights == "model.safetensors"


def _load_hf(
    source: str | Path,
    task: str | None,
    base_name: str,
    labels: Sequence[str] | None,
    device: str | None,
    notes: list[str] | None = None,
) -> LeanModel:
    from transformers import AutoConfig, AutoTokenizer

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source)
            task = task or infer_task(getattr(config, "architectures", None))
            kwargs = {}
            if task == "sequence-classification" and labels is not None:
                labels = [str(x) for x in labels]
                kwargs = dict(
                    num_labels=len(labels),
                    id2label=dict(enumerate(labels)),
                    label2id={l: i for i, l in enumerate(labels)},
                )
            module = auto_class(task).from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LeanlmError(f"cannot load model {base_name!r}: {first}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoders ship without one; batching needs it
    module.eval()
    if device:
        module.to(device)
    if task == "sequence-classification" and labels is None:
        id2label = getattr(module.config, "id2label", {}) or {}
        labels = [id2label[i] for i in sorted(id2label)] if id2label else None
    record = Record(task=task, base_model=base_name, labels=list(labels) if labels else None, notes=notes or [])
    return LeanModel(module, tokenizer, record)
