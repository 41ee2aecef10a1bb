#!/usr/bin/env bash
# Fuzz the decode paths (image, audio, video, PDF) and the engine's own decoders (worker
# frames, checkpoint manifests, operator state) for a given time per target:
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET ...]
#
# Targets: image_decode audio_decode video_decode pdf_text worker_frames checkpoint_manifest
# operator_state (default: all). Seeds are the sample media of rillet.dev.datasets when the
# Python environment is there, and the committed corpora in fuzz/corpus/<target>/, which the
# normal tests replay (rillet_common::fuzzing); crashes land in fuzz/artifacts/<target>/ and
# make the script fail: fix each, then copy it into fuzz/corpus/<target>/ so CI replays it. On a stable toolchain it runs with
# coverage but no sanitizer (`-s none`); with a nightly toolchain it uses AddressSanitizer.
# Not part of CI's test step (it builds an instrumented copy of the engine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(image_decode audio_decode video_decode pdf_text worker_frames
                                     checkpoint_manifest operator_state)
export RILLET_CACHE="${RILLET_CACHE:-$HOME/.cache/rillet}"
# Its own target directory: the instrumented build must not evict the normal one.
export CARGO_TARGET_DIR="$RILLET_CACHE/fuzz-target"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
SANITIZER=(-s none)
if rustc --version | grep -q nightly; then SANITIZER=(-s address); fi

CORPUS="$RILLET_CACHE/fuzz-corpus"
if [ -x "$RILLET_CACHE/venv/bin/python" ] && [ ! -d "$CORPUS/image_decode" ]; then
  echo "== seeding corpora from the sample media"
  PYTHONPATH="$ROOT/python" "$RILLET_CACHE/venv/bin/python" - "$CORPUS" <<'PY'
import shutil, sys
from pathlib import Path
from rillet.dev import datasets
corpus = Path(sys.argv[1])
seeds = {
    "image_decode": [p for p in datasets.sample_photos() if p.stat().st_size < 200_000],
    "audio_decode": datasets.sample_speech(),
    "video_decode": datasets.sample_videos(count=1, seconds=1),
}
for target, paths in seeds.items():
    (corpus / target).mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, corpus / target / path.name)
(corpus / "pdf_text").mkdir(parents=True, exist_ok=True)
try:
    import fpdf
    doc = fpdf.FPDF(); doc.set_font("Helvetica", size=12); doc.add_page(); doc.multi_cell(0, 10, "Seed page.")
    (corpus / "pdf_text" / "seed.pdf").write_bytes(bytes(doc.output()))
except ImportError:
    pass
PY
fi

cd "$ROOT/fuzz"
FAILED=()
for target in "${TARGETS[@]}"; do
  mkdir -p "$CORPUS/$target"
  # New inputs go to the first directory (the cache); the committed corpus only seeds.
  SEEDS=()
  [ -d "$ROOT/fuzz/corpus/$target" ] && SEEDS=("$ROOT/fuzz/corpus/$target")
  echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
  if ! cargo fuzz run "${SANITIZER[@]}" "$target" "$CORPUS/$target" "${SEEDS[@]}" -- \
      -max_total_time="$SECONDS_PER_TARGET" -max_len=1048576 -rss_limit_mb=4096 -timeout=30; then
    FAILED+=("$target")
  fi
done
# Fuzz builds abort on any panic (libFuzzer's panic hook), so a panic that the engine
# contains with catch_unwind (pdf-extract's, see crates/rillet-functions/src/pdf.rs) is
# still reported here: check each artifact against the engine before calling it a bug.
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "== crashes in: ${FAILED[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
echo "== no crashes"
