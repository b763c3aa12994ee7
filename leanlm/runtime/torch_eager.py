"""PyTorch backend: save/load HF modules, including quantized ones.

Float models are saved with `save_pretrained` (safetensors). Models whose tensors were changed by
a technique (torchao tensor subclasses, custom quantized layers) are saved as a plain state dict
(`weights.pt`, loaded with weights_only=True) next to `config.json`; loading rebuilds the module
from the config, replays each technique's structural restore hook, then assigns the tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from leanlm.artifact import LeanModel, Record, replay_restores
from leanlm.errors import ArtifactError
from leanlm.models.loading import auto_class, quiet_transformers
from leanlm.runtime import register_backend
from leanlm.shapes import describe, rebuild

SAFETENSORS = "model.safetensors"
STATE_DICT = "weights.pt"


def _is_plain(module: torch.nn.Module) -> bool:
    """True if every tensor is an ordinary torch.Tensor of the standard module types."""
    for t in list(module.parameters()) + list(module.buffers()):
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            return False
    for m in module.modules():
        if getattr(m, "_leanlm_custom", False):
            return False
    return True


class TorchBackend:
    name = "torch"

    def save(self, model: LeanModel, directory: Path) -> str:
        module = model.module
        if not isinstance(module, torch.nn.Module):
            raise ArtifactError("torch backend can only save a torch module")
        if _is_plain(module) and not model.record.techniques:
            module.save_pretrained(directory, safe_serialization=True)
            return SAFETENSORS
        # per-layer shapes (pruning, low-rank) that config.json cannot express; see leanlm.shapes
        model.record.extra["structure"] = describe(module)
        module.config.save_pretrained(directory)
        if getattr(module, "generation_config", None) is not None:
            try:
                module.generation_config.save_pretrained(directory)
            except Exception:  # generation config is optional metadata
                pass
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}
        torch.save(state, directory / STATE_DICT)
        return STATE_DICT

    def load(self, directory: Path, record: Record, device: str | None = None) -> LeanModel:
        from transformers import AutoConfig, AutoTokenizer

        cls = auto_class(record.task)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(directory)
            if record.weights == SAFETENSORS:
                module = cls.from_pretrained(directory)
            else:
                config = AutoConfig.from_pretrained(directory)
                module = cls.from_config(config)
                rebuild(module, record.extra.get("structure"))
                replay_restores(module, record)
                # Free the randomly initialised float weights before reading the saved (smaller)
                # tensors, so peak memory is not float model + quantized model at once.
                for p in module.parameters():
                    p.data = torch.zeros((), dtype=p.dtype).expand(p.shape)
                try:
                    state = torch.load(directory / record.weights, map_location="cpu", weights_only=True)
                except Exception as e:
                    raise ArtifactError(f"{directory}/{record.weights} cannot be read: {e}") from e
                missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
                # tied weights (lm_head <-> embeddings) may be stored once
                missing = [k for k in missing if not _tied(module, k)]
                if missing or unexpected:
                    raise ArtifactError(
                        f"{directory}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
                    )
                if getattr(module.config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
                    module.tie_weights()
        module.eval()
        if device:
            module.to(device)
        return LeanModel(module, tokenizer, record)


def _tied(module: torch.nn.Module, key: str) -> bool:
    return key == "lm_head.weight" and getattr(module.config, "tie_word_embeddings", False)


register_backend(TorchBackend())
