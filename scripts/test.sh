#!/usr/bin/env bash
# Every test: formatting and lints, Rust unit, integration and doc tests, then the Python
# suite (which includes the check that the type stubs match the extension).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
export RILLET_SETUP_DONE=1  # env.sh, sourced below, need not check again
# Absolute, so that it means the same after the cd below and in the tests.
RILLET_CACHE="${RILLET_CACHE:-$HOME/.cache/rillet}"
mkdir -p "$RILLET_CACHE"
RILLET_CACHE="$(cd "$RILLET_CACHE" && pwd)"
export RILLET_CACHE

# The cheapest checks first: a formatting slip fails in seconds, not after a cold build.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "the tests need rustfmt and clippy: rustup component add rustfmt clippy" >&2
  exit 1
fi
echo "== cargo fmt --check"
(cd "$ROOT" && cargo fmt --all --check)

# tansu, a Kafka-protocol broker (crates.io), for the Kafka source and sink tests: built
# once into the cache (about 20 minutes cold), reused after. A cold build runs beside the
# engine's own, filling the cores that one long crate at a time leaves idle. It runs in a
# session of its own, ended if this script ends first, and under a lock, so that two runs
# never build into one target directory.
TANSU_LOG="$RILLET_CACHE/tansu-build.log"
tansu_pid=""
stop_tansu_build() {
  if [ -n "$tansu_pid" ]; then kill -- "-$tansu_pid" 2>/dev/null || true; fi
}
if ! command -v tansu >/dev/null && [ ! -x "$RILLET_CACHE/tools/bin/tansu" ]; then
  echo "== building the tansu Kafka broker into $RILLET_CACHE/tools (once, in the background)"
  setsid flock "$RILLET_CACHE/tansu.lock" bash -c '
    set -e
    [ -x "$RILLET_CACHE/tools/bin/tansu" ] && exit 0
    # opt-level 1: a broker for tests on loopback needs no more, and builds much faster.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_TARGET_DIR="$RILLET_CACHE/tansu-target" \
      cargo install tansu@0.6.0 --locked \
      --features dynostore --root "$RILLET_CACHE/tools"
    [ -x "$RILLET_CACHE/tools/bin/tansu" ] && rm -rf "$RILLET_CACHE/tansu-target"' \
    >"$TANSU_LOG" 2>&1 &
  tansu_pid=$!
  trap stop_tansu_build EXIT
fi

source "$ROOT/scripts/env.sh"
cd "$RILLET_ROOT"
# Every server the tests start is installed now: a missing one fails its tests, never skips.
export RILLET_REQUIRE_SERVERS=1
export PATH="$RILLET_CACHE/tools/bin:$PATH"
echo "== model weights (the AI operators' tests and the main job use them)"
python -m rillet.models
echo "== cargo clippy"
cargo clippy --workspace -q -- -D warnings
echo "== cargo test (build)"
cargo test --workspace --exclude rillet-python --no-run -q
if [ -n "$tansu_pid" ]; then
  echo "== waiting for the tansu build"
  if ! wait "$tansu_pid"; then
    tail -n 40 "$TANSU_LOG" >&2
    echo "building tansu failed (log: $TANSU_LOG)" >&2
    exit 1
  fi
  tansu_pid=""
fi
echo "== cargo test"
cargo test --workspace --exclude rillet-python
echo "== pytest"
python -m pytest python/tests python/rillet --doctest-modules -q
