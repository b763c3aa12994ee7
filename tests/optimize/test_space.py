"""The search space: one contract row per registered move (its proposals are valid recipe steps)."""
from __future__ import annotations

import optuna
import pytest

from leanlm.compress.recipe import load_recipe
from leanlm.optimize.space import DISTILL_LRS, NONE, Candidate, SearchSpace, SpaceContext, moves

optuna.logging.set_verbosity(optuna.logging.WARNING)
MOVES = moves()


def _forced(move) -> dict:
    params = {"prune": NONE, "lowrank": NONE, "distill": NONE, "quantize": NONE, move.family: move.name}
    for need in move.needs:  # a recovery move needs a cut before it
        params[need] = "heads" if need == "prune" else "svd"
    return params


@pytest.mark.parametrize("move", MOVES, ids=[f"{m.family}/{m.name}" for m in MOVES])
def test_every_move_proposes_valid_recipe_steps(move):
    space = SearchSpace(SpaceContext(layers=2))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        study.enqueue_trial(_forced(move))
    for _ in range(3):
        cand = space.suggest(study.ask())
        assert move.name in [o["type"] for _, o in cand.steps]
        recipe = load_recipe(cand.recipe("movie-snippets", 16))  # every option validated by the technique itself
        assert [c.family for c in recipe.steps] == [f for f, _ in cand.steps]
        assert Candidate.from_dict(cand.to_dict()).key() == cand.key()
        if move.backends:
            assert cand.backend in move.backends


def test_seeds_are_cheap_first_and_respect_backends():
    space = SearchSpace(SpaceContext(backends=("torch",), layers=2), methods=("int8-dynamic", "heads", "layers"))
    seeds = space.seeds()
    order = [next(p[s] for s in ("quantize", "prune") if p.get(s, NONE) != NONE) for p in seeds]
    assert order == ["int8-dynamic", "heads", "layers"]  # int8 before pruning; no onnxruntime seed on torch only
    assert all(p.get("int8-dynamic.backend", "torch") == "torch" for p in seeds)


def test_unknown_method_names_the_valid_ones():
    from leanlm.errors import ConfigError

    with pytest.raises(ConfigError, match="int8-dynamic"):
        SearchSpace(SpaceContext(), methods=("int8-dynamik",))


def test_stacked_cuts_combine_coarse_first():
    space = SearchSpace(SpaceContext(layers=6), methods=("heads", "ffn", "layers", "int8-dynamic"))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"prune": "ffn", "prune+heads": True, "prune+layers": True, "quantize": NONE})
    cand = space.suggest(study.ask())
    assert [o["type"] for _, o in cand.steps] == ["layers", "ffn", "heads"]  # whole layers go before heads and neurons
    load_recipe(cand.recipe("movie-snippets", 16))


def test_a_seed_naming_one_cut_takes_that_cut_alone():
    space = SearchSpace(SpaceContext(layers=6), methods=("heads", "ffn", "layers"))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seeds = space.seeds()
    for p in seeds:
        study.enqueue_trial(p)
    cuts = [[o["type"] for _, o in space.suggest(study.ask()).steps] for _ in seeds]
    assert sorted(c for c in cuts if c) == [["ffn"], ["heads"], ["layers"]]  # the others: float runtimes


@pytest.mark.parametrize("unlabeled", [(), ("imdb", "amazon")])
def test_student_seed_cuts_everything_distills_and_quantizes(unlabeled):
    space = SearchSpace(SpaceContext(layers=6, unlabeled=unlabeled, unlabeled_size=500, distill_epochs=2))
    seeds = space.seeds()
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(seeds[-1])  # the costliest seed comes last
    cand = space.suggest(study.ask())
    steps = {o["type"]: o for _, o in cand.steps}
    assert [o["type"] for _, o in cand.steps] == ["layers", "ffn", "heads", "distill", "int8-nncf"]
    assert steps["layers"]["count"] == 2 and steps["heads"]["ratio"] == 0.5 and steps["ffn"]["ratio"] == 0.5
    assert tuple(steps["distill"]["unlabeled"]) == unlabeled and steps["distill"]["loop"]["epochs"] == 2
    assert steps["distill"]["loop"]["lr"] == max(DISTILL_LRS)
    assert cand.backend == "openvino"
    load_recipe(cand.recipe("movie-snippets", 16))
    others = [p for p in seeds[:-1] if p.get("distill", NONE) != NONE]
    assert others and all(p.get("distill.unlabeled") is False for p in others)  # recovery seeds stay cheap
    assert all(p["distill.epochs"] == 1 and p["distill.lr"] == min(DISTILL_LRS) for p in others)
