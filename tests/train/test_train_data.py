"""Training pairs: folders by stem rule, manifests, COCO files; split; the load stage's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, SMALL_UNET, png_bytes

from raysegment.errors import InputSpecError
from raysegment.plugin.spec import resolve_model
from raysegment.train.data import TrainPair, list_pairs, load_pairs, parse_value_map, split_pairs

COCO_DIR = SHARED / "labelme_voc_instance_coco" / "data_dataset_coco"


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b", "c"):
        (images / f"{name}.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    for name in ("a", "b"):
        (masks / f"{name}_mask.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    return images, masks


def test_folders_pair_by_rule_and_report_the_unpaired(tmp_path: Path) -> None:
    images, masks = _folder(tmp_path)
    pairs, unpaired = list_pairs(str(images), str(masks), pair="{stem}_mask")
    assert [Path(p.mask).name for p in pairs] == ["a_mask.png", "b_mask.png"]
    assert unpaired == [(str(images / "c.png"), "no mask named c_mask.* under the mask folder")]
    with pytest.raises(InputSpecError, match="training set is empty"):
        list_pairs(str(images), str(masks))  # rule {stem} finds nothing
    with pytest.raises(ValueError, match="must contain"):
        list_pairs(str(images), str(masks), pair="mask")


def test_manifest_pairs(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image_uri,mask_uri\nimg/a.png,msk/a_mask.png\n")
    pairs, unpaired = list_pairs(str(tmp_path / "m.csv"))
    assert pairs == [TrainPair(str(tmp_path / "img/a.png"), str(tmp_path / "msk/a_mask.png"))] and not unpaired


def test_split_is_seeded_and_complete() -> None:
    pairs = [TrainPair(f"i{k}", f"m{k}") for k in range(10)]
    train, val = split_pairs(pairs, 0.3, seed=1)
    assert len(val) == 3 and sorted(train + val, key=lambda p: int(p.image[1:])) == pairs
    assert split_pairs(pairs, 0.3, seed=1) == (train, val) and split_pairs(pairs, 0.3, seed=2) != (train, val)


def test_value_map_parsing() -> None:
    assert parse_value_map("0:1,255:0") == {0: 1, 255: 0} and parse_value_map("") == {}
    with pytest.raises(ValueError, match="RAW:CLASS"):
        parse_value_map("0-1")


def test_coco_annotations_become_semantic_training_masks() -> None:
    if not COCO_DIR.is_dir():
        pytest.skip(f"shared data not present: {COCO_DIR}")
    pairs, unpaired = list_pairs(str(COCO_DIR / "JPEGImages"), str(COCO_DIR / "annotations.json"))
    assert len(pairs) == 3 and not unpaired and all(p.mask.startswith("coco+") for p in pairs)
    spec = resolve_model("unet", {**SMALL_UNET, "in_channels": 3, "num_classes": 21})
    rows = {"index": np.arange(3), "image_uri": np.array([p.image for p in pairs], dtype=object),
            "mask_uri": np.array([p.mask for p in pairs], dtype=object)}
    out = load_pairs(rows, spec=spec, value_map={})
    assert list(out["status"]) == ["ok"] * 3, list(out["error"])
    from raysegment.io.payload import unpack

    labels = set()
    for payload in out["payload"]:
        arrays = unpack(payload)
        assert arrays["target"].shape == arrays["image"].shape[1:]
        labels |= set(np.unique(arrays["target"]).tolist())
    assert {0, 15} <= labels <= {0, 5, 6, 7, 9, 15, 18}  # background, person, and the classes drawn
