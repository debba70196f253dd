#!/usr/bin/env bash
# The test suite (CPU): unit tests of the network and an end-to-end run of the stock nnU-Net commands.
# Usage: bash scripts/test.sh [pytest options], e.g. -m "not e2e" for the fast part only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# a real head CT from Debian for tests/test_real_files.py (those tests skip without it, and fail under CI)
if ! dpkg -s invesalius-examples >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends invesalius-examples) >/dev/null \
      || echo "[danie-nnunet] could not install invesalius-examples"
  else
    echo "[danie-nnunet] invesalius-examples is not installed (sudo apt-get install invesalius-examples)"
  fi
fi
cd "$ROOT"
export nnUNet_def_n_proc=1 nnUNet_compile=f PYTHONUNBUFFERED=1
set +e
# a worker per core (pytest-xdist); tests/conftest.py keeps a module, and all users of the one trained model, together
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 -n "${DANIE_TEST_WORKERS:-auto}" --maxprocesses=4 \
  --dist loadfile tests "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests were collected"; exit 1; }
exit $rc
