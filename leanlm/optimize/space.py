"""The search space, built from the technique registries: each technique contributes a "move".

A move is one registered config (`leanlm.config.lookup(family, name)`) plus a hook giving the
Optuna distributions of its options. A technique added later joins the search by registering its
own hook (here or next to its file); the search loop never names a method:

    @space_for("prune", "heads", cost=2.0, seeds=({"ratio": 0.2},))
    def _heads(trial, ctx):
        return {"ratio": trial.suggest_float("heads.ratio", 0.1, 0.5, step=0.1)}

A candidate is a recipe (the compression recipe format: `{family: {type, ...options}}` steps, in
stage order prune -> lowrank -> distill -> quantize) plus how it runs: backend, threads and
whether OpenVINO compiles static shapes. Moves of a stacking stage (pruning: heads, FFN neurons and
layers) combine, so one candidate may cut all three. `seeds()` lists cheap-first candidates (float
runtimes, then int8 variants, then the sensitivity-aware mixed precision, then pruning, then pruning +
distillation, last a student: every cut at its student depth, distilled (on unlabeled texts where
the search has them) and quantized) that the search enqueues before Optuna proposes its own.

Example:
    >>> space = SearchSpace(SpaceContext(backends=("torch", "openvino"), layers=6))
    >>> cand = space.suggest(trial)          # inside an Optuna objective
    >>> cand.recipe("movie-snippets", 256)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from leanlm.config import lookup, names
from leanlm.errors import ConfigError, did_you_mean

BACKENDS = ("torch", "onnxruntime", "openvino")
NONE = "none"
# The recipe's step order: structure first, recovery after it, quantization last (it must be).
STAGES = ("prune", "lowrank", "distill", "quantize")
# Stages whose moves combine (a candidate may cut heads, FFN neurons and layers); in the others one move at most.
STACKED = ("prune",)
# Learning rates a distillation move proposes (the recovery seeds take the lower, the student the higher).
DISTILL_LRS = (1e-4, 2e-4)


@dataclass(frozen=True)
class SpaceContext:
    """What a move may look at when proposing options.

    Args:
        backends: runtimes candidates may use.
        layers: transformer layers of the input model (bounds layer dropping).
        max_drop: the accuracy budget in points (sensitivity-aware quantizers get it).
        distill_epochs: the most epochs a distillation move proposes.
        unlabeled: datasets whose texts distillation may add (the teacher labels them); empty: none.
        unlabeled_size: texts taken from each of them.
    """

    backends: tuple[str, ...] = BACKENDS
    layers: int = 6
    max_drop: float = 1.0
    distill_epochs: int = 2
    unlabeled: tuple[str, ...] = ()
    unlabeled_size: int = 20000


@dataclass(frozen=True)
class Move:
    family: str
    name: str
    suggest: Callable[[Any, SpaceContext], dict[str, Any] | None]
    cost: float  # relative build cost; seeds run cheapest first
    backends: tuple[str, ...] | None  # runtimes its output runs on; None: float PyTorch (convertible)
    seeds: tuple[dict[str, Any], ...]
    needs: tuple[str, ...]  # families one of which must come earlier (distillation recovers a cut)
    student: Callable[[SpaceContext], dict[str, Any] | None] | None  # the cut's options in the student seed

    def runs_on(self, options: dict[str, Any]) -> str | None:
        if self.backends is None:
            return None
        return options.get("backend", self.backends[0])


_MOVES: dict[tuple[str, str], Move] = {}


def space_for(family: str, name: str, *, cost: float = 1.0, backends: Sequence[str] | None = None,
              seeds: Sequence[dict[str, Any]] = ({},), needs: Sequence[str] = (),
              student: Callable[[SpaceContext], dict[str, Any] | None] | None = None) -> Callable:
    """Register the search hook of technique `family/name`.

    Args:
        family, name: the registered config (checked when the space is built).
        cost: relative build cost (seeds are enqueued cheapest first).
        backends: runtimes the technique's output runs on (None: it stays float PyTorch, which a
            candidate may still convert to ONNX Runtime or OpenVINO).
        seeds: option dicts tried before Optuna proposes its own (cheap-first).
        needs: families one of which must precede this move.
        student: `fn(ctx) -> options | None`: this cut's options in the student seed (a deep cut
            that distillation trains back; None: not part of it).

    The hook is `fn(trial, ctx) -> options | None`: Optuna `trial.suggest_*` calls named
    "<name>.<option>"; None means the move does not apply in this context.

    Example:
        >>> @space_for("lowrank", "svd", cost=2.0, seeds=({"energy": 0.9},))
        ... def _svd(trial, ctx): return {"energy": trial.suggest_float("svd.energy", 0.8, 0.99)}
    """

    def deco(fn: Callable) -> Callable:
        _MOVES[(family, name)] = Move(family, name, fn, float(cost), tuple(backends) if backends else None,
                                      tuple(seeds), tuple(needs), student)
        return fn

    return deco


def moves(methods: Sequence[str] = ()) -> list[Move]:
    """Registered moves whose technique is registered too, optionally only the named ones."""
    known = [m for m in _MOVES.values() if m.name in names(m.family)]
    for want in methods:
        if want not in {m.name for m in known}:
            raise ConfigError("optimize: " + did_you_mean(want, sorted(m.name for m in known), "search method"))
    return [m for m in known if not methods or m.name in methods]


# ----------------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class Candidate:
    """One point of the space: recipe steps plus how the result runs."""

    steps: tuple[tuple[str, dict[str, Any]], ...]  # (family, options incl. type) in stage order
    backend: str = "torch"
    threads: int = 1
    static: bool = False

    def recipe(self, data: str | None, calibration_size: int) -> dict[str, Any]:
        return {"data": data, "calibration_size": calibration_size,
                "steps": [{family: dict(opts)} for family, opts in self.steps]}

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [{f: dict(o)} for f, o in self.steps], "backend": self.backend,
                "threads": self.threads, "static": self.static}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        steps = tuple(next(iter(s.items())) for s in d["steps"])
        return cls(steps=steps, backend=d["backend"], threads=d["threads"], static=d["static"])

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def label(self) -> str:
        parts = [o["type"] + "".join(f" {k}={v}" for k, v in _changed(family, o).items())
                 for family, o in self.steps] or ["float"]
        run = self.backend + (" static" if self.static else "")
        return " + ".join(parts) + f" [{run}, {self.threads}t]"


def _changed(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from the config's defaults (short labels)."""
    import dataclasses

    cls = lookup(family, options["type"])
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        default = default.to_dict() if hasattr(default, "to_dict") else default
        v = options.get(f.name)
        if f.name in options and v != (list(default) if isinstance(default, tuple) else default):
            out[f.name] = v if not isinstance(v, dict) else "{...}"
    return out


def _validated(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options as the registered config normalises them (so equal candidates hash alike)."""
    return lookup(family, options["type"]).from_dict(dict(options)).to_dict()


class SearchSpace:
    """Moves grouped by stage; `suggest` turns an Optuna trial into a Candidate (define-by-run).

    Args:
        ctx: backends, model depth and budget the moves may look at.
        methods: only these moves (names); empty = every registered one.
        threads: thread counts to choose from.
        static_shapes: let OpenVINO candidates compile static shapes.

    Example:
        >>> SearchSpace(SpaceContext(backends=("torch",)), methods=("int8-dynamic", "heads")).seeds()
    """

    def __init__(self, ctx: SpaceContext, methods: Sequence[str] = (), threads: Sequence[int] = (1,),
                 static_shapes: bool = True):
        self.ctx, self.threads, self.static_shapes = ctx, tuple(threads), static_shapes
        self.by_stage: dict[str, list[Move]] = {s: [] for s in STAGES}
        for m in moves(methods):
            if m.family not in self.by_stage:
                raise ConfigError(f"optimize: search method {m.name} is of family {m.family}, not one of {STAGES}")
            if m.backends is None or set(m.backends) & set(ctx.backends):
                self.by_stage[m.family].append(m)
        for stage in self.by_stage.values():
            stage.sort(key=lambda m: (m.cost, m.name))

    def _floats(self) -> tuple[str, ...]:
        return tuple(b for b in self.ctx.backends if b in BACKENDS)

    def suggest(self, trial: Any) -> Candidate:
        steps: list[tuple[str, dict[str, Any]]] = []
        runs_on: str | None = None
        for stage, options in self.by_stage.items():
            allowed = [m for m in options if not m.needs or any(f in m.needs for f, _ in steps)]
            if not allowed:
                continue
            choice = trial.suggest_categorical(stage, [NONE] + [m.name for m in options])
            move = next((m for m in allowed if m.name == choice), None)
            if move is None:  # NONE, or a move whose prerequisite is missing: skip the stage
                continue
            chosen = [move]
            if stage in STACKED:  # later moves of the stage may follow the first (each subset once)
                chosen += [m for param, m in self._followers(stage, move)
                           if m in allowed and trial.suggest_categorical(param, [False, True])]
                # coarse cuts first (costlier moves cut more): heads and neurons are then scored on the layers that stay
                chosen.sort(key=lambda m: -m.cost)
            for m in chosen:
                opts = m.suggest(trial, self.ctx)
                if opts is None:
                    continue
                opts = _validated(stage, {"type": m.name, **opts})
                steps.append((stage, opts))
                runs_on = m.runs_on(opts) or runs_on
        backend = runs_on or trial.suggest_categorical("runtime", list(self._floats()))
        static = bool(backend == "openvino" and self.static_shapes and trial.suggest_categorical("static", [True, False]))
        threads = trial.suggest_categorical("threads", list(self.threads))
        return Candidate(tuple(steps), backend, int(threads), static)

    def seeds(self) -> list[dict[str, Any]]:
        """Optuna params of the cheap-first seed candidates (for `study.enqueue_trial`)."""
        out: list[tuple[float, dict[str, Any]]] = []
        base = {s: NONE for s, ms in self.by_stage.items() if ms} | {"threads": max(self.threads)}
        for b in self._floats():
            if b != "torch":  # the float model on a faster runtime: no build at all
                out.append((0.5, base | {"runtime": b, "static": True}))
        for stage, ms in self.by_stage.items():
            for m in ms:
                if m.needs:
                    continue
                for seed in m.seeds:
                    if seed.get("backend", self.ctx.backends[0]) not in self.ctx.backends:
                        continue
                    params = base | {stage: m.name} | {f"{m.name}.{k}": v for k, v in seed.items()}
                    if m.backends is None:
                        params["runtime"] = self._floats()[-1]
                    out.append((m.cost, params | {"static": True}))
        for stage, ms in self.by_stage.items():  # recovery moves on the cheapest cut of each family they need
            for m in ms:
                for need in m.needs:
                    cut = next((c for c in self.by_stage.get(need, []) if c.seeds), None)
                    if cut is None:
                        continue
                    params = base | {need: cut.name, stage: m.name} | {f"{cut.name}.{k}": v for k, v in cut.seeds[-1].items()}
                    params |= {f"{m.name}.{k}": v for k, v in (m.seeds[0] if m.seeds else {}).items()}
                    out.append((cut.cost + m.cost, params | {"runtime": self._floats()[-1], "static": True}))
        student = self._student_seed(base)
        if student is not None:
            out.append(student)
        out.sort(key=lambda x: x[0])
        return [self._single_cuts(p) for _, p in out]

    def _single_cuts(self, params: dict[str, Any]) -> dict[str, Any]:
        """A seed that names one move of a stacking stage takes that move alone (else Optuna would sample the rest)."""
        for stage in STACKED:
            ms = self.by_stage.get(stage, [])
            first = next((m for m in ms if m.name == params.get(stage)), None)
            for param, _ in self._followers(stage, first) if first is not None else []:
                params.setdefault(param, False)
        return params

    def _followers(self, stage: str, first: Move) -> list[tuple[str, Move]]:
        """The moves that may follow `first` in a stacking stage (each subset once: only later ones),
        with the Optuna parameter that says whether each does."""
        ms = self.by_stage[stage]
        return [(f"{stage}+{m.name}", m) for m in ms[ms.index(first) + 1:]]

    def _student_seed(self, base: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
        """Every stacking cut at its student depth, then distillation (unlabeled texts too, where the
        search has them), then the first int8 method that runs on OpenVINO (else the float model
        there): the prune -> distill -> int8 student recipe, which no single cut or recovery seed reaches."""
        params: dict[str, Any] = {}
        cost = 0.0
        for stage in STACKED:
            ms = self.by_stage.get(stage, [])
            cuts = [(m, m.student(self.ctx)) for m in ms if m.student]
            cuts = [(m, o) for m, o in cuts if o is not None]
            if len(cuts) < 2:
                continue
            used = {m.name for m, _ in cuts}
            first = cuts[0][0]
            params[stage] = first.name
            params |= {param: m.name in used for param, m in self._followers(stage, first)}
            for m, o in cuts:
                params |= {f"{m.name}.{k}": v for k, v in o.items()}
                cost += m.cost
        recovery = next((m for s, ms in self.by_stage.items() for m in ms if m.needs and s not in STACKED), None)
        if not params or recovery is None:
            return None
        params[recovery.family] = recovery.name
        params[f"{recovery.name}.epochs"] = max(1, self.ctx.distill_epochs)
        params[f"{recovery.name}.lr"] = max(DISTILL_LRS)  # a deep cut relearns most (the student recipe's rate)
        if self.ctx.unlabeled:
            params[f"{recovery.name}.unlabeled"] = True
        quant = next((m for m in self.by_stage.get("quantize", []) if m.backends and "openvino" in m.backends
                      and m.seeds and not m.needs), None)
        if quant is not None:
            params["quantize"] = quant.name
            params |= {f"{quant.name}.{k}": v for k, v in quant.seeds[0].items()}
        else:
            params["runtime"] = self._floats()[-1]
        return cost + recovery.cost + (quant.cost if quant else 0.0), base | params | {"static": True}


# ----------------------------------------------------------------------------- the moves of today's techniques

def _quant_backend(trial: Any, ctx: SpaceContext, name: str, offered: Sequence[str]) -> str | None:
    usable = [b for b in offered if b in ctx.backends]
    return trial.suggest_categorical(f"{name}.backend", usable) if usable else None


@space_for("quantize", "int8-dynamic", cost=1.0, backends=("torch", "onnxruntime"),
           seeds=({"backend": "onnxruntime"}, {"backend": "torch"}))
def _int8_dynamic(trial: Any, ctx: SpaceContext) -> dict[str, Any] | None:
    backend = _quant_backend(trial, ctx, "int8-dynamic", ("torch", "onnxruntime"))
    return None if backend is None else {"backend": backend}


@space_for("quantize", "int8-nncf", cost=1.5, backends=("openvino",), seeds=({"preset": "performance", "smooth": 0.95},))
def _int8_nncf(trial: Any, ctx: SpaceContext) -> dict[str, Any] | None:
    return {"preset": trial.suggest_categorical("int8-nncf.preset", ["performance", "mixed"]),
            "smooth": trial.suggest_categorical("int8-nncf.smooth", [0.0, 0.5, 0.95])}


# Sensitivity-guided: the quantizer measures each layer's sensitivity and keeps the worst in float.
@space_for("quantize", "mixed-precision", cost=3.0, backends=("torch",), seeds=({"max_float_layers": 4},))
def _mixed(trial: Any, ctx: SpaceContext) -> dict[str, Any] | None:
    if "torch" not in ctx.backends:
        return None
    return {"max_float_layers": trial.suggest_int("mixed-precision.max_float_layers", 1, 8)}


@space_for("prune", "heads", cost=2.0, seeds=({"ratio": 0.2},), student=lambda ctx: {"ratio": 0.5})
def _heads(trial: Any, ctx: SpaceContext) -> dict[str, Any]:
    return {"ratio": round(trial.suggest_float("heads.ratio", 0.1, 0.6, step=0.1), 2)}


@space_for("prune", "ffn", cost=2.0, seeds=({"ratio": 0.3},), student=lambda ctx: {"ratio": 0.5})
def _ffn(trial: Any, ctx: SpaceContext) -> dict[str, Any]:
    return {"ratio": round(trial.suggest_float("ffn.ratio", 0.1, 0.7, step=0.1), 2)}


# A student keeps two thirds of the layers (6 -> 4): the 3-layer student lost ~4 points where the
# 4-layer one kept the teacher's accuracy (README, compression table).
@space_for("prune", "layers", cost=2.5, seeds=({"count": 1},),
           student=lambda ctx: {"count": ctx.layers // 3} if ctx.layers >= 3 else None)
def _layers(trial: Any, ctx: SpaceContext) -> dict[str, Any] | None:
    if ctx.layers < 2:
        return None
    return {"count": trial.suggest_int("layers.count", 1, max(1, ctx.layers // 2))}


@space_for("lowrank", "svd", cost=2.0, seeds=({"energy": 0.95},))
def _svd(trial: Any, ctx: SpaceContext) -> dict[str, Any]:
    return {"energy": round(trial.suggest_float("svd.energy", 0.8, 0.99, step=0.01), 2), "targets": ("intermediate.dense",)}


# A recovery seed repairs one light cut: one epoch on the training split does it, and leaves the
# budget to the student seed, which has the most to relearn (all its epochs at the larger rate).
@space_for("distill", "distill", cost=20.0, needs=("prune", "lowrank"),
           seeds=({"unlabeled": False, "epochs": 1, "lr": min(DISTILL_LRS)},))
def _distill(trial: Any, ctx: SpaceContext) -> dict[str, Any]:
    from leanlm.train.loop import bf16_supported

    epochs = trial.suggest_int("distill.epochs", 1, max(1, ctx.distill_epochs))
    lr = trial.suggest_categorical("distill.lr", list(DISTILL_LRS))
    # bf16 autocast where the CPU has it: distillation is the search's costliest step
    out: dict[str, Any] = {"loop": {"epochs": epochs, "lr": lr, "bf16": bf16_supported()}}
    # Unlabeled texts the teacher labels: what lets a deep cut train back (and what costs the most time).
    if ctx.unlabeled and trial.suggest_categorical("distill.unlabeled", [False, True]):
        out |= {"unlabeled": tuple(ctx.unlabeled), "unlabeled_size": ctx.unlabeled_size}
    return out
