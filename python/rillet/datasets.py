"""Real sample media for demos, tests and benchmarks, fetched from PyPI wheels that ship
them (no model hub or web download needed) and cached outside any repository.

- :func:`sample_photos`: ~30 photos and scans from the scikit-image wheel (PNG, JPEG, GIF,
  TIFF) plus ``china.jpg`` and ``flower.jpg`` from the scikit-learn wheel.

The cache lives in ``$RILLET_CACHE`` (default ``~/.cache/rillet``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

_WHEELS = {
    # package spec: (wheel file glob, member prefix inside the wheel)
    "scikit-image==0.26.0": ("scikit_image-0.26.0-*.whl", "skimage/data/"),
    "scikit-learn==1.9.1": ("scikit_learn-1.9.1-*.whl", "sklearn/datasets/images/"),
}
_MEDIA = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff")


def cache_dir() -> Path:
    """Where downloaded wheels and extracted media are kept."""
    return Path(os.environ.get("RILLET_CACHE", Path.home() / ".cache" / "rillet"))


def _wheel(spec: str, pattern: str) -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        spec, "-d", str(wheels)], check=True)
        found = sorted(wheels.glob(pattern))
    if not found:
        raise RuntimeError(f"pip downloaded no wheel matching {pattern} for {spec}")
    return found[0]


def sample_photos(target: str | os.PathLike | None = None) -> list[Path]:
    """Extract the sample photos into ``target`` (default: the cache) and return their paths."""
    target = Path(target) if target is not None else cache_dir() / "media" / "photos"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for spec, (pattern, prefix) in _WHEELS.items():
        with zipfile.ZipFile(_wheel(spec, pattern)) as wheel:
            for name in wheel.namelist():
                if name.startswith(prefix) and name.lower().endswith(_MEDIA):
                    path = target / Path(name).name
                    if not path.exists():
                        path.write_bytes(wheel.read(name))
                    out.append(path)
    return sorted(out)
