"""NIfTI volumes (``.nii``, ``.nii.gz``) as scenes: one window of voxels at a time, through nibabel.

Axes. NIfTI stores voxel ``(i, j, k[, t])`` with ``i`` fastest; the scene array is
``[d, h, w]`` = file voxel ``(i=w, j=h, k=d)``, i.e. the file array transposed to
``(k, j, i)``, so a scene depth slice is one file ``k`` plane. A 4D file gives its
``t`` volumes as bands; a 3D file one band (:class:`~raysegment.io.scenes.base.VolumeGeometry`
states the convention, the affine maps file voxels ``(i, j, k)``).

Memory. The file is opened through fsspec (local paths, ``s3://``, ...) and wrapped
in nibabel's lazy ``dataobj`` proxy, so nothing but the header is read at open:

* uncompressed ``.nii``: a window reads only the byte runs it touches (nibabel's
  ``fileslice``; at worst whole ``(i, j)`` rows of the window's ``k`` planes), as
  range reads through a small readahead block;
* ``.nii.gz``: gzip cannot be read by range. The proxy reads through a streaming
  ``GzipFile``: a window decompresses the stream from the start up to its last plane
  and keeps only its own voxels (a backward seek restarts the stream). Memory stays
  per window; CPU grows with windows x volume size, so store large volumes as ``.nii``.

Values are nibabel's: ``scl_slope``/``scl_inter`` are applied as ``img.dataobj``
applies them (scaled data is float), unscaled data keeps its stored dtype (uint8 stays
uint8), in native byte order. Volumes have no nodata: ``valid_mask`` is None.

Bad files fail with a one-line :class:`~raysegment.io.decoders.DecodeError` at open where
the header shows it: not a NIfTI, truncated (checked against the file size, or for
gzip against the trailer's length field), a degenerate affine (singular, zero or
non-finite spacing), more than 4 dimensions.

nibabel is the ``[medical]`` extra and is imported only when a NIfTI file is opened.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from typing import Any

import numpy as np

from raysegment.io.decode_budget import array_footprint
from raysegment.io.decoders import DecodeError, DecodeLimits, check_decode_budget
from raysegment.io.scenes.base import SceneInfo, SceneReader, VolumeGeometry
from raysegment.plugin.contract import Sample
from raysegment.tiling.plan import Window
from raysegment.uri import extension

__all__ = ["NiftiScene", "open_nifti_scene", "decode_nifti"]

#: Readahead block of range reads of an uncompressed file: small, since a window's byte
#: runs are spread over many planes; and of a gzip stream, read front to back.
RANGE_BLOCK = 256 * 1024
STREAM_BLOCK = 1024 * 1024
#: A 3x3 voxel-to-world part whose normalised volume |det| / prod(column norms) is below
#: this is singular for any practical purpose (two axes nearly parallel).
DEGENERATE_TOLERANCE = 1e-6

_HEADER_SIZES = {348: "nifti1", 540: "nifti2"}


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise DecodeError("NIfTI input needs nibabel: pip install 'raysegment[medical]'") from None
    return nibabel


def _line(exc: BaseException) -> str:
    """An exception as one short line (nibabel's messages can span lines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_nifti_scene(uri: str, storage_options: dict[str, Any] | None = None,
                     limits: DecodeLimits = DecodeLimits()) -> NiftiScene:
    """The scene opener registered for ``.nii`` and ``.nii.gz``.

    ``limits`` does not apply: a windowed scene is never decoded whole, and the size
    the header claims is checked against the file instead.
    """
    return NiftiScene(uri, storage_options)


def decode_nifti(data: bytes, uri: str, limits: DecodeLimits) -> Sample:
    """The whole-volume decoder registered for ``Modality.VOLUME``: ``(D, H, W, bands)``.

    Training reads each pair whole (a volume is one training item), and so does untiled
    inference. The voxel count the header claims is checked against ``limits.max_pixels``,
    and its decoded bytes against the worker's per-item memory budget, before any voxel is
    decompressed.
    """
    with NiftiScene(uri, data=data) as scene:
        shape = scene.info.shape
        voxels = int(np.prod(shape, dtype=np.int64))
        if voxels > limits.max_pixels:
            raise DecodeError(f"volume too large: {'x'.join(map(str, shape))} = {voxels:,} voxels exceeds the "
                              f"limit of {limits.max_pixels:,} (use tiled inference for larger volumes)")
        check_decode_budget(array_footprint(shape, scene.info.bands, scene.info.dtype), limits, "NIfTI", windowed=True)
        volume = scene.read(Window(index=0, start=(0, 0, 0), size=shape))
        return Sample(data=volume, uri=uri, meta=scene.info.meta())


def check_geometry(affine: np.ndarray, zooms: tuple[float, ...]) -> None:
    """Reject a voxel grid that cannot place voxels in space (``DecodeError``)."""
    if not np.isfinite(affine).all():
        raise DecodeError("degenerate NIfTI affine: it holds NaN or infinite values")
    bad = [z for z in zooms if not (math.isfinite(z) and z > 0)]
    if bad:
        raise DecodeError(f"degenerate NIfTI affine: voxel spacing {tuple(float(z) for z in zooms)} "
                          "must be positive and finite")
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if (norms == 0).any():
        axes = ", ".join("ijk"[a] for a in np.flatnonzero(norms == 0))
        raise DecodeError(f"degenerate NIfTI affine: the column of voxel axis {axes} is zero")
    volume = abs(float(np.linalg.det(m))) / float(np.prod(norms))
    if volume < DEGENERATE_TOLERANCE:
        raise DecodeError(f"degenerate NIfTI affine: its 3x3 part is singular (normalised determinant {volume:.1e})")


def _check_raw_spacing(header: Any) -> None:
    """Spacing as stored: nibabel's header check silently replaces a zero ``pixdim`` by 1."""
    ndim = int(header["dim"][0])
    pixdim = [float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 1), 3)]]
    if not all(math.isfinite(v) and v != 0 for v in pixdim):
        raise DecodeError(f"degenerate NIfTI affine: voxel spacing (pixdim) {tuple(pixdim)} "
                          "must be non-zero and finite")


class NiftiScene(SceneReader):
    """One NIfTI-1 or NIfTI-2 file, opened lazily; ``read`` gives one window of voxels."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, *, data: bytes | None = None) -> None:
        """Open ``uri`` through fsspec, or read the file's bytes ``data`` when given (``uri`` then only names it)."""
        from raysegment.uri import filesystem, redact

        nib = _nibabel()
        self.uri = uri
        self._shown = redact(uri)
        self._compressed = extension(uri) == ".nii.gz"
        self._raw: Any = None
        self._stream: Any = None
        if data is not None:
            self._raw, size = io.BytesIO(data), len(data)
        else:
            fs, path = filesystem(uri, storage_options)
            block = STREAM_BLOCK if self._compressed else RANGE_BLOCK
            self._raw = fs.open(path, "rb", block_size=block, cache_type="readahead")  # FileNotFoundError as is
            size = self._file_size(fs, path)
        try:
            self._open(nib, size)
        except DecodeError:
            self.close()
            raise
        except Exception as exc:  # nibabel's header errors, struct, gzip, zlib, EOF ...
            self.close()
            raise DecodeError(f"not a readable NIfTI file: {_line(exc)}") from None

    # -- open --------------------------------------------------------------------------
    def _file_size(self, fs: Any, path: str) -> int | None:
        size = getattr(self._raw, "size", None)
        if size is None:
            try:
                size = fs.size(path)
            except Exception:
                return None
        return int(size) if size is not None else None

    def _open(self, nib: Any, file_size: int | None) -> None:
        self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if self._compressed else self._raw
        head = self._stream.read(max(_HEADER_SIZES))
        if len(head) < 4:
            raise DecodeError(f"not a NIfTI file: only {len(head)} byte(s)")
        sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
        header_size = next((s for s in sizes if s in _HEADER_SIZES), None)
        if header_size is None:
            raise DecodeError("not a NIfTI file: the header size field is neither 348 (NIfTI-1) nor 540 (NIfTI-2)")
        if len(head) < header_size:
            raise DecodeError(f"truncated NIfTI header: {len(head)} of {header_size} bytes")
        klass = nib.Nifti1Image if _HEADER_SIZES[header_size] == "nifti1" else nib.Nifti2Image
        _check_raw_spacing(klass.header_class(binaryblock=head[:header_size], check=False))
        self._stream.seek(0)

        def load() -> Any:  # the header (and extensions) only: the voxels stay behind img.dataobj
            return klass.from_file_map(klass.make_file_map({"image": self._stream}), mmap=False)

        img = load()
        shape = tuple(int(n) for n in img.shape)
        if len(shape) > 4:
            raise DecodeError(f"NIfTI with {len(shape)} dimensions {shape}: only 3D volumes (and 4D as bands) are read")
        if not shape or min(shape) < 1:
            raise DecodeError(f"empty NIfTI volume: shape {shape}")
        stored = np.dtype(img.get_data_dtype())
        need = int(img.dataobj.offset) + int(np.prod(shape, dtype=np.int64)) * stored.itemsize
        if self._compressed:
            self._check_gzip_length(need)  # moves the raw file under the gzip stream: start a fresh one
            self._stream.close()  # does not close self._raw
            self._raw.seek(0)
            self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
            img = load()
        elif file_size is not None and file_size < need:
            raise DecodeError(f"truncated NIfTI: the header needs {need:,} bytes, the file has {file_size:,}")
        proxy = img.dataobj

        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        zooms += (1.0,) * (3 - len(zooms))  # a 2D file: one plane deep
        check_geometry(affine, zooms)

        from nibabel.volumeutils import apply_read_scaling

        dtype = apply_read_scaling(np.zeros(1, dtype=stored), proxy.slope, proxy.inter).dtype
        dtype = dtype.newbyteorder("=")
        self._proxy = proxy
        self._file_ndim = len(shape)
        i, j, k = (*shape[:3], 1, 1)[:3]
        self.info = SceneInfo(
            shape=(k, j, i),
            bands=shape[3] if len(shape) == 4 else 1,
            dtype=dtype.name,
            format="NIfTI",
            volume=VolumeGeometry(
                affine=tuple(float(v) for v in affine.reshape(-1)),
                spacing=(zooms[2], zooms[1], zooms[0]),
            ),
        )

    def _check_gzip_length(self, need: int) -> None:
        """Truncation of a ``.nii.gz`` without decompressing it, where the trailer allows.

        The last 4 bytes of a gzip member are its uncompressed length mod 2**32. When they
        do not match (a truncated file, or a multi-member gzip), the stream is read through
        to its end in blocks, so the answer is exact either way, in bounded memory.
        """
        self._raw.seek(-4, io.SEEK_END)
        tail = self._raw.read(4)
        self._raw.seek(0)
        if len(tail) == 4 and struct.unpack("<I", tail)[0] == need % 2**32:
            return
        total = 0
        try:
            with gzip.GzipFile(fileobj=self._raw, mode="rb") as probe:
                while total < need:
                    chunk = probe.read(STREAM_BLOCK)
                    if not chunk:
                        break
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise DecodeError(f"truncated or corrupt NIfTI gzip stream: {_line(exc)}") from None
        finally:
            self._raw.seek(0)
        if total < need:
            raise DecodeError(f"truncated NIfTI: the header needs {need:,} bytes, the gzip stream holds {total:,}")

    # -- read --------------------------------------------------------------------------
    def read(self, window: Window) -> np.ndarray:
        """Voxels of ``window`` as ``(d, h, w, bands)``, from file voxels ``(i=w, j=h, k=d)``."""
        self.check_window(window)
        sd, sh, sw = window.slices()
        slicer: tuple[slice, ...] = (sw, sh, sd)[: self._file_ndim] + (slice(None),) * (self._file_ndim - 3)
        try:
            data = np.asarray(self._proxy[slicer])
        except (EOFError, OSError, ValueError, zlib.error) as exc:
            raise DecodeError(f"cannot read NIfTI voxels of {self._shown}: {_line(exc)}") from None
        data = data.reshape(*window.size[::-1], self.info.bands)  # (w, h, d, bands), also for 2D files
        return np.ascontiguousarray(data.transpose(2, 1, 0, 3), dtype=np.dtype(self.info.dtype))

    def valid_mask(self, window: Window, data: np.ndarray) -> np.ndarray | None:
        """Volumes have no nodata value: every voxel holds data."""
        return None

    def close(self) -> None:
        for f in (self._stream, self._raw):
            if f is not None:
                try:
                    f.close()
                except Exception:
                    pass
        self._stream = self._raw = None


