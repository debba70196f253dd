#!/usr/bin/env bash
# The demo: synthetic CT volumes -> nnU-Net plan/preprocess -> DANIE training -> prediction -> metrics + overlays.
# Usage: bash scripts/demo.sh [OUT_DIR] [extra `danie-nnunet demo` options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
out=${1:-demo_out}
shift || true
exec "$VENV/bin/danie-nnunet" demo --out "$out" "$@"
