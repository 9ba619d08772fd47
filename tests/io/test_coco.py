"""COCO annotations -> semantic masks (raysegment.io.coco): exact pixels, class ids, draw order, real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, png_bytes
from PIL import Image
from pycocotools import mask as mask_utils

from raysegment.io.coco import CocoSemantic, coco_ref, image_key, load_mask, parse_coco_ref

VOC = SHARED / "labelme_voc_instance_coco"
H, W = 6, 8

# Category ids are sparse on purpose (7 before 3 in the file): classes follow sorted ids.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "unused"}]

# A small crowd region given as uncompressed RLE (column-major counts): rows 2..3 of columns 2..3.
SMALL = np.zeros((H, W), np.uint8)
SMALL[2:4, 2:4] = 1
SMALL_RLE = {"size": [H, W], "counts": [2 * H + 2, 2, H - 2, 2, H * (W - 4) + 2]}


def synthetic() -> dict:
    # Polygon x in [1, 5), y in [1, 4): pycocotools fills pixels whose centres are inside.
    polygon = [[1, 1, 5, 1, 5, 4, 1, 4]]
    # The same cells as a compressed RLE string, on the second image.
    compressed = mask_utils.encode(np.asfortranarray(SMALL))["counts"].decode("ascii")
    return {
        "images": [
            {"id": 10, "file_name": "train/a.jpg", "height": H, "width": W},
            {"id": 11, "file_name": "b.png", "height": H, "width": W},
        ],
        "categories": CATEGORIES,
        "annotations": [
            # The small crowd region comes first in the file but must end up on top.
            {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 1, "segmentation": SMALL_RLE, "area": 4},
            {"id": 2, "image_id": 10, "category_id": 3, "iscrowd": 0, "segmentation": polygon, "area": 12},
            {"id": 3, "image_id": 11, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": compressed}, "area": 4},
        ],
    }


def test_uncompressed_rle_is_what_it_says() -> None:
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(SMALL_RLE, H, W)), SMALL)


def test_polygon_and_rle_masks_pixel_by_pixel() -> None:
    coco = CocoSemantic(synthetic())
    assert coco.class_names == ("background", "cat", "dog", "unused")
    assert coco.class_of_category == {3: 1, 7: 2, 12: 3}
    expected = np.zeros((H, W), np.uint8)
    expected[1:4, 1:5] = 1  # cat polygon (12 px)
    expected[2:4, 2:4] = 2  # dog crowd RLE (4 px) on top of it: smaller is painted last
    got = coco.mask_for(10)
    assert got.dtype == np.uint8 and got.shape == (H, W)
    assert np.array_equal(got, expected), got
    assert np.array_equal(coco.mask_for(11), SMALL * 2)


def test_draw_order_is_by_area_not_file_order() -> None:
    data = synthetic()
    data["annotations"] = data["annotations"][1::-1]  # polygon first this time
    assert np.array_equal(CocoSemantic(data).mask_for(10), CocoSemantic(synthetic()).mask_for(10))


def test_category_zero_is_background_and_ids_stay_contiguous() -> None:
    data = synthetic()
    data["categories"] = [{"id": 0, "name": "_background_"}, *CATEGORIES]
    coco = CocoSemantic(data)
    assert coco.class_names == ("_background_", "cat", "dog", "unused")
    assert sorted(coco.class_of_category.values()) == list(range(coco.num_classes))


def test_image_lookup_refs_and_errors(tmp_path: Path) -> None:
    coco = CocoSemantic(synthetic())
    assert coco.image_ids_by_file_name == {"a.jpg": 10, "b.png": 11}
    assert image_key("s3://bucket/x/a.jpg?v=1") == "a.jpg"
    ref = coco_ref("s3://b/ann#1.json", 10)
    assert parse_coco_ref(ref) == ("s3://b/ann#1.json", 10)
    assert parse_coco_ref("/masks/a.png") is None
    with pytest.raises(KeyError, match="no image with id 99"):
        coco.mask_for(99)
    dup = synthetic()
    dup["images"][1]["file_name"] = "other/a.jpg"
    with pytest.raises(ValueError, match="two images named 'a.jpg'"):
        CocoSemantic(dup)
    with pytest.raises(ValueError, match="COCO file not found"):
        CocoSemantic.load(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoSemantic.load(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON list"):
        CocoSemantic.load(str(tmp_path / "list.json"))


def test_load_mask_reads_refs_and_mask_images(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(synthetic()))
    assert np.array_equal(load_mask(coco_ref(str(path), 11)), SMALL * 2)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = SMALL * 9
    rgb[..., 1] = 200
    (tmp_path / "m.png").write_bytes(png_bytes(rgb))
    assert np.array_equal(load_mask(str(tmp_path / "m.png")), SMALL * 9)  # first band


@pytest.fixture(scope="module")
def voc() -> Path:
    if not (VOC / "data_dataset_coco" / "annotations.json").is_file():
        pytest.skip(f"shared data not present: {VOC} (../shared/data is checked out beside the repo in CI)")
    return VOC


def test_real_labelme_voc_coco_file(voc: Path) -> None:
    ann = voc / "data_dataset_coco" / "annotations.json"
    raw = json.loads(ann.read_text())
    coco = CocoSemantic.load(str(ann))
    assert len(coco.image_ids_by_file_name) == len(raw["images"]) == 3
    assert coco.num_classes == len(raw["categories"]) == 21  # category 0 is the background itself
    assert coco.class_names[0] == "_background_" and coco.class_names[15] == "person"
    matched, unmatched = coco.pairs(str(voc / "data_dataset_coco" / "JPEGImages"))
    assert unmatched == [] and sorted(i for _, i in matched) == [0, 1, 2]
    for uri, image_id in matched:
        mask = coco.mask_for(image_id)
        assert np.array_equal(load_mask(coco_ref(str(ann), image_id)), mask)
        # labelme also exported VOC class PNGs (same class numbers, 255 = ignore) from the
        # same polygons; they differ only along polygon edges, rasterised another way.
        voc_png = np.array(Image.open(voc / "data_dataset_voc" / "SegmentationClass" / (Path(uri).stem + ".png")))
        assert voc_png.shape == mask.shape
        keep = voc_png != 255
        assert set(np.unique(mask)) == set(np.unique(voc_png[keep]))
        assert (mask[keep] == voc_png[keep]).mean() > 0.99
