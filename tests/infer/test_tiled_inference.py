"""Tiled sliding-window inference end to end: real Ray, real GeoTIFFs, real Parquet and COG.

One tiled run over a folder of awkward scenes (the real Landsat scene with its
rotated nodata footprint, a scene smaller than one tile, a raster without CRS, an
all-nodata raster, a truncated TIFF, a band count the model cannot take), and one
untiled run of the same model for the seam test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from geo_fixtures import LANDSAT
from PIL import Image

from raysegment.cli import main
from raysegment.infer.stages import PredictOptions, Predictor
from raysegment.infer.tiled_stages import Tiling, plan_scene_windows, read_windows, scene_plan
from raysegment.io.decoders import DecodeLimits
from raysegment.io.payload import unpack
from raysegment.masks.rle import row_label_map
from raysegment.output.root import read_output
from raysegment.plugin.checkpoint import save_checkpoint
from raysegment.plugin.padding import pad_to_multiple
from raysegment.plugin.registry import get_registry
from raysegment.plugin.spec import resolve_model
from raysegment.tiling.merge import ArrayMerger

rasterio = pytest.importorskip("rasterio", reason="tiled GeoTIFF tests need raysegment[geo]")

#: Receptive field about +-10 px: smaller than the margin (overlap / 4 = 16 px) of TILING.
SMALL_RF_UNET = {"depth": 1, "base_channels": 4, "in_channels": 3, "num_classes": 3}
TILE, OVERLAP = 128, 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    info = get_registry().get("unet")
    plugin = info.create(SMALL_RF_UNET)
    torch.manual_seed(3)
    module = plugin.build()
    path = tmp_path_factory.mktemp("tiled-ckpt") / "unet-d1.pt"
    save_checkpoint(str(path), state_dict=module.state_dict(), plugin="unet", plugin_version=info.version,
                    params=plugin.params, class_names=["water", "land", "cloud"])
    return str(path)


def _geotiff(path: Path, data: np.ndarray, crs: str | None, nodata: float | None) -> Path:
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0],
               "dtype": data.dtype.name, "transform": from_origin(500000.0, 4100000.0, 10.0, 10.0)}
    if crs:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    shutil.copy(LANDSAT, folder / "a-landsat.tif")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(folder / "b-small.png")
    _geotiff(folder / "c-no-crs.tif", rng.integers(1, 255, (3, 150, 211), dtype=np.uint8), None, None)
    _geotiff(folder / "d-all-nodata.tif", np.zeros((3, 140, 160), dtype=np.uint8), "EPSG:32633", 0)
    data = LANDSAT.read_bytes()
    (folder / "e-truncated.tif").write_bytes(data[: len(data) // 2])
    _geotiff(folder / "f-one-band.tif", rng.integers(0, 255, (1, 90, 90), dtype=np.uint8), "EPSG:4326", None)
    return folder


def _infer(args: list[str]) -> object:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def tiled(scenes: Path, checkpoint: str, ray_local, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiled") / "out"
    result = _infer(["infer", str(scenes), str(out), "-c", checkpoint, "--tile", str(TILE), "--overlap",
                     str(OVERLAP), "--mask-raster", "--polygons", "--batch-size", "4"])
    assert result.exit_code == 3, result.output  # some scenes are bad on purpose
    rows = {Path(r["uri"]).name: r for r in read_output(str(out)).to_pylist()}
    return out, rows


@pytest.fixture(scope="module")
def untiled(scenes: Path, checkpoint: str, ray_local, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("whole")
    for name in ("a-landsat.tif", "b-small.png"):
        shutil.copy(scenes / name, folder / name)
    out = tmp_path_factory.mktemp("untiled") / "out"
    result = _infer(["infer", str(folder), str(out), "-c", checkpoint])
    assert result.exit_code == 0, result.output
    return {Path(r["uri"]).name: r for r in read_output(str(out)).to_pylist()}


def test_every_scene_has_one_row_and_bad_ones_say_why(tiled: tuple[Path, dict]) -> None:
    _, rows = tiled
    assert sorted(rows) == ["a-landsat.tif", "b-small.png", "c-no-crs.tif", "d-all-nodata.tif",
                            "e-truncated.tif", "f-one-band.tif"]
    status = {name: r["status"] for name, r in rows.items()}
    assert status == {"a-landsat.tif": "ok", "b-small.png": "ok", "c-no-crs.tif": "ok", "d-all-nodata.tif": "ok",
                      "e-truncated.tif": "error", "f-one-band.tif": "error"}
    assert "truncat" in rows["e-truncated.tif"]["error"].lower() or "corrupt" in rows["e-truncated.tif"]["error"].lower()
    assert "band" in rows["f-one-band.tif"]["error"]


def test_landsat_keeps_its_crs_and_transform_exactly(tiled: tuple[Path, dict]) -> None:
    _, rows = tiled
    row = rows["a-landsat.tif"]
    with rasterio.open(LANDSAT) as src:
        assert row["crs"] == "EPSG:32618" == f"EPSG:{src.crs.to_epsg()}"
        assert tuple(row["transform"]) == tuple(src.transform)[:6]
        assert tuple(row["bounds"]) == tuple(src.bounds)
        assert row["nodata"] == src.nodata == 0
        assert (row["height"], row["width"]) == (src.height, src.width)
    meta = json.loads(row["meta"])
    assert meta["format"] == "GeoTIFF" or meta["format"] == "COG"
    assert meta["tiling"]["tile"] == [TILE, TILE] and meta["tiling"]["overlap"] == [OVERLAP, OVERLAP]


def test_tiled_masks_equal_untiled_where_the_scene_has_data(tiled: tuple[Path, dict], untiled: dict) -> None:
    _, rows = tiled
    for name in ("a-landsat.tif", "b-small.png"):
        got = row_label_map(rows[name])
        want = row_label_map(untiled[name])
        if name == "a-landsat.tif":
            with rasterio.open(LANDSAT) as src:
                valid = src.dataset_mask() > 0
            assert (got[~valid] == -1).all(), "nodata pixels must belong to no segment"
            assert valid.mean() < 0.8 and (got[valid] >= 0).all()
        else:
            valid = np.ones_like(got, dtype=bool)
        assert np.array_equal(got[valid], want[valid]), f"{name}: {(got[valid] != want[valid]).sum()} pixels differ"


def test_small_scenes_odd_sizes_no_crs_and_all_nodata(tiled: tuple[Path, dict]) -> None:
    _, rows = tiled
    small = rows["b-small.png"]
    assert (small["height"], small["width"]) == (37, 53)
    assert json.loads(small["meta"])["tiling"]["windows"] == 1
    assert small["crs"] is None and small["transform"] is None
    no_crs = rows["c-no-crs.tif"]
    assert no_crs["crs"] is None and no_crs["transform"] is not None and (no_crs["height"], no_crs["width"]) == (150, 211)
    assert sum(s["area"] for s in no_crs["segments"]) == 150 * 211
    empty = rows["d-all-nodata.tif"]
    tiling = json.loads(empty["meta"])["tiling"]
    assert empty["segments"] == [] and tiling["windows_skipped"] == tiling["windows"] > 1


def test_mask_raster_is_a_cog_in_the_source_grid(tiled: tuple[Path, dict]) -> None:
    out, rows = tiled
    row = rows["a-landsat.tif"]
    path = out / json.loads(row["meta"])["files"]["mask_raster"]
    with rasterio.open(path) as cog, rasterio.open(LANDSAT) as src:
        assert cog.crs == src.crs and cog.transform == src.transform
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        labels = cog.read(1)
    want = row_label_map(row)
    assert np.array_equal(labels[want >= 0], want[want >= 0]) and (labels[want < 0] == cog.nodata).all()


def test_polygons_are_geoparquet_in_the_source_crs(tiled: tuple[Path, dict]) -> None:
    geopandas = pytest.importorskip("geopandas")
    out, rows = tiled
    row = rows["a-landsat.tif"]
    frame = geopandas.read_parquet(out / json.loads(row["meta"])["files"]["polygons"])
    assert frame.crs.to_epsg() == 32618
    assert len(frame) > 0 and set(frame["label"]) <= {1, 2}  # background (0) is left out
    pixel_area = abs(row["transform"][0] * row["transform"][4])
    for label in set(frame["label"]):
        seg = next(s for s in row["segments"] if s["label"] == label)
        assert frame.loc[frame["label"] == label, "area"].sum() == pytest.approx(seg["area"] * pixel_area)


def test_sidecar_files_do_not_break_reading_the_output_as_a_dataset(tiled: tuple[Path, dict]) -> None:
    import pandas as pd

    out, _ = tiled
    frame = pd.read_parquet(out)
    assert len(frame) == 6 and set(frame["status"]) == {"ok", "error"}


def test_tiled_logits_equal_untiled_logits(checkpoint: str) -> None:
    """The seam test on logits: blended windows of a small-receptive-field model = one whole pass."""
    spec = resolve_model(None, {}, checkpoint, {})
    tiling = Tiling.resolve(spec.plugin(), TILE, OVERLAP)
    batch = {"uri": np.array([str(LANDSAT)], dtype=object), "index": np.array([0]), "shard": np.array([0], np.int32)}
    windows = read_windows(plan_scene_windows(batch, spec=spec, tiling=tiling, limits=DecodeLimits()),
                           spec=spec, limits=DecodeLimits())
    predicted = Predictor(spec, PredictOptions(tiled=True))(windows)
    with rasterio.open(LANDSAT) as src:
        image = src.read()
        valid = src.dataset_mask() > 0
    plan = scene_plan(image.shape[1:], tiling)
    merger = ArrayMerger(plan, 3, margin=tiling.margin[::-1])
    skipped = 0
    for status, w, payload, mask in zip(predicted["status"], predicted["window"], predicted["payload"],
                                        predicted["valid"]):
        if status == "skip":
            merger.skip(plan.windows[w])
            skipped += 1
            continue
        assert status == "ok"
        logits = unpack(payload)["logits"].transpose(0, 2, 1)
        merger.aggregate(plan.windows[w], logits, unpack(mask)["valid"].T if mask else None)
    merged, covered = merger.finalize()
    merged, covered = merged.transpose(0, 2, 1), covered.T
    padded = pad_to_multiple(spec.plugin().preprocess(_sample(image)), spec.plugin().size_divisor)
    whole = Predictor(spec, PredictOptions(tiled=True))._run([padded], [image.shape[1:]])[0]["logits"]
    assert skipped > 0, "the rotated footprint leaves all-nodata windows to skip"
    assert np.array_equal(covered, valid)
    np.testing.assert_allclose(merged[:, valid], whole[:, valid], atol=1e-4)


def _sample(image: np.ndarray):
    from raysegment.plugin.contract import Sample

    return Sample(np.ascontiguousarray(np.moveaxis(image, 0, -1)), meta={})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tile", "64", "--overlap", "40"], "at least twice"),
        (["--tile", "64", "--overlap", "0"], "must be positive"),
        (["--tile", "64", "--overlap", "-4"], "must be positive"),
        (["--overlap", "8"], "pass --tile"),
        (["--polygons"], "pass --tile"),
        (["--tile", "63"], "multiple of the model's size divisor 2"),
        (["--tile", "64,64,64"], "3 values"),
        (["--tile", "sixty"], "integer"),
    ],
)
def test_bad_tiling_options_are_one_line_errors(extra: list[str], message: str, scenes: Path, checkpoint: str,
                                                tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["infer", str(scenes), str(tmp_path / "out"), "-c", checkpoint, *extra])
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error") or "Error" in line]
    assert len(lines) == 1


def test_scenes_stream_from_s3_and_outputs_land_on_s3(s3_bucket: str, checkpoint: str, ray_local) -> None:
    """Range reads of a GeoTIFF through s3fs (moto), Parquet and the COG mask written back to S3."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(LANDSAT), f"{s3_bucket}/scenes/landsat.tif")
    out = f"s3://{s3_bucket}/out"
    result = _infer(["infer", f"s3://{s3_bucket}/scenes/", out, "-c", checkpoint, "--tile", "256", "--overlap", "64",
                     "--mask-raster"])
    assert result.exit_code == 0, result.output
    (row,) = read_output(out).to_pylist()
    assert row["uri"] == f"s3://{s3_bucket}/scenes/landsat.tif" and row["crs"] == "EPSG:32618"
    with rasterio.open(LANDSAT) as src:
        assert tuple(row["transform"]) == tuple(src.transform)[:6]
    mask = json.loads(row["meta"])["files"]["mask_raster"]
    with fs.open(f"{s3_bucket}/out/{mask}", "rb") as f, rasterio.open(f) as cog:
        assert cog.crs.to_epsg() == 32618 and (cog.height, cog.width) == (row["height"], row["width"])
        labels = cog.read(1)
    want = row_label_map(row)
    assert np.array_equal(labels[want >= 0], want[want >= 0])


def test_resume_refuses_another_tiling_and_redoes_nothing(scenes: Path, checkpoint: str, ray_local,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(scenes / "b-small.png", folder / "b-small.png")
    out = tmp_path / "out"
    args = ["infer", str(folder), str(out), "-c", checkpoint, "--tile", "64", "--overlap", "16"]
    assert _infer(args).exit_code == 0
    again = _infer([*args, "--resume"])
    assert again.exit_code == 0 and "rows written 0" in again.output
    other = CliRunner().invoke(main, [*args[:-1], "8", "--resume"])
    assert other.exit_code == 1 and "tiling differs" in other.output
