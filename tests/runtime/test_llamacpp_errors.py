"""llama.cpp runtime errors name what is really missing; the peer rows skip with that reason."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

import pytest

from leanlm.errors import UnsupportedError
from leanlm.runtime import llamacpp

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


class _BrokenLlamaCpp(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `llama_cpp` findable, and importing it raise `error` (as a missing dependency would)."""

    def __init__(self, error: BaseException):
        self.error = error

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "llama_cpp" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


@pytest.fixture
def broken(monkeypatch):
    def install(error: BaseException) -> None:
        monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
        monkeypatch.setattr(sys, "meta_path", [_BrokenLlamaCpp(error), *sys.meta_path])

    return install


@pytest.fixture
def absent(monkeypatch):
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenLlamaCpp(ModuleNotFoundError("No module named 'llama_cpp'",
                                                                                name="llama_cpp")), *sys.meta_path])


@pytest.mark.parametrize("error, expected", [
    (ModuleNotFoundError("No module named 'diskcache'", name="diskcache"),
     "its dependency 'diskcache' is missing: pip install diskcache"),
    (ModuleNotFoundError("No module named 'typing_extensions'", name="typing_extensions"),
     "pip install typing-extensions"),
    (OSError("libllama.so: cannot open shared object file"), "native library does not load: libllama.so"),
    (ImportError("cannot import name 'x' from 'llama_cpp.llama'", name="llama_cpp.llama"), "does not import"),
])
def test_installed_but_broken_names_the_real_cause(broken, error, expected):
    broken(error)
    assert llamacpp.available()
    with pytest.raises(UnsupportedError) as e:
        llamacpp.LlamaCpp("missing.gguf")
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert "needs llama-cpp-python" not in str(e.value)  # the package is there: don't blame it
    assert llamacpp.unavailable_reason() == str(e.value)


def test_absent_says_how_to_install(absent):
    reason = llamacpp.unavailable_reason()
    assert reason and "needs llama-cpp-python" in reason and "make llamacpp" in reason


def test_unknown_quantize_type_is_rejected_before_importing(absent):
    with pytest.raises(UnsupportedError, match="llama.cpp file type"):
        llamacpp.quantize_gguf("a.gguf", "b.gguf", "q5_9")


def test_peer_rows_skip_with_the_reason(absent, tiny_lm, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import decode_paired as dp
    from decode import prompt_ids

    s = dp.Settings(tokens=2, rounds=1, threads=1, compile=False, kld_tokens=0)
    builders = dp.row_builders(tiny_lm, prompt_ids(tiny_lm.tokenizer, 8), s, tmp_path)
    names = {f"llama.cpp {t}" for t in dp.LLAMACPP_TYPES}
    rows, skipped = dp.build_rows(builders, s, names, log=lambda m: None)
    assert not rows and set(skipped) == names
    assert all("needs llama-cpp-python" in why for why in skipped.values())
    assert "skipped: llama.cpp runtime needs llama-cpp-python" in dp.table([], skipped)
