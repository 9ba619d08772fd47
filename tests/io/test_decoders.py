"""Decoder registry and the built-in PNG/JPEG/TIFF image decoders, on real encoded files."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from raysegment.io import decoders
from raysegment.io.decoders import (
    DecodeError,
    DecodeLimits,
    UnsupportedFormatError,
    decode,
    decoder_for,
    register_decoder,
    supported_extensions,
)
from raysegment.plugin.contract import Modality, Sample

REPO_ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _png(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def _tiff(array: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _image(uri: str, data: bytes, limits: DecodeLimits = DecodeLimits()) -> Sample:
    return decode(uri, data, Modality.IMAGE, limits)


def _shared_file(relative: str) -> Path:
    """A file from the shared data folder next to the repo, or skip saying what is missing."""
    path = REPO_ROOT.parent / "shared" / "data" / relative
    if not path.is_file():
        pytest.skip(f"shared data file not available: {path}")
    return path


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = decoders.DECODERS.snapshot()
    yield
    decoders.DECODERS.restore(saved)


# -- PNG / JPEG ----------------------------------------------------------------------------------
def test_gray_png() -> None:
    arr = RNG.integers(0, 256, (17, 23), dtype=np.uint8)
    sample = _image("s3://b/x.png", _png(arr))
    assert sample.data.shape == (17, 23, 1) and sample.data.dtype == np.uint8
    np.testing.assert_array_equal(sample.data[..., 0], arr)
    assert sample.uri == "s3://b/x.png"
    assert sample.meta["height"] == 17 and sample.meta["width"] == 23
    assert sample.meta["bands"] == 1 and sample.meta["dtype"] == "uint8"


@pytest.mark.parametrize("bands", [2, 3, 4])  # LA, RGB, RGBA: alpha stays a band
def test_color_png_keeps_bands(bands: int) -> None:
    arr = RNG.integers(0, 256, (9, 11, bands), dtype=np.uint8)
    sample = _image("x.PNG", _png(arr))
    assert sample.data.shape == (9, 11, bands)
    np.testing.assert_array_equal(sample.data, arr)
    assert sample.meta["bands"] == bands


def test_16bit_png() -> None:
    arr = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
    sample = _image("x.png", _png(arr))
    assert sample.data.dtype == np.uint16 and sample.data.shape == (12, 10, 1)
    np.testing.assert_array_equal(sample.data[..., 0], arr)
    assert sample.meta["dtype"] == "uint16"


def test_palette_png_becomes_rgb() -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = RNG.integers(0, 3, (8, 8), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    sample = _image("p.png", buf.getvalue())
    assert sample.data.shape == (8, 8, 3)
    expected = np.array(palette[:9], dtype=np.uint8).reshape(3, 3)[indices]
    np.testing.assert_array_equal(sample.data, expected)


@pytest.mark.parametrize(("shape", "ext"), [((32, 48, 3), ".jpg"), ((32, 48), ".jpeg")])
def test_jpeg(shape: tuple[int, ...], ext: str) -> None:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = (yy * 4 + xx * 2).astype(np.uint8)
    arr = np.stack([smooth, smooth // 2, 255 - smooth], axis=-1) if len(shape) == 3 else smooth
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    sample = _image(f"img{ext}", buf.getvalue())
    bands = shape[2] if len(shape) == 3 else 1
    assert sample.data.shape == (shape[0], shape[1], bands) and sample.data.dtype == np.uint8
    diff = np.abs(sample.data.astype(int) - arr.reshape(shape[0], shape[1], bands).astype(int))
    assert diff.mean() < 3


def test_jpeg_named_png_is_decoded_by_signature() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 128, np.uint8)).save(buf, format="JPEG")
    sample = _image("mislabelled.png", buf.getvalue())
    assert sample.data.shape == (5, 7, 3) and sample.meta["format"] == "JPEG"


def test_pillow_pixel_limit_does_not_fire_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # far below the image, far below our limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = _image("x.png", _png(np.zeros((64, 64), np.uint8)))
    assert sample.data.shape == (64, 64, 1)


# -- TIFF -----------------------------------------------------------------------------------------
def test_tiff_4band_contiguous() -> None:
    arr = RNG.integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    sample = _image("x.tif", _tiff(arr, photometric="minisblack", planarconfig="contig"))
    assert sample.data.shape == (20, 30, 4) and sample.data.dtype == np.uint16
    np.testing.assert_array_equal(sample.data, arr)
    assert sample.meta["bands"] == 4 and sample.meta["dtype"] == "uint16"


def test_tiff_13band_planar() -> None:
    arr = RNG.integers(0, 65536, (13, 20, 30), dtype=np.uint16)
    sample = _image("x.tiff", _tiff(arr, photometric="minisblack", planarconfig="separate"))
    assert sample.data.shape == (20, 30, 13)
    np.testing.assert_array_equal(sample.data, np.moveaxis(arr, 0, -1))


def test_tiff_13band_contiguous_and_one_page_per_band() -> None:
    arr = RNG.integers(0, 65536, (20, 30, 13), dtype=np.uint16)
    contig = _image("x.tif", _tiff(arr, photometric="minisblack", planarconfig="contig"))
    np.testing.assert_array_equal(contig.data, arr)
    pages = _image("x.tif", _tiff(np.moveaxis(arr, -1, 0), photometric="minisblack"))
    np.testing.assert_array_equal(pages.data, arr)


def test_tiff_float32_and_rgb() -> None:
    arr = RNG.random((15, 16), dtype=np.float32)
    sample = _image("f.tif", _tiff(arr))
    assert sample.data.shape == (15, 16, 1) and sample.data.dtype == np.float32
    np.testing.assert_array_equal(sample.data[..., 0], arr)
    rgb = RNG.integers(0, 256, (15, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_image("c.tif", _tiff(rgb, photometric="rgb")).data, rgb)


def test_tiff_big_endian() -> None:
    arr = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
    sample = _image("be.tif", _tiff(arr, byteorder=">"))
    assert sample.data.dtype == np.dtype("uint16") and sample.meta["dtype"] == "uint16"
    np.testing.assert_array_equal(sample.data[..., 0], arr)


def test_tiff_volume_is_rejected() -> None:
    data = _tiff(np.zeros((3, 4, 8, 8), np.uint8), photometric="minisblack", metadata={"axes": "ZCYX"})
    with pytest.raises(DecodeError, match="image input takes one 2D image"):
        _image("stack.tif", data)


# -- broken files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x.png", "x.jpg", "x.tif"])
def test_zero_byte_file(name: str) -> None:
    with pytest.raises(DecodeError, match=r"^empty file \(0 bytes\)$"):
        _image(name, b"")


def test_truncated_png() -> None:
    data = _png(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(DecodeError, match="truncated PNG"):
        _image("x.png", data[: len(data) // 2])


def test_truncated_jpeg() -> None:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    with pytest.raises(DecodeError, match="JPEG"):
        _image("x.jpg", data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"planarconfig": "contig"}, "truncated TIFF file: pixel data ends at byte"),
        ({}, "truncated TIFF"),
        # Cut files that lose later pages make tifffile log (not raise) and return a partial series.
        ({"compression": "zlib"}, "corrupt or truncated TIFF file: .*invalid page offset"),
        ({"tile": (16, 16)}, "corrupt or truncated TIFF file: .*invalid page offset"),
    ],
    ids=["one-page", "page-per-band", "page-per-band-zlib", "page-per-band-tiled"],
)
def test_truncated_tiff(kwargs: dict[str, object], message: str) -> None:
    arr = RNG.integers(0, 65536, (64, 64, 4), dtype=np.uint16)
    data = _tiff(arr, photometric="minisblack", **kwargs)
    with pytest.raises(DecodeError, match=message):
        _image("x.tif", data[: len(data) // 2])


@pytest.mark.parametrize(("name", "message"), [("x.png", "not a valid PNG/JPEG image"), ("x.tif", "not a valid TIFF image")])
def test_text_file_with_image_extension(name: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        _image(name, b"hello, this is plain text\n")


#: What a manifest may point a worker at: a file outside the input root whose bytes must never
#: reach an error row (Parquet output is read by people who could not read this file).
SECRET = b"root:$6$Xq9salt$Zb7hashvalue:19000:0:99999:7:::\n"
SECRET_PIECES = ("root", "$6$", "Xq9", "Zb7", "99999")


def _refusal(name: str, data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        _image(name, data)
    message = str(info.value)
    assert not [p for p in SECRET_PIECES if p in message], message
    assert "\\x" not in message and "b'" not in message, message
    return message


@pytest.mark.parametrize(("name", "kind"), [("shadow.png", "PNG/JPEG"), ("shadow.jpg", "PNG/JPEG"),
                                            ("shadow.tif", "TIFF"), ("shadow.TIFF", "TIFF")])
def test_no_error_quotes_the_content_of_a_file_that_is_no_image(name: str, kind: str) -> None:
    assert _refusal(name, SECRET) == f"not a valid {kind} image: unrecognised file signature ({len(SECRET)} bytes)"


@pytest.mark.parametrize(("name", "magic"), [("x.png", b"\x89PNG\r\n\x1a\n"), ("x.jpg", b"\xff\xd8\xff"),
                                             ("x.tif", b"II*\x00"), ("x.tif", b"II*\x00\x08\x00\x00\x00")])
def test_library_messages_lose_the_bytes_they_quote(name: str, magic: bytes) -> None:
    # Pillow says "broken PNG file (chunk b'...')", tifffile "not a TIFF file: header=b'...'".
    _refusal(name, magic + SECRET * 3)


def test_a_wrong_signature_is_named_by_its_format() -> None:
    tiff = _tiff(np.zeros((4, 4), np.uint8))
    png = _png(np.zeros((4, 4), np.uint8))
    assert _refusal("really-a-tiff.png", tiff) == "not a valid PNG/JPEG image: its signature says TIFF"
    assert _refusal("really-a-png.tif", png) == "not a valid TIFF image: its signature says PNG"
    assert _refusal("x.png", b"RIFF\x10\x00\x00\x00WEBPVP8 " + SECRET) == "not a valid PNG/JPEG image: its signature says WebP"


def test_without_content() -> None:
    assert decoders.without_content("not a TIFF file: header=b'root'") == "not a TIFF file: header=<bytes>"
    assert decoders.without_content('chunk b"a\\"b\'c" and b\'\\x00\\\'x\' end') == "chunk <bytes> and <bytes> end"
    assert decoders.without_content("Herb's file isn't bytes") == "Herb's file isn't bytes"


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def test_png_claiming_absurd_size_is_refused_fast() -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )
    start = time.perf_counter()
    with pytest.raises(DecodeError, match=r"100000x100000 pixels, over the limit of 400,000,000 \(possible decompression bomb\)"):
        _image("bomb.png", data)
    assert time.perf_counter() - start < 1.0


def test_limit_applies_to_tiff_and_png() -> None:
    small = DecodeLimits(max_pixels=100)
    with pytest.raises(DecodeError, match="20x20 pixels, over the limit of 100"):
        _image("x.tif", _tiff(np.zeros((20, 20), np.uint8)), small)
    with pytest.raises(DecodeError, match="over the limit of 100"):
        _image("x.png", _png(np.zeros((11, 10), np.uint8)), small)
    assert _image("x.png", _png(np.zeros((10, 10), np.uint8)), small).data.shape == (10, 10, 1)


# -- registry --------------------------------------------------------------------------------------
def test_unsupported_extension_message() -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        _image("notes.txt", b"x")
    assert str(info.value) == "unsupported file type '.txt' for image input; supported: .jpeg, .jpg, .png, .tif, .tiff"
    assert isinstance(info.value, DecodeError)
    with pytest.raises(UnsupportedFormatError, match=r"\(no extension\)"):
        decoder_for(Modality.IMAGE, "s3://bucket/README")


def test_extension_from_url_path_ignores_query_and_case() -> None:
    assert decoder_for(Modality.IMAGE, "https://h/a/X.PNG?versionId=3&sig=a.txt") is decoder_for(Modality.IMAGE, "a.png")
    with pytest.raises(UnsupportedFormatError, match="'.txt'"):
        decoder_for(Modality.IMAGE, "https://h/a.txt?name=x.png")


def test_supported_extensions() -> None:
    assert supported_extensions(Modality.IMAGE) == [".jpeg", ".jpg", ".png", ".tif", ".tiff"]
    assert supported_extensions(Modality.VOLUME) == [".nii", ".nii.gz"]


def test_register_new_modality_and_duplicate_fails(clean_registry: None) -> None:
    def fake(data: bytes, uri: str, limits: DecodeLimits) -> Sample:
        return Sample(data=np.zeros((1, 1, 1, 1), np.uint8), uri=uri, meta={"n": len(data)})

    with pytest.raises(UnsupportedFormatError, match="for raster input; supported: none registered"):
        decode("v.vol", b"abc", Modality.RASTER)
    register_decoder(Modality.RASTER, ["VOL", ".vox"], fake)
    assert decode("s3://b/v.vol", b"abc", Modality.RASTER).meta == {"n": 3}
    assert supported_extensions(Modality.RASTER) == [".vol", ".vox"]
    with pytest.raises(ValueError, match="already registered for .vol"):
        register_decoder(Modality.RASTER, [".vol"], fake)
    with pytest.raises(ValueError, match="already registered for .nii.gz"):
        register_decoder(Modality.VOLUME, [".nii.gz"], fake)
    with pytest.raises(ValueError, match="already registered for .png"):
        register_decoder(Modality.IMAGE, [".PNG"], fake)
    with pytest.raises(ValueError, match="already registered"):
        register_decoder(Modality.AUDIO, [".wav", ".wav"], fake)
    assert supported_extensions(Modality.AUDIO) == []  # a failed registration leaves nothing behind


# -- real data ----------------------------------------------------------------------------------------
def test_isbi_em_membrane_png() -> None:
    path = _shared_file("isbi2012_em_membrane/train/image/0.png")
    sample = _image(str(path), path.read_bytes())
    assert sample.data.shape == (512, 512, 1) and sample.data.dtype == np.uint8
    assert sample.meta == {**sample.meta, "height": 512, "width": 512, "bands": 1, "dtype": "uint8"}
    assert sample.data.std() > 0
