#!/usr/bin/env bash
# The main job: prepares real photos (from the scikit-image wheel) and generated Parquet
# metadata under ./demo-data, then runs a pipeline over them and writes ./demo-data/out.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$RILLET_ROOT"
python examples/prepare_demo_data.py demo-data
python examples/photo_pipeline.py demo-data
