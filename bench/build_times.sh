#!/usr/bin/env bash
# Cold build times of commits, measured one after the other on this machine: for each commit,
# a debug and a release build of the whole workspace (`cargo build --workspace --locked`, the
# extension crate included), each into a new empty target directory. The cargo registry stays
# as it is: downloading crates is not building them. Prints one Markdown table row per build
# (wall time, CPU time, compile units) and leaves cargo's timing report of each build in
# $OUT (default /tmp/rillet-build-times).
#
#   bash bench/build_times.sh 7dbc52c HEAD
#
# Nothing else should run on the machine meanwhile: each build uses every core.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/rillet-build-times}
mkdir -p "$OUT"
[ $# -gt 0 ] || { echo "usage: $0 COMMIT [COMMIT ...]" >&2; exit 2; }

echo "| commit | profile | wall | CPU (user + system) | units |"
echo "|---|---|---|---|---|"
for commit in "$@"; do
  sha=$(git -C "$ROOT" rev-parse --short "$commit")
  tree=$(mktemp -d)
  git -C "$ROOT" archive "$sha" | tar -x -C "$tree"
  for profile in dev release; do
    target=$(mktemp -d)
    log="$OUT/$sha-$profile.log"
    /usr/bin/time -f "%e %U %S" -o "$OUT/$sha-$profile.time" \
      cargo build --manifest-path "$tree/Cargo.toml" --workspace --locked --profile "$profile" \
      --target-dir "$target" --timings >"$log" 2>&1 \
      || { echo "$sha $profile: build failed, see $log" >&2; exit 1; }
    read -r wall user sys <"$OUT/$sha-$profile.time"
    units=$(grep -c '^ *Compiling ' "$log" || true)
    cp "$target"/cargo-timings/cargo-timing.html "$OUT/$sha-$profile-timing.html"
    printf '| %s | %s | %.1f min | %.1f min | %s |\n' "$sha" "$profile" \
      "$(echo "$wall / 60" | bc -l)" "$(echo "($user + $sys) / 60" | bc -l)" "$units"
    rm -rf "$target"
  done
  rm -rf "$tree"
done
