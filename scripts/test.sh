#!/usr/bin/env bash
# Set up (if needed) and run the default test selection. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m slow` or `scripts/test.sh -m "slow or not slow"` for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
