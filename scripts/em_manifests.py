"""Write the ISBI 2012 EM train/validation manifests used in the README's training run.

Slices 0-24 train, 25-29 validate, as in the training issue. The data stays in
``../shared/data/isbi2012_em_membrane`` (not redistributable here); the
manifests only point at it.

    python scripts/em_manifests.py --out em   # -> em/train.csv, em/val.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em_membrane" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--out", type=Path, default=Path("em"))
    args = parser.parse_args()
    if not (args.data / "image").is_dir():
        raise SystemExit(f"error: no EM data at {args.data} (expected ../shared/data beside the repository)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", range(0, 25)), ("val", range(25, 30))):
        with open(args.out / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_uri", "mask_uri"])
            for i in ids:
                writer.writerow([str(args.data / "image" / f"{i}.png"), str(args.data / "label" / f"{i}.png")])
    print(f"wrote {args.out / 'train.csv'} (25 pairs) and {args.out / 'val.csv'} (5 pairs)")


if __name__ == "__main__":
    main()
