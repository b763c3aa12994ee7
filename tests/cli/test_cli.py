"""The CLI as a user runs it: real subprocesses, exit codes and one-line errors."""
import os
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "leanlm.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_help_lists_verbs():
    r = run("--help")
    assert r.returncode == 0
    for verb in ("embed", "finetune", "models", "datasets"):
        assert verb in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("embed", "minilm-l7", "hi"), "Valid: minilm-l3, minilm-l6, smollm2-135m"),
        (("info", "/nonexistent/model"), "does not exist"),
        (("finetune", "OUT", "--dataset", "movie-snipets"), "Did you mean 'movie-snippets'"),
    ],
)
def test_bad_input_one_line_nonzero(args, needle, tmp_path):
    r = run(*args, cwd=tmp_path)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "OUT").exists()


def test_finetune_bad_label_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"good {i},1\nbad {i},0\n" for i in range(10)))
    r = run("finetune", str(tmp_path / "out"), "--dataset", str(p), "--label-column", "stars")
    assert r.returncode == 2 and "no label column 'stars'" in r.stderr
    assert not (tmp_path / "out").exists()
    assert [x.name for x in tmp_path.iterdir()] == ["d.csv"]


def test_embed_prints_json(tmp_path):
    import json

    r = run("embed", "minilm-l6", "hello world", "good morning")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["shape"] == [2, 384]
