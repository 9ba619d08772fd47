#!/usr/bin/env bash
# Set up (if needed) and run every test, slow ones included (what CI runs). Arguments replace
# that selection and go to pytest, e.g. `scripts/test.sh -m "not slow"` for the fast default set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .  # lint and import order, configured in pyproject.toml
if [ "$#" -eq 0 ]; then
    set -- -m "slow or not slow"  # everything: CI runs this; plain `pytest` is the fast default selection
fi
exec .venv/bin/python -m pytest "$@"
