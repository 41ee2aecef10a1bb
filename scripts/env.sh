# Sourced by the other scripts: the system packages (scripts/setup.sh, before anything is
# compiled), one Python virtual environment and one cargo target directory outside the
# clone (so repeated runs and CI on this machine stay warm), the Python packages, and the
# `rillet` extension built into the environment.
#
#   RILLET_CACHE   where the venv, target dir and downloaded data live (~/.cache/rillet)
#   RILLET_PROFILE cargo profile for the Python extension: dev (default) or release
#   RILLET_TIMINGS set to 1 for cargo's build timing reports (in $CARGO_TARGET_DIR/cargo-timings),
#                  to see where a cold build's minutes go

set -euo pipefail
RILLET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "${RILLET_SETUP_DONE:-}" = "1" ] || bash "$RILLET_ROOT/scripts/setup.sh"
RILLET_CACHE="${RILLET_CACHE:-$HOME/.cache/rillet}"
mkdir -p "$RILLET_CACHE"
RILLET_CACHE="$(cd "$RILLET_CACHE" && pwd)"  # absolute: the scripts and tests cd elsewhere
export RILLET_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$RILLET_CACHE/target}"
RILLET_VENV="${RILLET_VENV:-$RILLET_CACHE/venv}"
# CI builds each fresh clone once (a clone in a new folder is a new set of workspace
# crates to cargo): incremental compilation's bookkeeping would only slow it.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
mkdir -p "$RILLET_CACHE"

if [ ! -x "$RILLET_VENV/bin/python" ]; then
  echo "== creating Python environment in $RILLET_VENV"
  python3 -m venv "$RILLET_VENV"
fi
# shellcheck disable=SC1091
source "$RILLET_VENV/bin/activate"
# Installed again whenever requirements-dev.txt changes (its hash is kept in the venv).
requirements_stamp="$RILLET_VENV/.requirements-dev.sha256"
requirements_hash=$(sha256sum "$RILLET_ROOT/requirements-dev.txt" | cut -d' ' -f1)
if [ "$(cat "$requirements_stamp" 2>/dev/null)" != "$requirements_hash" ]; then
  echo "== installing Python packages"
  python -m pip install -q --upgrade pip
  python -m pip install -q -r "$RILLET_ROOT/requirements-dev.txt"
  echo "$requirements_hash" > "$requirements_stamp"
fi

echo "== building the rillet Python extension (${RILLET_PROFILE:-dev})"
if [ "${RILLET_PROFILE:-dev}" = "release" ]; then
  (cd "$RILLET_ROOT" && maturin develop --release -q ${RILLET_TIMINGS:+--timings})
else
  (cd "$RILLET_ROOT" && maturin develop -q ${RILLET_TIMINGS:+--timings})
fi
