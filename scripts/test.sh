#!/usr/bin/env bash
# Set up (if needed) and run the fast test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh .venv takes about 7 GB; the suite's corpus, checkpoints and pytest's temporary
# folders about 1 GB more. A full disk fails deep inside a test (a checkpoint half written),
# so check first.
need_gb=2
[ -x .venv/bin/python ] || need_gb=9
for dir in . "${TMPDIR:-/tmp}"; do
  free_gb=$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "error: $(cd "$dir" && pwd) has ${free_gb} GB free, the tests need about ${need_gb} GB: free some space (old clones with their .venv, ${TMPDIR:-/tmp}/pytest-of-$(id -un)) and run again"
    exit 2
  fi
done
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
