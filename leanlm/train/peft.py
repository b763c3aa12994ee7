"""Parameter-efficient fine-tuning through the `peft` library: LoRA and AdaLoRA.

Configs are leanlm frozen configs (composed: both share one `Targets`) mapped onto
`peft.LoraConfig` / `peft.AdaLoraConfig`. `adapt_` wraps a model's module in a PeftModel and
returns an `Adapter`: the trainable-parameter filter and the loop hooks the run needs. AdaLoRA's
`update_and_allocate(step)` is one of those hooks, called by the loop after the optimizer step and
before zero_grad (where peft needs it; elsewhere AdaLoRA silently degrades to LoRA), with
`total_step` taken from the loop's schedule, and it reports the rank budget for logging.

After training, `merge_` saves the adapter files and merges them into the base
(`merge_and_unload`), so the model directory is a plain model every backend runs, with the adapter
kept beside it in `adapter/`. `load_adapter` puts it back as an unmerged PeftModel.
`merge_adapter_` merges an adapter into a quantized base the only safe way: dequantize, merge in
float, quantize again with the same method, and refuse if the outputs drift too far.

Example:
    >>> cfg = FinetuneConfig(peft=AdaLora(init_r=12, target_r=4))
    >>> model = leanlm.finetune("minilm-l6", "movie-snippets", cfg, output="runs/adalora")
    >>> model.record.training["peft"]["trainable_params"]
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from leanlm.artifact import LeanModel, atomic_dir, write_record
from leanlm.config import BaseConfig, check, register, transform, transform_for
from leanlm.errors import ArtifactError, ConfigError, UnsupportedError

FAMILY = "peft"
ADAPTER_DIR = "adapter"
# Attention projections LoRA targets by default, per architecture family (first match wins).
DEFAULT_MODULES = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"))


def require_peft() -> Any:
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a dependency
        raise UnsupportedError("PEFT needs the peft library: pip install 'peft>=0.13'") from None
    return peft


@dataclass(frozen=True)
class Targets(BaseConfig):
    """Which layers get adapters and which stay fully trainable (shared by LoRA and AdaLoRA).

    Args:
        modules: module-name suffixes that get adapters; empty = the architecture's attention
            query/value projections (BERT `query`/`value`, Llama `q_proj`/`v_proj`).
        heads: module names trained in full and saved with the adapter (the fresh task head).

    Example:
        >>> Targets(modules=("query", "key", "value", "dense"))
    """

    modules: tuple[str, ...] = ()
    heads: tuple[str, ...] = ("classifier", "score")

    def resolve(self, module: torch.nn.Module) -> tuple[list[str], list[str]]:
        leaves = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules() if n}
        wanted = list(self.modules) or next((list(c) for c in DEFAULT_MODULES if set(c) <= leaves), [])
        if not wanted or not set(wanted) & leaves:
            raise UnsupportedError(f"no layers named {wanted or [c for g in DEFAULT_MODULES for c in g]} in this model; "
                                   "name the target modules (Targets(modules=...), --peft-targets)")
        return wanted, [h for h in self.heads if h in leaves]


@register(FAMILY, "lora")
@dataclass(frozen=True)
class Lora(BaseConfig):
    """LoRA: a trainable rank-r update B·A beside each target weight; the base stays frozen.

    Args:
        targets: which layers get adapters (shared with AdaLoRA).
        r: rank of each update.
        alpha: scaling numerator (update scaled by alpha / r).
        dropout: dropout on the adapter's input.

    Example:
        >>> FinetuneConfig(peft=Lora(r=8, alpha=16))
    """

    targets: Targets = field(default_factory=Targets)
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05

    def validate(self) -> None:
        check(self.r >= 1, f"lora: r must be >= 1, got {self.r}")
        check(self.alpha > 0, f"lora: alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"lora: dropout must be in [0, 1), got {self.dropout}")

    def grad_hooks(self, module: Any) -> list:
        return []


@register(FAMILY, "adalora")
@dataclass(frozen=True)
class AdaLora(BaseConfig):
    """AdaLoRA: SVD-shaped adapters whose ranks are reallocated during training by importance.

    Every layer starts at `init_r`; between step `tinit` and `total - tfinal` the total budget
    shrinks to `target_r` per layer on average, moving rank to the layers that matter.

    Args:
        targets: which layers get adapters (shared with LoRA).
        init_r: starting rank of each layer.
        target_r: average rank per layer at the end of budgeting.
        alpha: scaling numerator.
        dropout: dropout on the adapter's input.
        tinit: optimizer steps before budgeting starts (warm-up at full rank); None: the first
            10 % of the run's steps.
        tfinal: final optimizer steps with the ranks frozen; None: the last 20 %. (The AdaLoRA
            authors advise a budgeting phase of at least half the run; with both at 0 the ranks are
            cut from the first step, on importance scores that have seen almost nothing.)
        delta_t: reallocate every delta_t steps.
        beta1, beta2: smoothing of the importance scores.
        orth_reg_weight: weight of the orthogonality regulariser added to the loss.

    Example:
        >>> FinetuneConfig(peft=AdaLora(init_r=12, target_r=4, tinit=20, tfinal=20))
    """

    targets: Targets = field(default_factory=Targets)
    init_r: int = 12
    target_r: int = 4
    alpha: int = 16
    dropout: float = 0.05
    tinit: Optional[int] = None
    tfinal: Optional[int] = None
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5

    def validate(self) -> None:
        check(1 <= self.target_r <= self.init_r, f"adalora: need 1 <= target_r <= init_r, got {self.target_r} and {self.init_r}")
        check(self.alpha > 0, f"adalora: alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"adalora: dropout must be in [0, 1), got {self.dropout}")
        check((self.tinit is None or self.tinit >= 0) and (self.tfinal is None or self.tfinal >= 0)
              and self.delta_t >= 1, "adalora: tinit, tfinal >= 0 and delta_t >= 1")
        check(0 < self.beta1 < 1 and 0 < self.beta2 < 1, "adalora: beta1 and beta2 must be in (0, 1)")
        check(self.orth_reg_weight >= 0, "adalora: orth_reg_weight must be >= 0")

    def grad_hooks(self, module: Any) -> list:
        return [_Allocate(module)]


@dataclass
class Adapter:
    """A model under PEFT: what the training loop needs, and the adapter files once merged."""

    config: BaseConfig
    trainable_names: set[str]
    grad_hooks: list[Callable[[int, torch.nn.Module], dict[str, float] | None]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def trainable(self, name: str, param: torch.nn.Parameter) -> bool:
        return name in self.trainable_names


def _task_type(model: LeanModel) -> Any:
    peft = require_peft()
    return {"sequence-classification": peft.TaskType.SEQ_CLS, "causal-lm": peft.TaskType.CAUSAL_LM,
            "feature-extraction": peft.TaskType.FEATURE_EXTRACTION}[model.task]


def adapt_(model: LeanModel, config: BaseConfig, total_steps: int) -> Adapter:
    """Wrap `model.module` in a PeftModel for `config` (in place); returns the run's Adapter.

    Args:
        model: a torch LeanModel (float, or a weight-only quantized base).
        config: `Lora(...)` or `AdaLora(...)`.
        total_steps: optimizer steps of the whole schedule (AdaLoRA's `total_step`).

    Example:
        >>> adapter = adapt_(model, Lora(r=8), total_steps(loop_cfg, steps_per_epoch))
        >>> train_loop(model.module, ..., trainable=adapter.trainable, grad_hooks=adapter.grad_hooks)
    """
    if getattr(config, "family", None) != FAMILY:
        raise ConfigError(f"{type(config).__name__} is not a PEFT config; valid: lora, adalora")
    if model.backend != "torch" or not isinstance(model.module, torch.nn.Module):
        raise UnsupportedError(f"PEFT needs a PyTorch model; this one runs on {model.backend}")
    peft = require_peft()
    targets, heads = config.targets.resolve(model.module)
    peft_config = transform_for(config)(config, targets, heads, total_steps, _task_type(model))
    full = sum(p.numel() for p in model.module.parameters())
    module = peft.get_peft_model(model.module, peft_config)
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    model.module = model.runner = module
    adapter = Adapter(config, names)
    adapter.info = {"config": config.to_dict(), "target_modules": list(targets), "trained_heads": list(heads),
                    "total_steps": total_steps, "base_params": full,
                    "trainable_params": sum(p.numel() for n, p in module.named_parameters() if n in names)}
    if getattr(peft_config, "tinit", None) is not None:  # AdaLoRA: the schedule as resolved for this run
        adapter.info["budget_schedule"] = {"tinit": peft_config.tinit, "tfinal": peft_config.tfinal,
                                           "total_step": total_steps}
    for hook in config.grad_hooks(module):
        adapter.grad_hooks.append(hook)
        adapter.info.update(hook.describe())
    return adapter


@transform(Lora)
def _lora(config: Lora, targets: list[str], heads: list[str], total_steps: int, task_type: Any) -> Any:
    peft = require_peft()
    return peft.LoraConfig(task_type=task_type, r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=list(targets), modules_to_save=list(heads) or None)


@transform(AdaLora)
def _adalora(config: AdaLora, targets: list[str], heads: list[str], total_steps: int, task_type: Any) -> Any:
    tinit = total_steps // 10 if config.tinit is None else config.tinit
    tfinal = total_steps // 5 if config.tfinal is None else config.tfinal
    if tinit + tfinal >= total_steps:
        raise ConfigError(f"adalora: tinit ({tinit}) + tfinal ({tfinal}) leave no budgeting phase in a "
                          f"{total_steps}-step run; lower them or train longer")
    peft = require_peft()
    return peft.AdaLoraConfig(task_type=task_type, init_r=config.init_r, target_r=config.target_r,
                              lora_alpha=config.alpha, lora_dropout=config.dropout, tinit=tinit,
                              tfinal=tfinal, deltaT=config.delta_t, beta1=config.beta1, beta2=config.beta2,
                              orth_reg_weight=config.orth_reg_weight, total_step=total_steps,
                              target_modules=list(targets), modules_to_save=list(heads) or None)


def adalora_ranks(module: torch.nn.Module) -> dict[str, int]:
    """Current rank of each AdaLoRA layer of a PeftModel (init_r until the first reallocation)."""
    cfg = module.peft_config[module.active_adapter]
    pattern = cfg.rank_pattern or {}
    out = {}
    for name, m in module.base_model.model.named_modules():
        if isinstance(getattr(m, "lora_E", None), torch.nn.ParameterDict):
            key = next((k for k in pattern if k.startswith(name + ".lora_E")), None)
            out[name] = int(sum(pattern[key])) if key else cfg.init_r
    return out


class _Allocate:
    """AdaLoRA's rank reallocation as a loop hook; its importance scores travel in checkpoints."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, step: int, module: torch.nn.Module) -> dict[str, float]:
        # peft: "call in every training step after loss.backward() and before zero_grad()"
        module.base_model.update_and_allocate(step)
        return {"adalora/rank_budget": float(sum(adalora_ranks(module).values()))}

    def describe(self) -> dict[str, Any]:
        return {"initial_ranks": adalora_ranks(self.module)}

    def finish(self) -> dict[str, Any]:
        pattern = self.module.peft_config[self.module.active_adapter].rank_pattern
        if pattern:  # the loop restored the best weights: mask them to the final ranks the adapter keeps
            self.module.base_model.rankallocator.mask_using_rank_pattern(self.module.base_model.model, pattern)
        return {"final_ranks": adalora_ranks(self.module)}

    def state_dict(self) -> dict[str, Any]:
        alloc = self.module.base_model.rankallocator
        return {"ipt": alloc.ipt, "exp_avg_ipt": alloc.exp_avg_ipt, "exp_avg_unc": alloc.exp_avg_unc,
                "rank_pattern": self.module.peft_config[self.module.active_adapter].rank_pattern}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        alloc = self.module.base_model.rankallocator
        alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
        self.module.peft_config[self.module.active_adapter].rank_pattern = state["rank_pattern"]


def merge_(model: LeanModel, adapter: Adapter, texts: Sequence[str] = (), max_error: float = 0.05) -> LeanModel:
    """Keep the adapter's files, then merge it into the base: `model.module` becomes a plain model.

    A quantized base is merged the safe way (`merge_quantized`), checked on `texts`.
    """
    peft_model = model.module
    for hook in adapter.grad_hooks:
        adapter.info.update(hook.finish())
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # AdaLoRA may prune a layer to rank 0; peft then warns about ZeRO-3/FSDP shards we do not use
        warnings.filterwarnings("ignore", message=".*have invalid shape.*")
        peft_model.save_pretrained(tmp)
        adapter.files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    if quantized_linears(peft_model.base_model.model):
        if not texts:
            raise ConfigError("merging into a quantized base needs texts for its output-error check")
        adapter.info["merge"] = merge_quantized(model, peft_model, texts, max_error)
    else:
        model.module = model.runner = peft_model.merge_and_unload()
    return model


def save_with_adapter(model: LeanModel, adapter: Adapter, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save the merged model directory with the adapter files in `adapter/`, atomically."""
    from leanlm.runtime import get_backend

    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        model.tokenizer.save_pretrained(tmp)
        model.record.weights = get_backend(model.backend).save(model, tmp)
        # a subfolder, not the top level: transformers treats a top-level adapter_config.json as
        # "load the base model named inside" and would stop loading this directory as itself
        (tmp / ADAPTER_DIR).mkdir()
        for name, data in adapter.files.items():
            (tmp / ADAPTER_DIR / name).write_bytes(data)
        write_record(tmp, model.record)
    model.path = path
    return path


def load_adapter(model: LeanModel | str | os.PathLike) -> LeanModel:
    """A saved fine-tune with its adapter put back unmerged (a PeftModel), e.g. to inspect or train on.

    Example:
        >>> m = load_adapter("runs/lora")       # m.module is a PeftModel; outputs equal the merged model's
    """
    from leanlm.models.loading import load

    peft = require_peft()
    model = model if isinstance(model, LeanModel) else load(model)
    folder = (model.path or Path()) / ADAPTER_DIR
    if model.path is None or not (folder / "adapter_config.json").exists():
        raise ArtifactError(f"{model.path} has no adapter ({ADAPTER_DIR}/adapter_config.json); it was not PEFT-trained")
    module = peft.PeftModel.from_pretrained(model.module, str(folder))
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            # the saved weights are base + update: mark the update as merged and take it back out
            layer.merged_adapters = list(layer.active_adapters)
            layer.unmerge()
    model.module = model.runner = module.eval()
    return model


# --------------------------------------------------------------------------- merging into a quantized base

def quantized_linears(module: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Linear layers whose weight is a quantized tensor subclass (not a plain float tensor)."""
    return {n: m for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and type(m.weight) not in (torch.Tensor, torch.nn.Parameter)}


def _requantizers() -> dict[str, Callable[[Any, torch.Tensor], torch.Tensor]]:
    """Weight type name -> (old quantized weight, merged float weight) -> new weight, same method."""
    from leanlm.compress.quantize._layers import Int4WeightCPU, Int8WeightCPU

    def int8_weight_only(old: Any, w: torch.Tensor) -> torch.Tensor:
        groups = old.scale.shape[1]
        return Int8WeightCPU.from_float(w, 0 if groups == 1 else w.shape[1] // groups)

    def torchao_int8(old: Any, w: torch.Tensor) -> torch.Tensor:  # int8-dynamic (torchao Int8Tensor)
        from torchao.quantization.granularity import PerRow, PerTensor

        if getattr(old, "act_quant_scale", None) is not None or getattr(old, "act_pre_scale", None) is not None:
            # static activation ranges or SmoothQuant's folded scales were fitted to the old weights
            raise UnsupportedError("cannot requantize static or SmoothQuant int8 weights after a merge; merge the "
                                   "adapter into the float model and quantize it again")
        granularity = PerRow() if list(old.block_size)[0] == 1 else PerTensor()
        return type(old).from_hp(w, granularity, act_quant_kwargs=old.act_quant_kwargs)

    return {"Int8WeightCPU": int8_weight_only, "Int8Tensor": torchao_int8,
            "Int4WeightCPU": lambda old, w: Int4WeightCPU.from_float(w, old.group_size)}


@torch.no_grad()
def merge_quantized(model: LeanModel, peft_model: Any, texts: Sequence[str], max_error: float = 0.05,
                    max_length: int = 128) -> dict[str, float]:
    """Merge `peft_model`'s adapter into its quantized base: dequantize, merge in float, requantize.

    Merging straight into int8/int4 codes ruins them; merging in float and quantizing again with
    the same method does not, and the check proves it: the merged model's outputs on `texts` are
    compared with base + unmerged adapter, and a relative error above `max_error` is refused
    (`model` is left as it was). On success `model.module` is the merged, requantized model.
    """
    from leanlm.compress.quantize._layers import set_weight

    requant = _requantizers()
    quantized = quantized_linears(peft_model.base_model.model)
    unknown = sorted({type(m.weight).__name__ for m in quantized.values()} - set(requant))
    if unknown:
        raise UnsupportedError(f"cannot requantize {unknown[0]} weights after a merge; merge the adapter into the "
                               "float model and quantize it again")
    peft_model.eval()
    batch = model.encode(list(texts), max_length=max_length)
    ref = _primary(peft_model(**batch))
    work = copy.deepcopy(peft_model)  # refusing must leave the model as it was
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    # by hand, not peft's merge: its quantized-layer merge needs the subclass factory of a
    # transformers TorchAoConfig load, and ours are leanlm's own configs
    for layer in work.modules():
        if isinstance(layer, BaseTunerLayer) and type(layer.base_layer.weight).__name__ in requant:
            old = layer.base_layer.weight
            w = old.dequantize().float()
            for name in layer.active_adapters:
                w = w + layer.get_delta_weight(name).float()
            set_weight(layer.base_layer, requant[type(old).__name__](old, w.to(old.dtype)))
    # Trained copies of the modules_to_save (the new classifier head): peft >= 0.22's unload() puts the
    # original, untrained modules back, so they are taken out first and set again after it.
    trained = {name: wrapper.modules_to_save[wrapper.active_adapters[0]]
               for name, wrapper in work.named_modules() if isinstance(wrapper, ModulesToSaveWrapper)}
    merged = work.unload()  # drop the adapter layers; their update now lives in the base weights
    for name, module in trained.items():
        parent, _, child = name.removeprefix("base_model.model.").rpartition(".")
        setattr(merged.get_submodule(parent) if parent else merged, child, module)
    err = float((_primary(merged(**batch)) - ref).norm() / ref.norm().clamp_min(1e-12))
    if not err <= max_error:
        raise UnsupportedError(f"merging drifts too far: relative output error {err:.4f} > {max_error}; "
                               "keep the adapter unmerged or quantize the merged float model instead")
    model.module = model.runner = merged
    return {"relative_error": round(err, 6), "layers_requantized": len(quantized)}


def merge_adapter_(model: LeanModel, adapter_dir: str | os.PathLike, texts: Sequence[str],
                   max_error: float = 0.05) -> dict[str, float]:
    """Merge a saved adapter into `model` in place; a quantized base goes through `merge_quantized`.

    Args:
        model: a torch LeanModel: float, int8/int4-weight-only or int8-dynamic (torchao) quantized.
        adapter_dir: a folder written by peft's save_pretrained (a fine-tune's `adapter/`).
        texts: inputs for the output-error check (quantized bases).
        max_error: largest allowed ||merged - unmerged|| / ||unmerged|| on the primary output.

    Example:
        >>> merge_adapter_(int8_model, "runs/lora/adapter", calibration_texts("movie-snippets", 64))
    """
    peft = require_peft()
    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise ArtifactError(f"{adapter_dir} is not an adapter folder (no adapter_config.json)")
    if model.backend != "torch" or not isinstance(model.module, torch.nn.Module):
        raise UnsupportedError(f"merging an adapter needs a PyTorch model; this one runs on {model.backend}; "
                               "merge into the float model and quantize it again")
    # on a copy: peft injects its layers in place, and a refused merge must leave `model` as it was
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(model.module), str(adapter_dir)).eval()
    if not quantized_linears(peft_model.base_model.model):
        model.module = model.runner = peft_model.merge_and_unload()
        return {"relative_error": 0.0, "layers_requantized": 0}
    info = merge_quantized(model, peft_model, texts, max_error)
    model.record.notes.append(f"adapter {adapter_dir} merged: dequantized, merged, requantized "
                              f"(relative output error {info['relative_error']})")
    return info


def _primary(out: Any) -> torch.Tensor:
    from leanlm.artifact import primary_output

    return primary_output(out).float()
