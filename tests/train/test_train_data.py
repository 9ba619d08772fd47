"""Training pairs: folders by stem rule, manifests, COCO files; split; the load stage's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, SMALL_UNET, png_bytes

from raysegment.errors import InputSpecError
from raysegment.plugin.spec import resolve_model
from raysegment.train.data import TrainPair, fill_to_workers, list_pairs, load_pairs, parse_value_map, split_pairs

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


HIPPO = SHARED / "msd_task04_hippocampus"


def test_volume_pairs_decode_by_modality_and_batch_padded() -> None:
    """unet3d pairs are NIfTI volumes with label volumes (003's label is float32); a label of another
    case is an error row; volumes of different sizes share a batch, padded with ignore_index."""
    if not HIPPO.is_dir():
        pytest.skip(f"shared data not present: {HIPPO}")
    image = [str(HIPPO / "imagesTr" / f"hippocampus_{c}.nii.gz") for c in ("003", "004", "006")]
    label = [str(HIPPO / "labelsTr" / f"hippocampus_{c}.nii.gz") for c in ("003", "004", "004")]
    spec = resolve_model("unet3d", {"in_channels": 1, "depth": 2, "base_channels": 4})
    rows = {"index": np.arange(3), "image_uri": np.array(image, dtype=object), "mask_uri": np.array(label, dtype=object)}
    out = load_pairs(rows, spec=spec, value_map={})
    assert list(out["status"]) == ["ok", "ok", "error"]
    assert out["error"][2].startswith("mask is ") and "but its volume is" in out["error"][2]
    from raysegment.io.payload import unpack
    from raysegment.train.augment import AugmentConfig
    from raysegment.train.loop import Collate

    arrays = [unpack(p) for p in out["payload"][:2]]
    shapes = [a["target"].shape for a in arrays]
    assert shapes[0] != shapes[1] and all(a["image"].shape[1:] == a["target"].shape for a in arrays)
    assert {int(v) for a in arrays for v in np.unique(a["target"])} == {0, 1, 2}
    batch = Collate(AugmentConfig.none(), 0, 0, 4, 255)({"index": np.arange(2), "payload": out["payload"][:2]})
    want = tuple(-(-max(s) // 4) * 4 for s in zip(*shapes))
    assert tuple(batch["image"].shape) == (2, 1, *want) and tuple(batch["target"].shape) == (2, *want)
    for i, shape in enumerate(shapes):
        inside = tuple(slice(0, n) for n in shape)
        np.testing.assert_array_equal(batch["target"][i][inside].numpy(), arrays[i]["target"])
        assert int((batch["target"][i] != 255).sum()) == int(np.prod(shape))  # padding is ignored


def test_fill_to_workers_keeps_every_item() -> None:
    rows = [{"index": i} for i in range(5)]
    assert [r["index"] for r in fill_to_workers(rows, 2)] == [0, 1, 2, 3, 4, 0]
    assert [r["index"] for r in fill_to_workers(rows, 4)] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert [r["index"] for r in fill_to_workers(rows, 5)] == [0, 1, 2, 3, 4]
    assert [r["index"] for r in fill_to_workers(rows[:1], 3)] == [0, 0, 0] and fill_to_workers([], 2) == []


def test_the_data_check_counts_class_pixels_and_ignored_ones(tmp_path: Path) -> None:
    from raysegment.train.training import balanced_weights

    spec = resolve_model("unet", {**SMALL_UNET, "num_classes": 3}, warn_random=False)
    mask = np.zeros((8, 8), np.uint8)
    mask[:2] = 1
    mask[2, :3] = 255  # ignored
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    (tmp_path / "a_mask.png").write_bytes(png_bytes(mask))
    batch = {"index": np.arange(1), "image_uri": np.array([str(tmp_path / "a.png")], dtype=object),
             "mask_uri": np.array([str(tmp_path / "a_mask.png")], dtype=object)}
    out = load_pairs(batch, spec=spec, value_map={}, keep_arrays=False)
    assert out["status"][0] == "ok" and out["class_pixels"][0].tolist() == [64 - 16 - 3, 16, 0]
    assert out["ignored"][0] == 3
    weights = balanced_weights(out["class_pixels"][0])
    assert weights == pytest.approx((61 / (2 * 45), 61 / (2 * 16), 0.0))  # total / (present classes x pixels)
