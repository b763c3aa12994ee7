"""Cascades: a small fast model answers; inputs it is unsure of go on to a larger model.

Confidence is the small model's max softmax probability (or its top-1 minus top-2 margin). Rows
whose confidence is strictly below the threshold are escalated. The threshold is calibrated on
the validation split of a labelled dataset: the smallest escalation share that reaches
`target_accuracy`, or the largest share within `target_escalation`, or a fixed `threshold`
(default: the large model's own validation accuracy). The whole calibration curve
(threshold -> escalated share, accuracy) is written into leanlm.json.

Example:
    >>> m = cascade("runs/minilm-l3", "runs/minilm-l6", data="movie-snippets", target_escalation=0.25,
    ...             output="runs/cascade")
    >>> m.record.extra["composite"]["calibration"]["accuracy"]
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from leanlm.artifact import LeanModel
from leanlm.compress.ensemble import FAMILY, compose
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import ConfigError, DataError
from leanlm.runtime.composite import CONFIDENCE, check_members, composite_model, confidence, pinned

# No target given: reach the large model's own validation accuracy. A default that allowed a drop sat on the
# edge of what users accept (a 0.5-point drop on validation came out as 0.66 on test); escalating all inputs
# always reaches it, so the default is never out of reach.
DEFAULT_DROP = 0.0
CURVE_POINTS = 101  # calibration curve points kept in leanlm.json (about one per escalation percent)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@register(FAMILY, "cascade")
@dataclass(frozen=True)
class CascadeConfig(BaseConfig):
    """Answer with the small model; escalate inputs whose confidence is below a calibrated threshold.

    Args:
        threshold: fixed confidence threshold (rows with confidence < threshold are escalated;
            0 never escalates).
        target_accuracy: calibrate: the smallest escalation share whose validation accuracy
            (0..1) reaches this.
        target_escalation: calibrate: the largest escalation share (0..1) not above this.
        confidence: "max_prob" (max softmax probability) or "margin" (top-1 minus top-2 probability).
        batch_size: texts per forward pass during calibration.
        max_length: tokens per text during calibration.
        At most one of threshold / target_accuracy / target_escalation; none calibrates to the
        large model's own validation accuracy (the least escalation that loses nothing there).

    Example:
        >>> CascadeConfig(target_accuracy=0.82)
    """

    threshold: float | None = None
    target_accuracy: float | None = None
    target_escalation: float | None = None
    confidence: str = "max_prob"
    batch_size: int = 32
    max_length: int = 128

    def validate(self) -> None:
        given = [n for n in ("threshold", "target_accuracy", "target_escalation") if getattr(self, n) is not None]
        check(len(given) <= 1, f"cascade: give at most one of threshold, target_accuracy, target_escalation; got {given}")
        check(self.threshold is None or (_number(self.threshold) and self.threshold >= 0),
              f"cascade: threshold must be a number >= 0, got {self.threshold!r}")
        check(self.target_accuracy is None or (_number(self.target_accuracy) and 0 < self.target_accuracy <= 1),
              f"cascade: target_accuracy must be in (0, 1], got {self.target_accuracy!r}")
        check(self.target_escalation is None or (_number(self.target_escalation) and 0 <= self.target_escalation <= 1),
              f"cascade: target_escalation must be in [0, 1], got {self.target_escalation!r}")
        check(self.confidence in CONFIDENCE,
              f"cascade: confidence must be one of {', '.join(CONFIDENCE)}, got {self.confidence!r}")
        for name in ("batch_size", "max_length"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"cascade: {name} must be an integer >= 1, got {v!r}")


def cascade(small: LeanModel | str | os.PathLike, large: LeanModel | str | os.PathLike, data: Any = None,
            threshold: float | None = None, target_accuracy: float | None = None,
            target_escalation: float | None = None, confidence: str = "max_prob",
            output: str | os.PathLike | None = None, overwrite: bool = False) -> LeanModel:
    """A two-stage cascade of saved classifiers as one model, calibrated on `data`'s validation split.

    Args:
        small: the fast model's directory (or a LeanModel loaded from one); it answers first.
        large: the accurate model's directory; it answers the escalated inputs.
        data: dataset name, Splits or a labelled TextDataset (used as the validation set); needed
            unless `threshold` is given (then it only records the curve).
        threshold, target_accuracy, target_escalation: at most one (see CascadeConfig).
        confidence: "max_prob" or "margin".
        output: write the cascade's model directory here (atomically).
        overwrite: replace `output` if it exists.

    Example:
        >>> m = cascade("runs/small", "runs/large", data="movie-snippets", target_accuracy=0.80)
        >>> m.predict(texts); m.runner.stats()["escalated_share"]
    """
    config = CascadeConfig(threshold=threshold, target_accuracy=target_accuracy,
                           target_escalation=target_escalation, confidence=confidence)
    return compose([small, large], config, data=data, output=output, overwrite=overwrite)


# ----------------------------------------------------------------------------- calibration

def _validation(data: Any) -> tuple[Any, dict[str, Any] | None]:
    """(validation TextDataset, description for leanlm.json) of a dataset name, Splits or TextDataset."""
    from leanlm.data import TextDataset, load_splits

    splits = load_splits(data) if isinstance(data, (str, os.PathLike)) else data
    if hasattr(splits, "validation"):
        return splits.validation, splits.describe()
    if not isinstance(splits, TextDataset):
        raise DataError(f"cascade calibration needs a dataset name, Splits or TextDataset, got {type(data).__name__}")
    return splits, {"dataset": splits.name, "validation": len(splits), "labels": list(splits.label_names)}


@torch.inference_mode()
def _logits(model: LeanModel, texts: list[str], config: CascadeConfig) -> torch.Tensor:
    out = [model(**model.encode(texts[i : i + config.batch_size], max_length=config.max_length)).float()
           for i in range(0, len(texts), config.batch_size)]
    return torch.cat(out)


def _correct(model: LeanModel, logits: torch.Tensor, ds: Any) -> np.ndarray:
    from leanlm.data.metrics import label_map as _label_map

    pred = logits.argmax(-1).numpy()
    mapping = _label_map(model, ds.label_names)
    if mapping is not None:
        pred = np.asarray(mapping)[pred]
    return pred == np.asarray(ds.labels)


def calibration_curve(conf: np.ndarray, small_ok: np.ndarray, large_ok: np.ndarray) -> list[dict[str, float]]:
    """Every distinct escalation set {conf < t}: its threshold t, escalated share and accuracy.

    Args:
        conf: (N,) float32 confidences of the small model.
        small_ok, large_ok: (N,) booleans, each model's prediction is right.

    Thresholds are exact float32 values: 0 (escalate nothing), each distinct confidence (escalate
    those below it), and the float just above the largest (escalate everything).
    """
    conf = np.asarray(conf, dtype=np.float32)
    n = len(conf)
    order = np.argsort(conf, kind="stable")
    c, s_ok, l_ok = conf[order], small_ok[order].astype(np.int64), large_ok[order].astype(np.int64)
    # k lowest-confidence rows escalated: large answers them, small the rest
    correct = np.concatenate([[0], np.cumsum(l_ok)]) + (s_ok.sum() - np.concatenate([[0], np.cumsum(s_ok)]))
    points = [(0, 0.0)]
    points += [(k, float(c[k])) for k in range(1, n) if c[k - 1] < c[k]]
    points.append((n, float(np.nextafter(c[-1], np.float32(np.inf)))))
    return [{"threshold": t, "escalated_share": k / n, "accuracy": float(correct[k]) / n} for k, t in points]


def _choose(curve: list[dict[str, float]], conf: np.ndarray, config: CascadeConfig,
            large_acc: float) -> tuple[dict[str, float], dict]:
    """The curve point the config asks for, and the target as recorded."""
    if config.threshold is not None:
        # the point whose escalation set is {conf < threshold}: it escalates exactly that many rows
        k = int((np.asarray(conf, dtype=np.float32) < np.float32(config.threshold)).sum())
        point = next(p for p in curve if round(p["escalated_share"] * len(conf)) == k)
        return {**point, "threshold": float(config.threshold)}, {"threshold": config.threshold}
    if config.target_escalation is not None:
        point = [p for p in curve if p["escalated_share"] <= config.target_escalation + 1e-12][-1]
        return point, {"target_escalation": config.target_escalation}
    target = config.target_accuracy if config.target_accuracy is not None else large_acc - DEFAULT_DROP
    hits = [p for p in curve if p["accuracy"] >= target - 1e-12]
    if not hits:
        best = max(curve, key=lambda p: p["accuracy"])
        raise ConfigError(f"cascade: validation accuracy {target:.4f} is out of reach (best {best['accuracy']:.4f} "
                          f"at {100 * best['escalated_share']:.1f}% escalated); lower target_accuracy")
    how = "target_accuracy" if config.target_accuracy is not None else "large_accuracy_minus"
    return hits[0], {how: config.target_accuracy if config.target_accuracy is not None else DEFAULT_DROP,
                     "accuracy": target}


def _thin(curve: list[dict[str, float]], keep: dict[str, float]) -> list[dict[str, float]]:
    """At most ~CURVE_POINTS points spread over the escalation share, plus the chosen one."""
    if len(curve) <= CURVE_POINTS:
        return curve
    shares = np.asarray([p["escalated_share"] for p in curve])
    idx = {int(np.abs(shares - g).argmin()) for g in np.linspace(0, 1, CURVE_POINTS)}
    out = [curve[i] for i in sorted(idx)]
    return sorted(out + ([keep] if keep not in out else []), key=lambda p: (p["escalated_share"], p["threshold"]))


def calibrate(small: LeanModel, large: LeanModel, data: Any, config: CascadeConfig) -> dict[str, Any]:
    """Both models on the validation split -> the calibration record (threshold, curve, accuracies)."""
    ds, described = _validation(data)
    small_logits, large_logits = _logits(small, ds.texts, config), _logits(large, ds.texts, config)
    small_ok, large_ok = _correct(small, small_logits, ds), _correct(large, large_logits, ds)
    conf = confidence(small_logits, config.confidence).numpy()
    curve = calibration_curve(conf, small_ok, large_ok)
    large_acc = float(large_ok.mean())
    point, target = _choose(curve, conf, config, large_acc)
    return {"data": described, "split": "validation", "n": len(ds), "confidence": config.confidence,
            "target": target, "threshold": point["threshold"], "escalated_share": point["escalated_share"],
            "accuracy": point["accuracy"], "small_accuracy": float(small_ok.mean()), "large_accuracy": large_acc,
            "curve": _thin(curve, point)}


@transform(CascadeConfig)
def _cascade(members: list[LeanModel], config: CascadeConfig, data: Any = None) -> LeanModel:
    check_members(members, ("sequence-classification",))
    calibration = None
    if data is None:
        if config.threshold is None:
            raise ConfigError("cascade: calibrating the threshold needs data (a labelled dataset's validation split); "
                              "or give a fixed threshold")
    else:
        if len(members) != 2:
            raise ConfigError(f"cascade: calibration covers two stages; for {len(members)} give a fixed threshold "
                              "and no data")
        calibration = calibrate(members[0], members[1], data, config)
    threshold = calibration["threshold"] if calibration else float(config.threshold)
    refs = [pinned(m) for m in members]
    params = {"thresholds": [threshold] * (len(members) - 1), "confidence": config.confidence,
              "calibration": calibration}
    return composite_model("cascade", members, refs, params, techniques=[config.to_dict()],
                           data=calibration["data"] if calibration else None)
