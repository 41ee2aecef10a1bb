#!/usr/bin/env bash
# Every test: Rust unit, integration and doc tests, then the Python suite.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RILLET_ROOT"
echo "== model weights (the AI operators' tests use them)"
python -m rillet.models
echo "== cargo test"
cargo test --workspace --exclude rillet-python
echo "== pytest"
python -m pytest python/tests python/rillet --doctest-modules -q
