#!/usr/bin/env bash
# Every test: Rust unit, integration and doc tests, then the Python suite.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RILLET_ROOT"
echo "== model weights (the AI operators' tests use them)"
python -m rillet.models
# tansu, a Kafka-protocol broker (crates.io), for the Kafka source tests: built once into
# the cache (about 20 minutes cold), reused after.
if ! command -v tansu >/dev/null && [ ! -x "$RILLET_CACHE/tools/bin/tansu" ]; then
  echo "== building the tansu Kafka broker into $RILLET_CACHE/tools (once)"
  CARGO_TARGET_DIR="$RILLET_CACHE/tansu-target" cargo install tansu@0.6.0 --locked \
    --features dynostore,postgres --root "$RILLET_CACHE/tools" -q
  rm -rf "$RILLET_CACHE/tansu-target"
fi
echo "== cargo test"
cargo test --workspace --exclude rillet-python
echo "== pytest"
python -m pytest python/tests python/rillet --doctest-modules -q
