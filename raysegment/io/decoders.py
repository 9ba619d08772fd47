"""Decoders: file bytes -> :class:`~raysegment.plugin.contract.Sample`, chosen by modality and extension.

One registry serves every modality, so raster, volume and audio decoders plug in
later with :func:`register_decoder` instead of new dispatch code. The built-in
image decoders (PNG/JPEG through Pillow, TIFF through tifffile) return
channels-last (H, W, C) arrays with the source dtype kept.

Inputs come from untrusted storage, so sizes are checked from the header before
any pixel data is decoded (the pixel count, and the memory the item would take against
this worker's budget, :mod:`raysegment.io.decode_budget`), and corrupt or truncated files
fail with a :class:`DecodeError` instead of yielding partial pixels.

A manifest may point at any file the worker can read, so no message quotes a file's
content: a wrong signature is named by the format it shows (or as unrecognised), and
byte strings in library messages are cut out (:func:`without_content`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable

import numpy as np
import tifffile
from PIL import Image, JpegImagePlugin, PngImagePlugin

from raysegment.errors import ItemError, exception_text
from raysegment.io.decode_budget import (
    Footprint,
    ItemBudget,
    array_footprint,
    item_budget,
    over_budget_message,
    pillow_footprint,
)
from raysegment.plugin.contract import Modality, Sample
from raysegment.table import Table
from raysegment.uri import extension

__all__ = [
    "Decoder",
    "DecodeLimits",
    "DecodeError",
    "UnsupportedFormatError",
    "register_decoder",
    "decoder_for",
    "decode",
    "supported_extensions",
    "check_pixel_limit",
    "check_decode_budget",
    "without_content",
    "tiff_image_series",
    "TiffWarnings",
    "check_tiff_extents",
    "decode_pillow",
    "decode_tiff",
    "DECODERS",
]


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Resource limits applied from the header, before decoding, against decompression bombs.

    Both apply: ``max_pixels`` caps what any header may claim; the memory budget caps what one
    item may take on the worker that decodes it, which pixels alone do not (a palette PNG of
    19000x19000 is 361 Mpx and 14 GB once it is a packed float32 model input). The budget is
    ``max_decode_memory`` when given, else derived on the worker from its memory, its CPUs and
    ``batch_size`` (:func:`raysegment.io.decode_budget.item_budget`).
    """

    max_pixels: int = 20_000 * 20_000
    max_decode_memory: int | None = None  # bytes one item may take; None: from the worker's memory and the batch
    batch_size: int = 1  # items a decode task holds at once
    #: The whole item becomes one float32 model input (untiled inference, training); False where
    #: only windows of it do (tiled inference of formats that are decoded whole, PNG/JPEG).
    whole_input: bool = True

    def __post_init__(self) -> None:
        if self.max_decode_memory is not None and self.max_decode_memory < 1:
            raise ValueError(f"--max-decode-memory must be at least 1 byte, got {self.max_decode_memory}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def item_budget(self) -> ItemBudget:
        """This worker's budget for one item (read where the decode runs, not on the driver)."""
        return item_budget(self.batch_size, self.max_decode_memory)


Decoder = Callable[[bytes, str, DecodeLimits], Sample]


class DecodeError(ItemError):
    """An input file could not be decoded; the pipeline records it as an error row."""


class UnsupportedFormatError(DecodeError):
    """No decoder is registered for this file type and modality."""


# -- registry ---------------------------------------------------------------------------
def _normalize_extension(ext: str) -> str:
    out = ext.strip().lower()
    if not out.startswith("."):
        out = "." + out
    if out == "." or "/" in out:
        raise ValueError(f"invalid file extension {ext!r}")
    return out


def _key_text(key: tuple[Modality, str]) -> str:
    return key[1]


#: (modality, extension) -> decoder; the built-ins are this module's own image decoders and the
#: whole-volume NIfTI decoder (which reuses the NIfTI scene reader, imported on first use).
DECODERS: Table[Decoder] = Table(
    "decoder",
    {
        **{(Modality.IMAGE, ext): "raysegment.io.decoders:decode_pillow" for ext in (".png", ".jpg", ".jpeg")},
        **{(Modality.IMAGE, ext): "raysegment.io.decoders:decode_tiff" for ext in (".tif", ".tiff")},
        **{(Modality.VOLUME, ext): "raysegment.io.scenes.nifti:decode_nifti" for ext in (".nii", ".nii.gz")},
    },
    describe=_key_text,
)


def register_decoder(modality: Modality, extensions: Iterable[str], decoder: Decoder) -> None:
    """Register ``decoder`` for file extensions of a modality; a clash is an error, not an override."""
    modality = Modality(modality)
    exts = [_normalize_extension(e) for e in extensions]
    if not exts:
        raise ValueError("register_decoder needs at least one extension")
    taken = sorted({e for e in exts if (modality, e) in DECODERS} | {e for e in exts if exts.count(e) > 1})
    if taken:
        owners = ", ".join(f"{e} ({getattr(DECODERS.get((modality, e)), '__qualname__', 'this call')})" for e in taken)
        raise ValueError(f"{modality.value} decoder already registered for {owners}")
    for ext in exts:
        DECODERS.register((modality, ext), decoder)


def supported_extensions(modality: Modality) -> list[str]:
    """Extensions (with dot, sorted) that have a decoder for ``modality``."""
    modality = Modality(modality)
    return sorted(ext for mod, ext in DECODERS.keys() if mod is modality)


def decoder_for(modality: Modality, uri: str) -> Decoder:
    """The decoder for ``uri``'s extension (query string ignored) under ``modality``."""
    modality = Modality(modality)
    ext = extension(uri)
    decoder = DECODERS.get((modality, ext))
    if decoder is not None:
        return decoder
    supported = ", ".join(supported_extensions(modality)) or "none registered"
    kind = f"'{ext}'" if ext else "(no extension)"
    raise UnsupportedFormatError(f"unsupported file type {kind} for {modality.value} input; supported: {supported}")


def decode(uri: str, data: bytes, modality: Modality, limits: DecodeLimits = DecodeLimits()) -> Sample:
    """Decode one file's bytes with the decoder registered for its type."""
    decoder = decoder_for(modality, uri)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return decoder(data, uri, limits)


def check_pixel_limit(width: int, height: int, limits: DecodeLimits) -> None:
    """Refuse an image whose header claims more pixels than allowed (call before decoding)."""
    if width * height > limits.max_pixels:
        raise DecodeError(
            f"image claims {width}x{height} pixels, over the limit of {limits.max_pixels:,} "
            "(possible decompression bomb)"
        )


def check_decode_budget(need: Footprint, limits: DecodeLimits, fmt: str, *, windowed: bool) -> None:
    """Refuse an item whose header says it needs more memory than this worker's per-item budget
    (call before decoding). ``windowed``: tiled inference can read ``fmt`` by window."""
    budget = limits.item_budget()
    if need.peak(limits.whole_input) > budget.bytes:
        raise DecodeError(over_budget_message(fmt, need, budget, whole_input=limits.whole_input, windowed=windowed,
                                              batch_size=limits.batch_size))


_BYTES_LITERAL = re.compile(r"(?<!\w)b'(?:[^'\\]|\\.)*'" + r'|(?<!\w)b"(?:[^"\\]|\\.)*"')


def without_content(text: str) -> str:
    """``text`` with every Python byte-string literal (``b'root:$6$...'``) cut out: libraries
    quote file bytes in their messages (tifffile: ``not a TIFF file: header=b'root'``)."""
    return _BYTES_LITERAL.sub("<bytes>", text)


def _library_text(exc: BaseException) -> str:
    return without_content(exception_text(exc))


#: Signatures named when a file is not what its decoder takes (the format only, never bytes).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"), (b"GIF8", "GIF"), (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "ZIP"), (b"%PDF", "PDF"),
)


def _signature_text(data: bytes) -> str:
    """What the first bytes say the file is, without quoting them."""
    found = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
    if data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        found = "WebP"
    return f"its signature says {found}" if found else f"unrecognised file signature ({len(data):,} bytes)"


def _native(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _sample(array: np.ndarray, uri: str, fmt: str, **extra: object) -> Sample:
    height, width, bands = array.shape
    meta = {"height": height, "width": width, "bands": bands, "dtype": str(array.dtype), "format": fmt}
    meta.update(extra)
    return Sample(data=array, uri=uri, meta=meta)


# -- PNG / JPEG (Pillow) ----------------------------------------------------------------
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Modes Pillow can hand to NumPy as-is; others are converted first.
_CONVERT = {"P": "RGB", "PA": "RGBA", "1": "L", "La": "LA", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def decode_pillow(data: bytes, uri: str, limits: DecodeLimits) -> Sample:
    """PNG or JPEG, told apart by signature (extensions lie), via Pillow's format plugins.

    The plugin classes are used directly instead of ``Image.open`` so that Pillow's
    own MAX_IMAGE_PIXELS check (a process-wide setting) never fires before ours.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if data.startswith(_PNG_MAGIC):
        fmt, plugin = "PNG", PngImagePlugin.PngImageFile
    elif data.startswith(_JPEG_MAGIC):
        fmt, plugin = "JPEG", JpegImagePlugin.JpegImageFile
    else:
        raise DecodeError(f"not a valid PNG/JPEG image: {_signature_text(data)}")
    try:
        image: Image.Image = plugin(io.BytesIO(data))
    except Exception as exc:
        raise DecodeError(f"not a valid PNG/JPEG image: {fmt} header unreadable ({_library_text(exc)})") from exc
    with image:
        width, height = image.size
        check_pixel_limit(width, height, limits)
        mode = image.mode
        check_decode_budget(pillow_footprint(width, height, mode, _CONVERT.get(mode)), limits, fmt, windowed=False)
        try:
            image.load()  # LOAD_TRUNCATED_IMAGES stays False: truncation raises here
            target = _CONVERT.get(mode)
            array = np.array(image.convert(target) if target else image)
        except Exception as exc:
            raise DecodeError(f"corrupt or truncated {fmt} file: {_library_text(exc)}") from exc
    if mode == "I" and fmt == "PNG":  # 16-bit grayscale from Pillows that say "I", not "I;16"
        array = array.astype(np.uint16)
    array = _native(array)
    if array.ndim == 2:
        array = array[:, :, None]
    return _sample(array, uri, fmt, mode=mode)


# -- TIFF (tifffile) --------------------------------------------------------------------
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_BAND_AXES = set("SCIQ")  # samples, channels, and generic page axes all become bands
_CORRUPTION_HINTS = ("invalid page offset", "invalid value offset", "failed to reshape", "missing data", "corrupt", "truncat")


class TiffWarnings(logging.Handler):
    """Collects tifffile's log warnings from this thread: it logs, not raises, on broken files."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())

    def raise_if_corrupt(self) -> None:
        for message in self.messages:
            if any(hint in message.lower() for hint in _CORRUPTION_HINTS):
                raise DecodeError(f"corrupt or truncated TIFF file: {without_content(message)}")


def check_tiff_extents(pages: Iterable[object], size: int) -> None:
    """Every strip/tile must lie inside the file, or the file was cut short."""
    for page in pages:
        offsets = tuple(getattr(page, "dataoffsets", ()) or ())
        counts = tuple(getattr(page, "databytecounts", ()) or ())
        if len(offsets) != len(counts):
            raise DecodeError("corrupt TIFF file: strip/tile offsets and byte counts disagree")
        end = max((o + c for o, c in zip(offsets, counts)), default=0)
        if end > size:
            raise DecodeError(f"truncated TIFF file: pixel data ends at byte {end:,} but the file has {size:,} bytes")


def tiff_image_series(tiff: tifffile.TiffFile) -> tuple[tifffile.TiffPageSeries, str, tuple[int, ...]]:
    """The first series of an open TIFF as ``(series, axes, shape)``: one 2D image whose other
    axes are all bands; a stack, a file without image or without Y and X is a DecodeError."""
    try:
        series = tiff.series[0] if tiff.series else None
    except Exception as exc:
        raise DecodeError(f"corrupt TIFF file: {_library_text(exc)}") from exc
    if series is None:
        raise DecodeError("TIFF file holds no image")
    axes, shape = series.axes, tuple(series.shape)
    if "Y" not in axes or "X" not in axes:
        raise DecodeError(f"TIFF image has axes {axes}, without Y and X")
    extra = [a for a, n in zip(axes, shape) if a not in "YX" and n > 1 and a not in _BAND_AXES]
    if extra:
        raise DecodeError(f"TIFF holds a stack with axes {axes} {shape}; image input takes one 2D image with bands")
    return series, axes, shape


def decode_tiff(data: bytes, uri: str, limits: DecodeLimits) -> Sample:
    """TIFF with any band count, contiguous or planar, as (H, W, bands)."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if not data.startswith(_TIFF_MAGIC):
        raise DecodeError(f"not a valid TIFF image: {_signature_text(data)}")
    logger = logging.getLogger("tifffile")
    records = TiffWarnings()
    logger.addHandler(records)
    try:
        try:
            tiff = tifffile.TiffFile(io.BytesIO(data))
        except Exception as exc:
            raise DecodeError(f"not a valid TIFF image: {_library_text(exc)}") from exc
        with tiff:
            series, axes, shape = tiff_image_series(tiff)
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
            check_pixel_limit(width, height, limits)
            if series.dtype is not None:  # None: a sample format asarray refuses below
                need = array_footprint((height, width), math.prod(shape) // (height * width), series.dtype)
                check_decode_budget(need, limits, "TIFF", windowed=True)
            records.raise_if_corrupt()
            check_tiff_extents(series.pages, len(data))
            try:
                array = np.asarray(series.asarray())
            except Exception as exc:
                raise DecodeError(f"corrupt or truncated TIFF file: {_library_text(exc)}") from exc
            records.raise_if_corrupt()
    finally:
        logger.removeHandler(records)
    if array.shape != shape:
        raise DecodeError(f"corrupt TIFF file: decoded shape {array.shape} differs from header {shape}")
    array = np.moveaxis(array, [axes.index("Y"), axes.index("X")], [0, 1]).reshape(height, width, -1)
    return _sample(np.ascontiguousarray(_native(array)), uri, "TIFF", axes=axes)


