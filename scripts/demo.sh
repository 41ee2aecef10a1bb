#!/usr/bin/env bash
# The main job: prepares real media under ./demo-data (photos and texts from PyPI wheels,
# speech from espeak-ng, videos from ffmpeg), then runs the multimodal pipeline over them
# and writes Parquet under ./demo-data/out.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RILLET_ROOT"
python examples/prepare_demo_data.py demo-data
python examples/multimodal_pipeline.py demo-data
