#!/usr/bin/env bash
# Every failpoint in the code must be named by a test (RELIABILITY.md: a failpoint no test
# turns on guards nothing). A name counts as used when it appears quoted somewhere besides
# its own `fail_point!` line: in a `fail::cfg(...)` call or a test's table of failpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=0
names=$(grep -rhoE 'fail_point!\(\s*"[a-z0-9-]+"' crates --include=*.rs | sed -E 's/.*"([^"]+)"/\1/' | sort -u)
for name in $names; do
  uses=$(grep -rF "\"$name\"" crates --include=*.rs | grep -vc "fail_point!" || true)
  if [ "$uses" -eq 0 ]; then
    echo "failpoint $name is never turned on by a test"
    missing=1
  fi
done
echo "failpoints: $(echo "$names" | wc -w) declared, each named by a test: $([ $missing = 0 ] && echo yes || echo no)"
exit $missing
