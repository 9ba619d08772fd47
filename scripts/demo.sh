#!/usr/bin/env bash
# The main job, end to end, with nothing but this repository:
#   synthetic cell images -> a small U-Net trained on the spot -> `raysegment infer`
#   (embedded local Ray) -> Parquet masks -> `raysegment show` overlay PNG -> summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
OUT=${DEMO_DIR:-demo-output}
python scripts/demo_data.py --out "$OUT"
raysegment infer "$OUT/images" "$OUT/masks" --checkpoint "$OUT/unet-cells.pt" --overwrite --batch-size 8
raysegment show "$OUT/masks" "$OUT/images/cells-000.png" --out "$OUT/overlay.png" --skip-label 0
python scripts/demo_data.py --out "$OUT" --score
