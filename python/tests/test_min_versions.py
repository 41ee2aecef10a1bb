"""The declared minimum versions of the Python dependencies (pyproject.toml) hold: the
worker, UDF, conversion and API tests run again in a second virtual environment holding
exactly those floors (cached in ``$RILLET_CACHE``, rebuilt when the floors change)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Run again on the floors: they exercise workers, conversions, UDFs and the whole API.
SUITES = ["test_api.py", "test_errors.py", "test_execution.py", "test_workers.py", "test_udf.py"]


def floors() -> list[str]:
    """Each runtime dependency (and pandas, for conversions) pinned to its floor:
    ``numpy>=1.24`` → ``numpy==1.24.*``, ``pandas>=2`` → ``pandas==2.0.*``,
    ``pyarrow>=19.0.1`` → ``pyarrow==19.0.1``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["pandas"]
    pins = []
    for requirement in declared:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        if version.count(".") >= 2:
            pins.append(f"{name}=={version}")
        else:  # the floor's newest patch release: 2 → 2.0.*, 1.24 → 1.24.*
            pins.append(f"{name}=={version if '.' in version else version + '.0'}.*")
    return pins


def test_the_declared_minimum_versions_pass_the_worker_and_conversion_tests():
    pins = floors()
    assert any(p.startswith("pyarrow==") for p in pins), pins
    cache = Path(os.environ.get("RILLET_CACHE") or Path.home() / ".cache" / "rillet")
    venv = cache / ("venv-min-" + hashlib.sha256(" ".join(pins).encode()).hexdigest()[:12])
    python = venv / "bin" / "python"
    installed = venv / ".installed"  # written last: a venv cut short is built again
    if not installed.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins, "pytest>=8", "hypothesis>=6"],
                       check=True)
        installed.write_text(" ".join(pins))
    extension = list((ROOT / "python" / "rillet").glob("_rillet*.so"))
    assert extension, "no built extension in python/rillet: run maturin develop first"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    run = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *[str(ROOT / "python" / "tests" / s) for s in SUITES],
                          "-k", "not notebook_display"],  # Pillow is not a dependency
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    versions = subprocess.run([str(python), "-c", "import pyarrow, numpy, pandas; "
                               "print(pyarrow.__version__, numpy.__version__, pandas.__version__)"],
                              capture_output=True, text=True).stdout.strip()
    assert run.returncode == 0, f"on {pins} ({versions}):\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
