#!/usr/bin/env bash
# The test suite (CPU): unit tests of the network and an end-to-end run of the stock nnU-Net commands.
# Usage: bash scripts/test.sh [pytest options], e.g. -m "not e2e" for the fast part only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export nnUNet_def_n_proc=1 nnUNet_compile=f PYTHONUNBUFFERED=1
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 tests "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests were collected"; exit 1; }
exit $rc
