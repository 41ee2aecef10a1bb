#!/usr/bin/env bash
# Run one benchmark with an optimised build: bash bench/run.sh engine_overhead.py [args]
set -euo pipefail
export RILLET_PROFILE="${RILLET_PROFILE:-release}"
source "$(dirname "$0")/../scripts/env.sh"
python -m pip install -q psutil onnxruntime==1.31.1 tokenizers scipy mutagen
cd "$RILLET_ROOT"
python "bench/$1" "${@:2}"
