"""`leanlm quantize MODEL OUT METHOD [--option value ...]` and `leanlm quantize --list`.

Method options are not declared by hand: they come from the method's config dataclass fields
(`--group-size 64`, `--act-order`, `--skip classifier,pooler`), coerced to the field's type.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from leanlm.errors import ConfigError, LeanlmError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(hint: Any, raw: str, option: str) -> Any:
    """Turn a command-line string into a config field's type (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        return _coerce(args[0], raw, option) if len(args) == 1 else raw
    if origin is tuple:
        inner = (typing.get_args(hint) or (str,))[0]
        return tuple(_coerce(inner, part.strip(), option) for part in raw.split(",") if part.strip())
    try:
        if hint is bool:
            if raw.lower() in TRUE + FALSE:
                return raw.lower() in TRUE
            raise ValueError
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{option} expects {getattr(hint, '__name__', hint)}, got {raw!r}") from None
    return raw  # str, and nested configs given by method name (the config validates it)


def parse_options(cls: type, args: list[str]) -> dict[str, Any]:
    """Parse `--name value` / `--flag` / `--no-flag` pairs against the config's fields."""
    hints = typing.get_type_hints(cls)
    fields = {_flag(f.name): f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, _, inline = arg.partition("=")
        negated = key.startswith("--no-") and key not in fields and "--" + key[5:] in fields
        name = fields.get("--" + key[5:] if negated else key)
        if not arg.startswith("--") or name is None:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{cls.name}: unknown option {arg!r}; valid: {valid or '(none)'}")
        if hints.get(name) is bool and (negated or (not inline and (i + 1 == len(args) or args[i + 1].startswith("--")))):
            out[name] = not negated
            i += 1
            continue
        if inline:
            raw, i = inline, i + 1
        elif i + 1 < len(args):
            raw, i = args[i + 1], i + 2
        else:
            raise ConfigError(f"{cls.name}: option {key} needs a value")
        out[name] = _coerce(hints.get(name, str), raw, key)
    return out


def calibration_texts(name: str, size: int) -> list[str]:
    """Texts for calibration: a dataset's train split, or paragraphs of a raw text corpus."""
    from leanlm.data import load_splits
    from leanlm.data.registry import TEXT_CORPORA, load_text

    if name in TEXT_CORPORA:
        paras = [p.strip() for p in load_text(name, "train").split("\n") if len(p.strip()) > 40 and not p.strip().startswith("=")]
        return paras[:size]
    return list(load_splits(name).train.texts[:size])


def validation_probe(name: str, model: Any) -> Any:
    """evaluate(model) -> accuracy in points on dataset `name`'s validation split (for accuracy guards)."""
    from leanlm.bench.evaluate import evaluate
    from leanlm.data import load_splits
    from leanlm.data.registry import TEXT_CORPORA

    if name in TEXT_CORPORA or model.task != "sequence-classification":
        raise ConfigError(f"an accuracy budget (max_drop) needs a classifier and a labelled --calibration dataset; "
                          f"got a {model.task} model and {name!r}")
    validation = load_splits(name).validation
    return lambda m: 100.0 * evaluate(m, validation)["accuracy"]


def _list_methods(family: str = "quantize") -> None:
    """Print a family's methods with their options (from the config fields) as a table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from leanlm.config import lookup, names

    t = Table("method", "what it does", "options (default)")
    for name in names(family):
        cls = lookup(family, name)
        opts = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if isinstance(default, bool):
                opts.append(f"{_flag(f.name)} / --no-{f.name.replace('_', '-')} ({default})")
                continue
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            elif hasattr(default, "name") and hasattr(default, "to_dict"):
                default = default.name
            opts.append(f"{_flag(f.name)} {default}")
        # escape: docstrings carry brackets ("leanlm[openvino]") that rich would read as markup
        t.add_row(name, escape(cls.summary()), escape("\n".join(opts)))
    Console().print(t)


def register(app: typer.Typer) -> None:
    @app.command("quantize", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def quantize_cmd(
        ctx: typer.Context,
        model: Optional[str] = typer.Argument(None, help="Model directory or bundled model name."),
        out: Optional[Path] = typer.Argument(None, help="New model directory to write."),
        method: Optional[str] = typer.Argument(None, help="Quantization method (see --list)."),
        calibration: Optional[str] = typer.Option(None, "--calibration", help="Dataset (train split) or text corpus for calibration texts."),
        calibration_size: Optional[int] = typer.Option(
            None, "--calibration-size", help="Number of calibration texts (default: the method's, else 128)."),
        max_length: int = typer.Option(128, "--max-length", help="Tokens per calibration text."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
        list_methods: bool = typer.Option(False, "--list", help="List methods and their options, then exit."),
    ) -> None:
        """Quantize a model into a new model directory: METHOD options come from its config (--list)."""
        import leanlm
        from leanlm.artifact import directory_size
        from leanlm.compress.quantize import QuantContext, config_class

        if list_methods:
            _list_methods()
            return
        if not (model and out and method):
            raise LeanlmError("usage: leanlm quantize MODEL OUT METHOD [--option value ...]; "
                              "`leanlm quantize --list` shows methods")
        cls = config_class(method)
        options = parse_options(cls, list(ctx.args))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if "calibration_size" in fields:  # one number for both: texts loaded = texts the method uses
            if calibration_size is not None:
                options["calibration_size"] = calibration_size
            calibration_size = options.get("calibration_size", fields["calibration_size"].default)
        calibration_size = 128 if calibration_size is None else calibration_size
        config = cls(**options)
        if out.exists() and not overwrite:
            raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")
        if calibration_size < 1:
            raise LeanlmError("--calibration-size must be >= 1")
        m = leanlm.load(model)
        texts = calibration_texts(calibration, calibration_size) if calibration else None
        # an opt-in accuracy guard (a max_drop option that defaults to off, e.g. int8-nncf's) was asked for:
        # measure it on the calibration dataset's validation split (never the test split)
        guarded = "max_drop" in fields and fields["max_drop"].default is None and config.max_drop is not None
        if guarded and not calibration:
            raise LeanlmError(f"{method} --max-drop needs --calibration DATASET (its validation split measures the drop)")
        probe = validation_probe(calibration, m) if guarded and calibration else None
        leanlm.quantize_(m, config, QuantContext(calibration=texts, max_length=max_length, evaluate=probe))
        if calibration:
            m.record.extra.setdefault(config.name, {})["calibration"] = {"dataset": calibration, "texts": len(texts or [])}
        m.save(out, overwrite=overwrite)
        extra = {k: v for k, v in m.record.extra.get(config.name, {}).items() if not isinstance(v, dict) or len(v) < 8}
        size = directory_size(out)
        typer.echo(f"wrote {out} ({config.name}, {size / 1e6:.1f} MB weights): {extra}")
