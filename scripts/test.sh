#!/usr/bin/env bash
# Every test: formatting, clippy's lints (on every build of the workspace's crates here),
# Rust unit, integration and doc tests, then the Python suite (which includes the check that
# the type stubs match the extension).
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

# A cargo subcommand from crates.io (NAME@VERSION), built once into the cache's tools,
# unoptimised: a check that runs for seconds is not worth minutes of optimising on a cold
# machine (cargo-deny: 1.9 minutes to build and 5.5 s to run, against about 5 minutes and
# 1.4 s optimised).
cached_tool() {
  local name="${1%@*}"
  if [ ! -x "$RILLET_CACHE/tools/bin/$name" ]; then
    echo "== building $name into $RILLET_CACHE/tools (once)"
    CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
      CARGO_TARGET_DIR="$RILLET_CACHE/$name-target" \
      cargo install "$1" --locked --root "$RILLET_CACHE/tools" --quiet
    rm -rf "$RILLET_CACHE/$name-target"
  fi
}

# Unused dependencies cost build time: cargo-machete (half a minute cold) finds a
# crate's dependency its source never names.
cached_tool cargo-machete@0.9.2
echo "== cargo machete (unused dependencies)"
(cd "$ROOT" && "$RILLET_CACHE/tools/bin/cargo-machete")

# Licenses (permissive only), banned crates and where crates come from (crates.io only),
# by cargo-deny (about 2 minutes cold). Its advisories check needs the RustSec database
# from GitHub, which these machines cannot reach: run `cargo deny check advisories` by
# hand where it can.
cached_tool cargo-deny@0.20.2
echo "== cargo deny check licenses bans sources"
(cd "$ROOT" && "$RILLET_CACHE/tools/bin/cargo-deny" --log-level error check licenses bans sources)

# tansu, a Kafka-protocol broker (crates.io), for the Kafka source and sink tests: built
# once into the cache (about 6 minutes cold), reused after. A cold build runs beside the
# engine's own at a lower priority, filling the cores that one long crate at a time leaves
# idle without slowing the engine's build. It runs in a session of its own, ended if this
# script ends first, and under a lock, so that two runs never build into one target
# directory.
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
    # Unoptimised: 6 minutes on 2 cores instead of 20; a broker for tests on loopback
    # needs no more (the Kafka kill sweep takes 20 s against it, 8 s against -O3).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
      CARGO_TARGET_DIR="$RILLET_CACHE/tansu-target" \
      nice -n 10 cargo install tansu@0.6.0 --locked \
      --features dynostore --root "$RILLET_CACHE/tools"
    [ -x "$RILLET_CACHE/tools/bin/tansu" ] && rm -rf "$RILLET_CACHE/tansu-target"' \
    >"$TANSU_LOG" 2>&1 &
  tansu_pid=$!
  trap stop_tansu_build EXIT
fi

# The lints ride along with the builds: clippy-driver compiles the workspace's own crates
# (the extension, the libraries and every test target) and stops on any warning, so no
# separate `cargo clippy` pass checks every dependency again (5 minutes cold). CLIPPY_ARGS
# is how cargo-clippy hands its arguments to the driver; a probe with a known lint proves
# the driver still reads it, so the gate cannot quietly open.
export RUSTC_WORKSPACE_WRAPPER=clippy-driver
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
echo "== clippy gate probe"
probe_dir="$(mktemp -d)"
printf 'pub fn probe(v: &Vec<u8>) -> usize {\n    v.len()\n}\n' >"$probe_dir/probe.rs"
probe_rc=0
probe_out="$(clippy-driver --edition 2024 --crate-type lib --emit=metadata \
  -o "$probe_dir/probe.rmeta" "$probe_dir/probe.rs" 2>&1)" || probe_rc=$?
if [ "$probe_rc" = 0 ] || ! grep -q 'ptr.arg' <<<"$probe_out"; then
  echo "$probe_out" >&2
  echo "clippy-driver did not stop a known lint (ptr_arg) with CLIPPY_ARGS=$CLIPPY_ARGS," \
    "so the lint gate would let warnings through: fix scripts/test.sh (meanwhile," \
    "cargo clippy --workspace --all-targets -- -D warnings lints the same code)" >&2
  exit 1
fi
rm -rf "$probe_dir"

source "$ROOT/scripts/env.sh"
cd "$RILLET_ROOT"
# Every server the tests start is installed now: a missing one fails its tests, never skips.
export RILLET_REQUIRE_SERVERS=1
export PATH="$RILLET_CACHE/tools/bin:$PATH"
echo "== model weights (the AI operators' tests and the main job use them)"
python -m rillet.models
echo "== cargo test (build, linted by clippy)"
cargo test --workspace --exclude rillet-python --no-run -q ${RILLET_TIMINGS:+--timings}
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
# The `candle` feature (BERT checkpoints on candle) is off in every default build; its tests,
# candle's vectors against ONNX Runtime's, run with RILLET_TEST_CANDLE=1 (candle's cold build
# is minutes CI does not spend by default).
if [ -n "${RILLET_TEST_CANDLE:-}" ]; then
  echo "== cargo test --features rillet-ai/candle (text encoders)"
  cargo test --workspace --exclude rillet-python --lib --features rillet-ai/candle embed::
fi
echo "== pytest"
python -m pytest python/tests python/rillet --doctest-modules -q
