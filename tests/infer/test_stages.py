"""The per-batch stages called directly (no Ray): every row keeps a status and a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import SMALL_UNET, png_bytes

from raysegment.infer.stages import PredictOptions, Predictor, decode_batch, encode_batch
from raysegment.io.decoders import DecodeLimits
from raysegment.io.payload import pack, unpack
from raysegment.plugin.padding import pad_to_multiple
from raysegment.plugin.spec import resolve_model
from raysegment.testing import check_model


def _items(paths: list[Path]) -> dict[str, np.ndarray]:
    return {"uri": np.array([str(p) for p in paths], dtype=object), "index": np.arange(len(paths)),
            "shard": np.zeros(len(paths), dtype=np.int32)}


def test_decode_predict_encode_keep_every_row(tmp_path: Path) -> None:
    spec = resolve_model("unet", SMALL_UNET)
    good = tmp_path / "a.png"
    good.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 255, (37, 45), dtype=np.uint8)))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"")
    decoded = decode_batch(_items([good, bad]), spec=spec, limits=DecodeLimits())
    assert list(decoded["status"]) == ["ok", "error"] and "empty" in decoded["error"][1]
    predicted = Predictor(spec, PredictOptions(threads=1))(decoded)
    assert unpack(predicted["payload"][0])["labels"].shape == (40, 48)  # padded to 2**depth
    table = encode_batch(predicted, spec=spec)
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert (rows[0]["height"], rows[0]["width"]) == (37, 45) and rows[1]["segments"] is None
    assert sum(s["area"] for s in rows[0]["segments"]) == 37 * 45


def test_a_prediction_of_the_wrong_size_is_an_error_row() -> None:
    spec = resolve_model("unet", SMALL_UNET)
    batch = {"uri": np.array(["x.png"], dtype=object), "index": np.array([0]), "shard": np.array([0]),
             "status": np.array(["ok"], dtype=object), "error": np.array([""], dtype=object),
             "height": np.array([20]), "width": np.array([30]), "meta": np.array([""], dtype=object),
             # the "model" produced 10x10 labels for a 20x30 input
             "payload": np.array([pack({"labels": np.zeros((10, 10), np.uint8)})], dtype=object)}
    row = encode_batch(batch, spec=spec).to_pylist()[0]
    assert row["status"] == "error" and "expected (20, 30)" in row["error"]


def test_all_null_text_columns_from_ray_are_tolerated() -> None:
    """Ray can hand an all-None object column back as floats (NaN); rows must still encode."""
    spec = resolve_model("unet", SMALL_UNET)
    batch = {"uri": np.array(["x.png"], dtype=object), "index": np.array([0]), "shard": np.array([0]),
             "status": np.array(["error"], dtype=object), "error": np.array(["bad"], dtype=object),
             "height": np.array([0]), "width": np.array([0]), "meta": np.array([np.nan], dtype=np.float32),
             "payload": np.array([b""], dtype=object)}
    row = encode_batch(batch, spec=spec).to_pylist()[0]
    assert row["meta"] is None and row["error"] == "bad"


def test_single_class_sigmoid_model_names_background_and_trains() -> None:
    results = check_model("unet", {**SMALL_UNET, "num_classes": 1, "class_names": "membrane"})
    assert all(r.ok for r in results), [(r.name, r.message) for r in results if not r.ok]
    spec = resolve_model("unet", {**SMALL_UNET, "num_classes": 1, "class_names": "membrane"})
    assert spec.label_names == ("background", "membrane")


def test_explicit_class_names_override_the_checkpoints(unet_checkpoint: str) -> None:
    assert resolve_model(None, checkpoint=unet_checkpoint).class_names == ("cell", "membrane")
    spec = resolve_model(None, {"class_names": "inside,border"}, checkpoint=unet_checkpoint)
    assert spec.class_names == ("inside", "border")


def test_pad_to_multiple_reflects_and_keeps_multiples() -> None:
    image = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    padded = pad_to_multiple(image, 4)
    assert padded.shape == (2, 8, 8) and np.array_equal(padded[:, :5, :7], image)
    assert pad_to_multiple(image[:, :4, :4], 4) is not None and pad_to_multiple(image[:, :4, :4], 4).shape == (2, 4, 4)
