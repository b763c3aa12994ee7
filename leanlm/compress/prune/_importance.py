"""The prunable structure of a transformer and how much each head / neuron / layer matters.

Structure: `blocks(module)` finds the repeated layers of a BERT-style encoder or a Llama-style
decoder (a table of layouts, not code per architecture) and names each layer's attention
projections and feed-forward linears. Heads and neurons are removed by slicing those linears
(`keep_rows`, `keep_cols`); the layer's shape attributes follow, so `leanlm.shapes` saves them.

Importance (Michel et al. 2019, Kwon et al. 2022): a mask variable of ones multiplies every head's
output (before the output projection) and every FFN neuron's activation (before the down
projection); the task loss on calibration batches is backpropagated to the masks and their
gradients accumulate as Fisher (sum of squares) or Taylor (sum of |grad|) scores. The loss is the
task's own: cross-entropy on labels (or, unlabeled, on the model's own argmax: a soft KL target
has zero gradient at the unpruned model), next-token loss for causal LMs, and for embedding
models an in-batch contrastive loss against the unpruned embeddings (a plain distance to them
also has zero gradient there).

Example:
    >>> s = importance(model, ctx, "fisher")
    >>> s.heads[0]          # (heads in layer 0,) higher = more important
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leanlm.artifact import LeanModel
from leanlm.compress.quantize._calib import calibration_batches, forward_kwargs, rows
from leanlm.config import check
from leanlm.errors import ConfigError, UnsupportedError

SCORES = ("fisher", "taylor", "magnitude")
SCOPES = ("global", "layer")


# --------------------------------------------------------------------------- structure

@dataclass(frozen=True)
class Layout:
    """Where one architecture keeps its layers and their prunable linears (paths inside a layer)."""

    layers: str                  # ModuleList path suffix inside the model
    attn: str                    # module carrying the head-count attributes
    qkv: tuple[str, str, str]
    out: str                     # attention output projection (its input columns are head outputs)
    ffn_in: tuple[str, ...]      # rows = neurons
    ffn_out: str                 # columns = neurons
    mlp: str | None              # module carrying `intermediate_size`, if any
    head_dim: str                # attribute of `attn`


LAYOUTS = (
    Layout("encoder.layer", "attention.self", ("attention.self.query", "attention.self.key", "attention.self.value"),
           "attention.output.dense", ("intermediate.dense",), "output.dense", None, "attention_head_size"),
    Layout("layers", "self_attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj",
           ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "mlp", "head_dim"),
)


@dataclass
class Block:
    """One layer's prunable parts. A "unit" of attention is a KV group (a KV head with its
    `group` query heads): removing less would break grouped-query attention. BERT: group = 1."""

    layer: nn.Module
    layout: Layout

    def get(self, path: str) -> Any:
        return self.layer.get_submodule(path)

    @property
    def attn(self) -> nn.Module:
        return self.get(self.layout.attn)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.attn, self.layout.head_dim))

    @property
    def heads(self) -> int:
        return self.get(self.layout.qkv[0]).out_features // self.head_dim

    @property
    def units(self) -> int:
        return self.get(self.layout.qkv[1]).out_features // self.head_dim

    @property
    def group(self) -> int:
        return self.heads // self.units

    @property
    def out(self) -> nn.Linear:
        return self.get(self.layout.out)

    @property
    def ffn_out(self) -> nn.Linear:
        return self.get(self.layout.ffn_out)

    @property
    def width(self) -> int:
        return self.ffn_out.in_features


def find_layers(module: nn.Module) -> tuple[nn.Module, str, Layout]:
    """(parent module, attribute name, layout) of the model's repeated layers."""
    for layout in LAYOUTS:
        for name, m in module.named_modules():
            if (name == layout.layers or name.endswith("." + layout.layers)) and isinstance(m, nn.ModuleList) and len(m):
                try:
                    for path in (*layout.qkv, layout.out, *layout.ffn_in, layout.ffn_out):
                        m[0].get_submodule(path)
                except AttributeError:
                    continue
                parent_name, _, attr = name.rpartition(".")
                return (module.get_submodule(parent_name) if parent_name else module), attr, layout
    raise UnsupportedError(f"structured pruning supports BERT-style encoders and Llama-style decoders, "
                           f"not {type(module).__name__}")


def blocks(module: nn.Module) -> list[Block]:
    parent, attr, layout = find_layers(module)
    for lin in _linears(Block(getattr(parent, attr)[0], layout)):
        if type(lin) is not nn.Linear or type(lin.weight) is not nn.Parameter:
            raise UnsupportedError("structured pruning needs plain float linear layers; prune before quantizing")
    return [Block(layer, layout) for layer in getattr(parent, attr)]


def _linears(b: Block) -> list[nn.Module]:
    lo = b.layout
    return [b.get(p) for p in (*lo.qkv, lo.out, *lo.ffn_in, lo.ffn_out)]


def _sliced(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.detach().index_select(dim, idx.to(lin.weight.device))
    bias = lin.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach()[idx])
    new.train(lin.training)
    return new


def replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def keep_rows(b: Block, path: str, idx: torch.Tensor) -> None:
    """Keep output features `idx` of the linear at `path` (its rows)."""
    replace(b.layer, path, _sliced(b.get(path), idx, 0))


def keep_cols(b: Block, path: str, idx: torch.Tensor, weight: torch.Tensor | None = None) -> None:
    """Keep input features `idx` of the linear at `path`; `weight` replaces the kept columns (rescale)."""
    new = _sliced(b.get(path), idx, 1)
    if weight is not None:
        with torch.no_grad():
            new.weight.copy_(weight)
    replace(b.layer, path, new)


def unit_rows(units: torch.Tensor, size: int) -> torch.Tensor:
    """Row indices of whole units of `size` rows each: units [0, 2], size 3 -> [0, 1, 2, 6, 7, 8]."""
    return (units[:, None] * size + torch.arange(size)[None]).reshape(-1)


def param_count(module: nn.Module) -> int:
    # tied weights count once, also when loading gave them two Parameters over one storage
    seen = {(p.data_ptr(), tuple(p.shape)): p.numel() for p in module.parameters()}
    return int(sum(seen.values()))


# --------------------------------------------------------------------------- selection

def validate_common(cfg: Any, method: str) -> None:
    """The checks every head/neuron config shares (ratio, scope, score)."""
    check(0 < cfg.ratio < 1, f"{method}: ratio must be in (0, 1) (the fraction removed), got {cfg.ratio}")
    check(cfg.scope in SCOPES, f"{method}: scope must be one of {SCOPES}, got {cfg.scope!r}")
    check(cfg.score in SCORES, f"{method}: score must be one of {SCORES}, got {cfg.score!r}")


def _rounded(k: int, n: int, multiple: int, minimum: int) -> int:
    if multiple > 1 and n > multiple:
        k = int(round(k / multiple)) * multiple
    return max(min(k, n), min(minimum, n))


def select(scores: Sequence[torch.Tensor], ratio: float, scope: str, minimum: int, multiple: int = 1,
           what: str = "units") -> list[torch.Tensor]:
    """Indices to KEEP per layer (ascending): remove `ratio` of all units, the least important first.

    scope "global" ranks units across layers (a layer may lose more than others), "layer" removes
    the same fraction from each. Every layer keeps at least `minimum`; kept counts are rounded to
    a multiple of `multiple` (kernels prefer round widths), so the removed fraction is approximate.
    """
    sizes = [len(s) for s in scores]
    if scope == "layer":
        counts = [n - int(round(ratio * n)) for n in sizes]
    else:
        total = int(round(ratio * sum(sizes)))
        flat = torch.cat([s.float() for s in scores])
        layer_of = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        counts, removed = list(sizes), 0
        for j in torch.sort(flat, stable=True).indices.tolist():
            if removed == total:
                break
            li = int(layer_of[j])
            if counts[li] > minimum:
                counts[li] -= 1
                removed += 1
        if removed < total:
            raise ConfigError(f"cannot remove {total} of {sum(sizes)} {what} keeping {minimum} per layer; "
                              f"lower the ratio")
    keep = []
    for s, n, k in zip(scores, sizes, counts):
        k = _rounded(k, n, multiple, minimum)
        top = torch.sort(s.float(), descending=True, stable=True).indices[:k]
        keep.append(torch.sort(top).values)
    return keep


# --------------------------------------------------------------------------- task losses

def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def _clf_target(model: LeanModel, batch: dict, out: Any, labels: torch.Tensor | None) -> torch.Tensor:
    return labels if labels is not None else out.logits.argmax(-1)


def _clf_loss(out: Any, batch: dict, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.logits.float(), target)


def _emb_target(model: LeanModel, batch: dict, out: Any, labels: torch.Tensor | None) -> torch.Tensor:
    return _pooled(out.last_hidden_state.float(), batch["attention_mask"])


def _emb_loss(out: Any, batch: dict, target: torch.Tensor) -> torch.Tensor:
    # which unpruned embedding is mine? temperature 0.05 as in SimCSE
    e = _pooled(out.last_hidden_state.float(), batch["attention_mask"])
    return F.cross_entropy(e @ target.T / 0.05, torch.arange(len(e), device=e.device))


def _lm_target(model: LeanModel, batch: dict, out: Any, labels: torch.Tensor | None) -> torch.Tensor:
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)


def _lm_loss(out: Any, batch: dict, target: torch.Tensor) -> torch.Tensor:
    logits = out.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1), ignore_index=-100)


# task -> (target from the unpruned model, loss of a (pruned / masked) output against it)
_TASK_LOSSES: dict[str, tuple[Callable, Callable]] = {
    "sequence-classification": (_clf_target, _clf_loss),
    "feature-extraction": (_emb_target, _emb_loss),
    "causal-lm": (_lm_target, _lm_loss),
}


class Objective:
    """The task loss on fixed calibration batches, with targets taken from the model as it is now."""

    def __init__(self, model: LeanModel, ctx: Any, method: str):
        texts = ctx.require_texts(method)
        if ctx.labels is not None and len(ctx.labels) != len(texts):
            raise ConfigError(f"{method}: {len(ctx.labels)} labels for {len(texts)} calibration texts")
        if model.task not in _TASK_LOSSES:
            raise UnsupportedError(f"{method}: no importance loss for task {model.task!r}")
        self.model = model
        self.target_fn, self.loss_fn = _TASK_LOSSES[model.task]
        self.batches = calibration_batches(model, texts, ctx.max_length, ctx.batch_size)
        labels = None if ctx.labels is None else torch.as_tensor(list(ctx.labels), dtype=torch.long)
        self.targets = []
        with torch.no_grad():
            for i, b in enumerate(self.batches):
                lab = None if labels is None else labels[i * ctx.batch_size: i * ctx.batch_size + len(b["input_ids"])]
                self.targets.append(self.target_fn(model, b, self.forward(b), lab))

    def forward(self, batch: dict) -> Any:
        return self.model.module(**batch, **forward_kwargs(self.model))

    def losses(self) -> Iterator[torch.Tensor]:
        """Loss per calibration batch (the caller chooses grad or no_grad)."""
        for b, t in zip(self.batches, self.targets):
            yield self.loss_fn(self.forward(b), b, t)

    @torch.no_grad()
    def mean(self) -> float:
        values = [float(l) for l in self.losses()]
        return sum(values) / max(1, len(values))


# --------------------------------------------------------------------------- importance

@dataclass
class Scores:
    heads: list[torch.Tensor]  # per layer: (query heads,)
    ffn: list[torch.Tensor]    # per layer: (intermediate width,)


@contextlib.contextmanager
def _masked(bs: list[Block]) -> Iterator[Scores]:
    """Mask variables (ones, requiring grad) on every head output and FFN activation."""
    masks = Scores([torch.ones(b.heads, requires_grad=True) for b in bs],
                   [torch.ones(b.width, requires_grad=True) for b in bs])
    handles = []
    for b, hm, fm in zip(bs, masks.heads, masks.ffn):
        def head_hook(mod: nn.Module, args: tuple, hm: torch.Tensor = hm, d: int = b.head_dim) -> tuple:
            x = args[0]  # (B, T, H * D) head outputs, concatenated
            return ((x.unflatten(-1, (-1, d)) * hm.to(x.dtype)[:, None]).flatten(-2),) + args[1:]

        def ffn_hook(mod: nn.Module, args: tuple, fm: torch.Tensor = fm) -> tuple:
            return (args[0] * fm.to(args[0].dtype),) + args[1:]  # (B, T, I) activations

        handles += [b.out.register_forward_pre_hook(head_hook), b.ffn_out.register_forward_pre_hook(ffn_hook)]
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()


def _magnitude(bs: list[Block]) -> Scores:
    heads, ffn = [], []
    for b in bs:
        lo, d = b.layout, b.head_dim
        q, k, v = (b.get(p).weight.detach().float() for p in lo.qkv)
        per_head = q.pow(2).reshape(b.heads, -1).sum(1) + b.out.weight.detach().float().pow(2).reshape(-1, b.heads, d).sum((0, 2))
        kv = (k.pow(2) + v.pow(2)).reshape(b.units, -1).sum(1) / b.group  # shared by the group's heads
        heads.append((per_head + kv.repeat_interleave(b.group)).sqrt())
        rows_ = sum(b.get(p).weight.detach().float().pow(2).sum(1) for p in lo.ffn_in)
        ffn.append((rows_ + b.ffn_out.weight.detach().float().pow(2).sum(0)).sqrt())
    return Scores(heads, ffn)


def importance(model: LeanModel, ctx: Any, score: str, method: str, objective: Objective | None = None) -> Scores:
    """Per-layer head and FFN-neuron scores (higher = keep), deterministic for the same inputs."""
    bs = blocks(model.module)
    if score == "magnitude":
        return _magnitude(bs)
    objective = objective or Objective(model, ctx, method)
    module = model.module
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.eval()  # no dropout: scores must not depend on a random draw
    for p in module.parameters():
        p.requires_grad_(False)  # only the masks need gradients
    acc = Scores([torch.zeros(b.heads) for b in bs], [torch.zeros(b.width) for b in bs])
    try:
        with torch.inference_mode(False), torch.enable_grad(), _masked(bs) as masks:
            for loss in objective.losses():
                grads = torch.autograd.grad(loss, masks.heads + masks.ffn, allow_unused=True)
                for a, g in zip(acc.heads + acc.ffn, grads):
                    if g is not None:
                        a += g.detach().pow(2) if score == "fisher" else g.detach().abs()
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)
        module.train(was_training)
    return acc


# --------------------------------------------------------------------------- least-squares rescale

@torch.no_grad()
def input_grams(model: LeanModel, linears: Sequence[nn.Linear], ctx: Any, method: str) -> list[torch.Tensor]:
    """X^T X of each linear's input over the calibration tokens (padding excluded), float64."""
    texts = ctx.require_texts(method)
    grams = [torch.zeros(l.in_features, l.in_features, dtype=torch.float64) for l in linears]
    mask: list[Any] = [None]

    def make(i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            x = rows(args[0].detach().double(), mask[0])
            grams[i] += x.T @ x
        return hook

    handles = [l.register_forward_pre_hook(make(i)) for i, l in enumerate(linears)]
    try:
        for b in calibration_batches(model, texts, ctx.max_length, ctx.batch_size):
            mask[0] = b.get("attention_mask")
            model.module(**b, **forward_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    return grams


def refit(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, damp: float = 1e-2) -> torch.Tensor:
    """Columns for the kept inputs that best reproduce the full layer's output on calibration data.

    Least squares min ||X_S W_S^T - X W^T||: W_S^T = (G_SS + lambda I)^-1 G_S: W^T, G = X^T X.
    lambda = damp * mean diag(G_SS) keeps it well posed with few calibration tokens.
    weight: (out, in) -> (out, len(keep)).
    """
    w = weight.detach().double()
    g_ss = gram[keep][:, keep]
    lam = damp * float(g_ss.diagonal().mean().clamp(min=1e-12))
    rhs = gram[keep] @ w.T  # (S, out)
    sol = torch.linalg.solve(g_ss + lam * torch.eye(len(keep), dtype=g_ss.dtype), rhs)
    if not torch.isfinite(sol).all():
        return w[:, keep].to(weight.dtype)
    return sol.T.to(weight.dtype).contiguous()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

