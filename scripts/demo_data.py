"""Demo data and weights made on the spot: synthetic "EM-like" cells and a small U-Net.

Nothing is downloaded. Cells are a Voronoi tessellation with dark membranes,
per-cell brightness, blur and noise, a toy version of the ISBI 2012 EM task
the U-Net paper solved. The model is trained with a plain PyTorch loop
through the plugin contract (``encode_target`` / ``loss``), then saved as a
raysegment checkpoint that ``raysegment infer --checkpoint`` takes.

    python scripts/demo_data.py --out demo-output          # data + checkpoint
    python scripts/demo_data.py --out demo-output --score  # membrane IoU of the run's masks
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raysegment.masks.rle import row_label_map
from raysegment.output.root import read_output
from raysegment.plugin.checkpoint import save_checkpoint
from raysegment.plugin.registry import get_registry

PARAMS = {"depth": 3, "base_channels": 8, "batch_norm": True, "class_names": "cell,membrane"}


def cells(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 image, 0/1 membrane mask) pair."""
    n = int(rng.integers(12, 30) * (size / 128) ** 2)
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    owner = d.argmin(-1)
    edge = np.zeros((size, size), bool)
    edge[:-1] |= owner[:-1] != owner[1:]
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    membrane = F.max_pool2d(torch.from_numpy(edge).float()[None, None], 3, 1, 1)[0, 0].numpy() > 0
    image = rng.uniform(140, 220, n)[owner]
    image[membrane] = rng.uniform(30, 70)
    blurred = F.avg_pool2d(torch.from_numpy(image).float()[None, None], 3, 1, 1, count_include_pad=False)[0, 0].numpy()
    noisy = blurred + rng.normal(0, 12, blurred.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), membrane.astype(np.uint8)


def train(out: Path, steps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    info = get_registry().get("unet")
    plugin = info.create(PARAMS)
    module = plugin.build().train()
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    pool = [cells(128, rng) for _ in range(64)]
    start, losses = time.perf_counter(), []
    for step in range(steps):
        picks = rng.integers(0, len(pool), 8)
        x = torch.from_numpy(np.stack([pool[i][0] for i in picks]))[:, None].float() / 255.0
        y = torch.from_numpy(np.stack([plugin.encode_target(pool[i][1]) for i in picks]))
        loss = plugin.loss(plugin.forward(module, x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {np.mean(losses[-25:]):.4f}", flush=True)
    metrics = {"steps": steps, "final_loss": float(np.mean(losses[-25:])), "train_seconds": time.perf_counter() - start}
    save_checkpoint(str(out / "unet-cells.pt"), state_dict=module.state_dict(), plugin="unet",
                    plugin_version=info.version, params=plugin.params, class_names=plugin.class_names(),
                    metrics=metrics)
    return metrics


def write_images(out: Path, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, membrane = cells(size, rng)
        Image.fromarray(image).save(out / "images" / f"cells-{i:03d}.png")
        Image.fromarray(membrane * 255).save(out / "truth" / f"cells-{i:03d}.png")


def score(out: Path) -> None:
    """Pooled membrane IoU over every image (intersections and unions summed, not averaged)."""
    inter = union = 0
    for row in read_output(str(out / "masks")).to_pylist():
        if row["status"] != "ok":
            continue
        pred = row_label_map(row) == 1
        truth = np.asarray(Image.open(out / "truth" / Path(row["uri"]).name)) > 0
        inter += int((pred & truth).sum())
        union += int((pred | truth).sum())
    print(json.dumps({"membrane_iou": round(inter / max(union, 1), 4), "overlay": str(out / "overlay.png")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--images", type=int, default=48, help="images to segment")
    parser.add_argument("--size", type=int, default=256, help="their side in pixels")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", action="store_true", help="score an existing run instead")
    args = parser.parse_args()
    if args.score:
        score(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    write_images(args.out, args.images, args.size, args.seed)
    metrics = train(args.out, args.steps, args.seed)
    print(f"trained a U-Net {PARAMS} in {metrics['train_seconds']:.0f}s -> {args.out / 'unet-cells.pt'}")


if __name__ == "__main__":
    main()
