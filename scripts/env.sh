#!/usr/bin/env bash
# Creates or updates the virtual environment ($DANIE_VENV, default .venv) with the pinned dependencies and this
# package (editable). Sourced by demo.sh and test.sh; sets VENV. Reinstalls only when requirements change.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DANIE_VENV:-$ROOT/.venv}
REQ=$ROOT/requirements-pinned.txt
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.danie-requirements" 2>/dev/null)" != "$want" ]; then
  echo "[danie-nnunet] installing the pinned environment into $VENV (first time: a few minutes, ~6 GB)"
  "${PYTHON:-python3}" -m venv "$VENV"
  # (this machine's pip configuration names local package folders that may not exist: drop those warnings)
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$VENV/.danie-requirements"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$ROOT"
export VENV
