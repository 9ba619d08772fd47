#!/usr/bin/env bash
# Create .venv and install raysegment, its test extras and the first-party plugins.
# Idempotent: skips pip when nothing it installs from has changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=.venv/.raysegment-installed
WANT=$(cat pyproject.toml constraints.txt plugins/*/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned by constraints.txt (the wheels this project is tested with)
.venv/bin/python -m pip install --quiet -c constraints.txt torch
# the core (editable, with test and S3 extras), then each plugin exactly as a third party installs it
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,s3,geo,medical]"
# in one call, so a plugin that needs the shared raysegment-backbones library finds it; deeplab
# with its [crf] extra (pydensecrf2, built from source: needs a C++ compiler)
PLUGINS=()
for plugin in plugins/*/; do
    [ "$plugin" = plugins/deeplab/ ] && plugin="./plugins/deeplab[crf]"
    PLUGINS+=("$plugin")
done
.venv/bin/python -m pip install --quiet -c constraints.txt "${PLUGINS[@]}"
echo "$WANT" > "$STAMP"
