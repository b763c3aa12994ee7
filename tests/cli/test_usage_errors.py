"""Usage errors on every registered command: usage line, one-line reason, exit 2, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from leanlm.cli import app, main


def _commands(group=None, path=()):
    """(argv prefix, click command) for every leaf command, subcommand groups included."""
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path + (name,))
        else:
            yield path + (name,), cmd


COMMANDS = list(_commands())
IDS = [" ".join(p) for p, _ in COMMANDS]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.err


def _assert_usage_error(code, err, needle, cmd=None):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    if len(lines) == 1 and cmd is not None and {"allow_extra_args", "ignore_unknown_options"} & set(cmd.context_settings):
        # commands that parse their own options (`quantize METHOD --group-size 64`) may answer with
        # their own single line, which names the usage
        assert "usage" in lines[0].lower(), err
        return
    assert len(lines) == 2 and lines[0].startswith("Usage:"), err
    needles = (needle,) if isinstance(needle, str) else needle
    assert lines[1].startswith("error: ") and any(n in lines[1] for n in needles), err


def test_commands_found():
    assert {"embed", "finetune", "info"} <= {p[0] for p, _ in COMMANDS}


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_missing_required_arguments(path, cmd, capsys):
    required = [p for p in cmd.params if p.required]
    if not required:
        pytest.skip(f"{' '.join(path)} has no required parameters")
    code, err = _run(path, capsys)
    _assert_usage_error(code, err, "Missing", cmd)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_unknown_option(path, cmd, capsys):
    code, err = _run(path + ("--no-such-option-xyz",), capsys)
    # commands that take their method's options (`cascade OUT SMALL LARGE --threshold 0.9`) read an
    # unknown option only once their arguments are there, so they name the missing argument first
    own_options = {"allow_extra_args", "ignore_unknown_options"} & set(cmd.context_settings)
    _assert_usage_error(code, err, ("--no-such-option-xyz", "Missing argument") if own_options else "--no-such-option-xyz", cmd)


def test_unknown_command(capsys):
    code, err = _run(("no-such-command",), capsys)
    _assert_usage_error(code, err, "no-such-command")


def test_real_process_missing_argument():
    # the reported case: `leanlm embed minilm-l6` printed typer's MissingParameter traceback
    r = subprocess.run([sys.executable, "-m", "leanlm.cli", "embed", "minilm-l6"], capture_output=True, text=True,
                       timeout=120)
    _assert_usage_error(r.returncode, r.stderr, "Missing argument")


def test_typer_exit_code_survives(monkeypatch):
    """A command that ends with typer.Exit(3) exits 3 through leanlm.cli.main (not 0)."""
    import typer

    from leanlm import cli

    probe = typer.Typer()

    @probe.command()
    def fail() -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(cli, "app", probe)
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 3
