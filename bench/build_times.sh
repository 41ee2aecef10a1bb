#!/usr/bin/env bash
# Cold build times of commits, measured one after the other on this machine: for each commit,
# a debug and a release build of the whole workspace (`cargo build --workspace --locked`, the
# extension crate included, as a plain cdylib), each into a new empty target directory. The
# crates are fetched before the clock starts: downloading them is not building them. Nothing
# of the caller's compiler set-up (wrappers, flags) comes along. Prints one Markdown table row
# per build (wall time, CPU time, cargo's compile units) and leaves cargo's timing report of
# each build in $OUT (default /tmp/rillet-build-times).
#
#   bash bench/build_times.sh 7dbc52c HEAD
#
# Nothing else should run on the machine meanwhile: each build uses every core.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/rillet-build-times}
mkdir -p "$OUT"
[ $# -gt 0 ] || { echo "usage: $0 COMMIT [COMMIT ...]" >&2; exit 2; }
tree="" target=""
trap 'rm -rf "$tree" "$target"' EXIT

echo "| commit | profile | wall | CPU (user + system) | units |"
echo "|---|---|---|---|---|"
for commit in "$@"; do
  sha=$(git -C "$ROOT" rev-parse --short "$commit")
  tree=$(mktemp -d)
  git -C "$ROOT" archive "$sha" | tar -x -C "$tree"
  (cd "$tree" && cargo fetch --locked -q)
  for profile in dev release; do
    target=$(mktemp -d)
    log="$OUT/$sha-$profile.log"
    (cd "$tree" && env -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER -u RUSTFLAGS \
      /usr/bin/time -f "%e %U %S" -o "$OUT/$sha-$profile.time" \
      cargo build --workspace --locked --profile "$profile" --target-dir "$target" --timings \
      >"$log" 2>&1) || { echo "$sha $profile: build failed, see $log" >&2; exit 1; }
    read -r wall user sys <"$OUT/$sha-$profile.time"
    report="$OUT/$sha-$profile-timing.html"
    cp "$target"/cargo-timings/cargo-timing.html "$report"
    units=$(grep -o 'Total units:</td><td>[0-9]*' "$report" | grep -o '[0-9]*$' || echo "?")
    printf '| %s | %s | %.1f min | %.1f min | %s |\n' "$sha" "$profile" \
      "$(echo "$wall / 60" | bc -l)" "$(echo "($user + $sys) / 60" | bc -l)" "$units"
    rm -rf "$target"
  done
  rm -rf "$tree"
done
