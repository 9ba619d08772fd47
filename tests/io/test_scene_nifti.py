"""The NIfTI scene reader: real MSD hippocampus volumes, synthetic files, bad files, S3.

Every expectation is nibabel's own whole-file read, transposed to the scene's
``(k, j, i)`` axes; the reader must agree window by window.
"""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from raysegment.io.decoders import DecodeError
from raysegment.io.scenes.base import open_scene
from raysegment.io.scenes.nifti import NiftiScene, open_nifti_scene
from raysegment.tiling.plan import TilePlan, Window

nib = pytest.importorskip("nibabel", reason="nibabel (the raysegment[medical] extra) is not installed")

HIPPOCAMPUS = SHARED / "msd_task04_hippocampus"
UINT8_IMAGES = {"hippocampus_001", "hippocampus_033", "hippocampus_034"}  # as SOURCE.md states


@pytest.fixture(scope="module")
def hippocampus() -> list[Path]:
    files = sorted(HIPPOCAMPUS.glob("*Tr/*.nii.gz"))
    if len(files) != 40:
        pytest.skip(f"MSD hippocampus data not present under {HIPPOCAMPUS} "
                    "(../shared/data is checked out beside the repo in CI)")
    return files


def whole(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """nibabel's whole read as a scene array (d, h, w[, t]), its affine and zooms."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    axes = (2, 1, 0, 3) if data.ndim == 4 else (2, 1, 0)
    return data.transpose(axes), img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def assert_windows_match(scene: NiftiScene, expected: np.ndarray, tile: int = 16, overlap: int = 4) -> int:
    """Every window of the plan equals the same slice of the whole array; returns the window count."""
    if expected.ndim == 3:
        expected = expected[..., None]
    plan = TilePlan.for_shape(scene.info.shape, (tile,) * 3, overlap)
    for w in plan.windows:
        got = scene.read(w)
        assert got.shape == (*w.size, scene.info.bands) and got.dtype == expected.dtype
        assert got.flags.c_contiguous and got.dtype.isnative
        np.testing.assert_array_equal(got, expected[w.slices()])
    return len(plan)


def save(data: np.ndarray, path: Path, affine: np.ndarray | None = None, klass: type | None = None) -> Path:
    nib.save((klass or nib.Nifti1Image)(data, np.eye(4) if affine is None else affine), str(path))
    return path


def patch_header(path: Path, **fields: object) -> None:
    """Overwrite header fields in place: nibabel will not write a degenerate affine itself."""
    header = nib.load(str(path)).header.copy()
    for key, value in fields.items():
        header[key] = value
    with open(path, "r+b") as f:
        f.write(header.binaryblock)


def decode_error(path: Path | str) -> str:
    with pytest.raises(DecodeError) as info:
        open_nifti_scene(str(path))
    message = str(info.value)
    assert "\n" not in message and message
    return message


# -- the real volumes -------------------------------------------------------------------
def test_hippocampus_geometry_matches_nibabel(hippocampus: list[Path]) -> None:
    uint8_images = set()
    for path in hippocampus:
        expected, affine, zooms = whole(path)
        with open_scene(str(path)) as scene:  # through the registry, by extension
            assert isinstance(scene, NiftiScene)
            info = scene.info
        assert info.shape == expected.shape and info.bands == 1 and info.format == "NIfTI"
        assert info.dtype == expected.dtype.name and info.georef is None
        assert info.volume is not None and info.volume.affine == tuple(affine.reshape(-1).tolist())
        assert info.volume.spacing == zooms[::-1]
        assert info.meta() == {"depth": expected.shape[0], "height": expected.shape[1], "width": expected.shape[2],
                               "bands": 1, "dtype": info.dtype, "format": "NIfTI"}
        if path.parent.name == "imagesTr" and info.dtype == "uint8":
            uint8_images.add(path.name.removesuffix(".nii.gz"))
    assert uint8_images == UINT8_IMAGES


def test_hippocampus_windows_equal_slices_of_the_whole(hippocampus: list[Path]) -> None:
    shapes = set()
    for path in hippocampus:
        expected, _, _ = whole(path)
        with open_nifti_scene(str(path)) as scene:
            assert assert_windows_match(scene, expected) >= 27  # >= 3 windows per axis of ~35..52
            corner = Window(0, (0, 0, 0), (4, 4, 4))
            assert scene.valid_mask(corner, scene.read(corner)) is None
        shapes.add(expected.shape)
    assert len(shapes) > 10  # uneven sizes: windows shift back at different places


def test_uint8_images_stay_uint8_and_the_float_label_reads(hippocampus: list[Path]) -> None:
    path = HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz"
    with open_nifti_scene(str(path)) as scene:
        full = scene.read(Window(0, (0, 0, 0), scene.info.shape))
    assert full.dtype == np.uint8 and full.max() > 100  # the stored bytes, not rescaled
    np.testing.assert_array_equal(full[..., 0], whole(path)[0])
    with open_nifti_scene(str(HIPPOCAMPUS / "labelsTr" / "hippocampus_003.nii.gz")) as scene:
        assert scene.info.dtype == "float32"
        labels = scene.read(Window(0, (0, 0, 0), scene.info.shape))
    assert labels.dtype == np.float32 and set(np.unique(labels).tolist()) == {0.0, 1.0, 2.0}


# -- synthetic files --------------------------------------------------------------------
def test_uncompressed_anisotropic_rotated_volume(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 3000, size=(23, 31, 19), dtype=np.int16)  # (i, j, k)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.5 * c, -2.0 * s, 0, 10], [0.5 * s, 2.0 * c, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    path = save(data, tmp_path / "rot.nii", affine)
    with open_nifti_scene(str(path)) as scene:
        assert scene.info.shape == (19, 31, 23) and scene.info.dtype == "int16"
        np.testing.assert_allclose(scene.info.volume.affine, affine.reshape(-1), rtol=1e-6)
        np.testing.assert_allclose(scene.info.volume.spacing, (3.0, 2.0, 0.5), rtol=1e-6)
        assert_windows_match(scene, data.transpose(2, 1, 0), tile=8, overlap=2)


def test_4d_volume_gives_bands(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((10, 12, 9, 3), dtype=np.float32)  # (i, j, k, t)
    path = save(data, tmp_path / "multi.nii", np.diag([1.0, 1.5, 2.0, 1.0]))
    with open_nifti_scene(str(path)) as scene:
        assert scene.info.shape == (9, 12, 10) and scene.info.bands == 3 and scene.info.dtype == "float32"
        assert scene.info.volume.spacing == (2.0, 1.5, 1.0)
        assert_windows_match(scene, data.transpose(2, 1, 0, 3), tile=6, overlap=2)


def test_scaling_big_endian_and_nifti2_read_as_nibabel_does(tmp_path: Path) -> None:
    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    cases = {
        "scaled.nii": np.asarray(nib.load(str(tmp_path / "scaled.nii")).dataobj),  # float: slope/inter applied
        "big.nii": data.astype(">f4"),
        "two.nii": data,
    }
    save(cases["big.nii"], tmp_path / "big.nii")
    save(data, tmp_path / "two.nii", klass=nib.Nifti2Image)
    assert cases["scaled.nii"].dtype.kind == "f"
    for name, expected in cases.items():
        with open_nifti_scene(str(tmp_path / name)) as scene:
            native = expected.astype(expected.dtype.newbyteorder("="))
            assert scene.info.dtype == native.dtype.name, name
            assert_windows_match(scene, native.transpose(2, 1, 0), tile=4, overlap=1)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_window_holds_only_its_own_voxels_in_memory(tmp_path: Path, suffix: str) -> None:
    data = np.random.default_rng(2).random((96, 96, 96), dtype=np.float32)
    path = save(data, tmp_path / f"big{suffix}")
    expected = data.transpose(2, 1, 0)
    with open_nifti_scene(str(path)) as scene:
        for start in [(40, 40, 40), (80, 0, 80), (0, 0, 0)]:  # the last one seeks back
            window = Window(0, start, (16, 16, 16))
            tracemalloc.start()
            try:
                got = scene.read(window)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            np.testing.assert_array_equal(got[..., 0], expected[window.slices()])
            assert peak < data.nbytes / 16, f"reading a 16^3 window peaked at {peak:,} bytes"


# -- bad files ----------------------------------------------------------------------------
def test_degenerate_affines_are_decode_errors(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), dtype=np.uint8)
    cases = {
        "zero_column": {"srow_x": [1, 0, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 1, 0]},
        "parallel": {"srow_x": [1, 1, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 1, 0]},
        "nan": {"srow_x": [np.nan, 0, 0, 0]},
        "zero_spacing": {"pixdim": [1, 1, 0, 1, 1, 1, 1, 1]},
        "inf_spacing": {"pixdim": [1, 1, 1, np.inf, 1, 1, 1, 1]},
    }
    for name, fields in cases.items():
        path = save(data, tmp_path / f"{name}.nii")
        patch_header(path, **fields)
        assert decode_error(path).startswith("degenerate NIfTI affine: "), name
    assert "voxel axis j is zero" in decode_error(tmp_path / "zero_column.nii")
    assert "singular" in decode_error(tmp_path / "parallel.nii")


def test_truncated_and_foreign_files_are_one_line_decode_errors(hippocampus: list[Path], tmp_path: Path) -> None:
    blob = (HIPPOCAMPUS / "imagesTr" / "hippocampus_003.nii.gz").read_bytes()
    raw = gzip.decompress(blob)
    files = {
        "half.nii.gz": blob[: len(blob) // 2],
        "head.nii.gz": blob[:120],  # inside the header
        "half.nii": raw[: len(raw) // 2],
        "header_only.nii": raw[:300],
        "png.nii": b"\x89PNG\r\n\x1a\n" + bytes(400),
        "plain.nii.gz": raw,  # not gzip at all
        "empty.nii": b"",
    }
    messages = {}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        messages[name] = decode_error(tmp_path / name)
    assert "truncated" in messages["half.nii.gz"]
    assert "truncated" in messages["half.nii"] and f"the file has {len(raw) // 2:,}" in messages["half.nii"]
    assert "truncated NIfTI header" in messages["header_only.nii"]
    assert "not a NIfTI file" in messages["png.nii"] and "not a NIfTI file" in messages["empty.nii"]
    assert "gzip" in messages["plain.nii.gz"].lower()
    save(np.zeros((2, 3, 4, 2, 2), np.uint8), tmp_path / "five.nii")
    assert "5 dimensions" in decode_error(tmp_path / "five.nii")


def test_a_multi_member_gzip_is_not_mistaken_for_a_truncated_one(hippocampus: list[Path], tmp_path: Path) -> None:
    source = HIPPOCAMPUS / "imagesTr" / "hippocampus_003.nii.gz"
    raw = gzip.decompress(source.read_bytes())
    path = tmp_path / "members.nii.gz"  # bgzip-style: the last member's length field is not the file's
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    with open_nifti_scene(str(path)) as scene:
        assert_windows_match(scene, whole(source)[0])


# -- object storage -----------------------------------------------------------------------
def test_reads_through_s3(s3_server: str, s3_bucket: str, hippocampus: list[Path], tmp_path: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    gz = HIPPOCAMPUS / "imagesTr" / "hippocampus_034.nii.gz"
    big = save(np.random.default_rng(3).random((128, 128, 64), dtype=np.float32), tmp_path / "big.nii")
    for local in (gz, big):
        client.upload_file(str(local), s3_bucket, f"vol/{local.name}")
    with open_scene(f"s3://{s3_bucket}/vol/{gz.name}") as scene:
        assert isinstance(scene, NiftiScene) and scene.info.dtype == "uint8"
        assert_windows_match(scene, whole(gz)[0])
    with open_nifti_scene(f"s3://{s3_bucket}/vol/big.nii") as scene:
        window = Window(0, (24, 56, 56), (16, 16, 16))  # 16 of 64 k planes
        np.testing.assert_array_equal(scene.read(window)[..., 0], whole(big)[0][window.slices()])
        fetched = scene._raw.cache.total_requested_bytes  # range reads: only the window's planes
        assert 0 < fetched < big.stat().st_size / 2, f"{fetched:,} of {big.stat().st_size:,} bytes fetched"
    with pytest.raises(FileNotFoundError):
        open_nifti_scene(f"s3://{s3_bucket}/vol/missing.nii")


def test_whole_volume_decoder_matches_the_scene_and_checks_the_voxel_limit() -> None:
    """``decode(..., Modality.VOLUME)`` (training, untiled inference) gives the scene's voxels."""
    from raysegment.io.decoders import DecodeLimits, decode
    from raysegment.plugin.contract import Modality

    path = HIPPOCAMPUS / "imagesTr" / "hippocampus_003.nii.gz"
    if not path.is_file():
        pytest.skip(f"shared data not present: {path}")
    sample = decode(str(path), path.read_bytes(), Modality.VOLUME)
    with open_nifti_scene(str(path)) as scene:
        whole = scene.read(Window(index=0, start=(0, 0, 0), size=scene.info.shape))
        assert sample.meta == scene.info.meta()
    np.testing.assert_array_equal(sample.data, whole)
    voxels = int(np.prod(sample.data.shape[:3]))
    with pytest.raises(DecodeError, match=f"{voxels:,} voxels exceeds the limit of {voxels - 1:,}"):
        decode(str(path), path.read_bytes(), Modality.VOLUME, DecodeLimits(max_pixels=voxels - 1))
    need = 2 * sample.data.nbytes  # the header's footprint: the array and its reordered copy
    with pytest.raises(DecodeError, match=r"over this worker's decode budget .*--tile"):
        decode(str(path), path.read_bytes(), Modality.VOLUME, DecodeLimits(max_decode_memory=need - 1))
    assert decode(str(path), path.read_bytes(), Modality.VOLUME, DecodeLimits(max_decode_memory=need * 4)).data.shape
    with pytest.raises(DecodeError, match="not a NIfTI file"):
        decode("bad.nii", b"\0" * 400, Modality.VOLUME)
