"""How much memory one whole item may take to decode on this worker, and how much an item needs.

Why a memory budget and not pixels alone: ``max_pixels`` stops absurd headers, not memory.
A 44 KB palette PNG of 19000x19000 passes the 400-megapixel default, takes about 4 GB to
decode (Pillow's buffers, the RGB conversion, NumPy's copy) and about 14 GB once it is the
model's float32 input, packed for the next stage. What a worker can afford depends on its memory, on how many decode
tasks share that memory and on how many items each task holds at once (the batch), so the
budget follows from those three, and it is worked out on the worker that decodes (a joined
cluster's nodes need not look like the driver's machine).

The budget (:func:`item_budget`), per item::

    budget = max(MIN_ITEM_BUDGET, MEMORY_FRACTION * memory / slots / batch_size)

* ``memory``: this node's memory, or its cgroup (container) limit when lower
  (:func:`node_memory`); ``UNKNOWN_MEMORY`` where neither can be read;
* ``slots``: the CPUs this process may run on (:func:`decode_slots`): every decode/read task
  reserves one CPU, so that is how many can decode side by side;
* ``MEMORY_FRACTION`` = 0.5: the other half is left to Ray's object store (30 % of memory by
  default), the predictor actor(s) and the OS;
* ``batch_size``: a decode task keeps every item of its batch (as the packed model input)
  until it hands the batch on;
* ``MIN_ITEM_BUDGET`` (256 MiB): a many-core node with little memory still takes ordinary
  photos (about 9 megapixels of RGB even counting the float32 input).

An explicit budget (``--max-decode-memory``) replaces the formula and is per item as given.

What an item needs (:class:`Footprint`) is worked out from its header, before any pixel is
decoded: the decoded array (source dtype) and the decoder's own peak, and, where the whole
item becomes one model input (untiled inference, training), that float32 input and its packed
copies for the next stage. The estimate follows what the built-in decoders and the default
``preprocess`` allocate; it is checked against measured peaks in ``tests/io/test_decode_budget.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re

import numpy as np
from PIL import ImageMode

__all__ = [
    "MEMORY_FRACTION",
    "MIN_ITEM_BUDGET",
    "UNKNOWN_MEMORY",
    "Footprint",
    "ItemBudget",
    "pillow_footprint",
    "array_footprint",
    "node_memory",
    "decode_slots",
    "item_budget",
    "format_bytes",
    "parse_size",
    "over_budget_message",
]

MEMORY_FRACTION = 0.5
MIN_ITEM_BUDGET = 256 * 2**20
UNKNOWN_MEMORY = 8 * 2**30  # assumed where the node's memory cannot be read (not Linux/macOS)
FLOAT32 = 4
#: Copies of a float32 model input alive at once in ``decode_batch``: the tensor, the ``.npy`` record
#: ``payload.pack`` saves it to, and the joined cell (measured: 39 bytes a pixel for RGB uint8).
MODEL_INPUT_COPIES = 3


@dataclasses.dataclass(frozen=True)
class Footprint:
    """The memory one item takes, from its header: ``shape`` is spatial, ``bands`` the last axis."""

    shape: tuple[int, ...]
    bands: int
    dtype: str  # NumPy dtype name of the decoded array
    decode_peak: int  # bytes while the decoder itself runs (library buffers and copies)

    @property
    def values(self) -> int:
        return math.prod(self.shape) * self.bands

    @property
    def decoded(self) -> int:
        """Bytes of the decoded array in its source dtype."""
        return self.values * np.dtype(self.dtype).itemsize

    def peak(self, whole_input: bool) -> int:
        """The most bytes alive at once for this item: while decoding, or (``whole_input``) once
        the decoded array sits next to its float32 model input and that input's packed copies."""
        after = self.decoded + (MODEL_INPUT_COPIES * FLOAT32 * self.values if whole_input else 0)
        return max(self.decode_peak, after)

    def describe(self) -> str:
        """``19000x19000x3 uint8``: sizes as the user knows them (width first for 2D images)."""
        spatial = self.shape[::-1] if len(self.shape) == 2 else self.shape
        return "x".join(str(n) for n in (*spatial, self.bands)) + f" {self.dtype}"


def _pillow_bytes_per_pixel(mode: str) -> int:
    """Pillow keeps 1-byte single-band modes at 1 byte a pixel, 16-bit ones at 2, everything else at 4."""
    desc = ImageMode.getmode(mode)
    if len(desc.bands) > 1:
        return 4
    return max(1, np.dtype(desc.typestr).itemsize)


def _known(mode: str) -> str:
    """``mode``, or RGBA (4 bytes a pixel, the widest of Pillow's 8-bit modes) for one Pillow does not describe."""
    try:
        ImageMode.getmode(mode)
    except KeyError:
        return "RGBA"
    return mode


def pillow_footprint(width: int, height: int, mode: str, target: str | None = None) -> Footprint:
    """An image Pillow decodes in ``mode`` and the decoder converts to ``target`` (None: kept).

    The peak while decoding is Pillow's image, its converted copy, ``tobytes``' copy and
    NumPy's array, all alive at once inside ``np.array(image.convert(target))``.
    """
    mode, target = _known(mode), _known(target) if target else None
    out = ImageMode.getmode(target or mode)
    dtype = np.dtype("uint8") if out.typestr == "|b1" else np.dtype(out.typestr).newbyteorder("=")
    bands = len(out.bands)
    pixels = width * height
    decoded = pixels * bands * dtype.itemsize
    peak = pixels * _pillow_bytes_per_pixel(mode) + 2 * decoded
    if target:
        peak += pixels * _pillow_bytes_per_pixel(target)
    return Footprint((height, width), bands, dtype.name, peak)


def array_footprint(shape: tuple[int, ...], bands: int, dtype: object, copies: int = 2) -> Footprint:
    """An array decoder that holds ``copies`` arrays of the decoded size at its peak (tifffile's
    array and the reordered, contiguous one: 2)."""
    dt = np.dtype(dtype)
    values = math.prod(shape) * bands
    return Footprint(tuple(int(n) for n in shape), int(bands), dt.newbyteorder("=").name, copies * values * dt.itemsize)


# -- the budget -------------------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2): no limit


@functools.lru_cache(maxsize=1)
def node_memory() -> int | None:
    """Bytes of memory this process can use: physical memory, or the cgroup limit when lower.

    Read with ``os.sysconf`` and the cgroup files rather than psutil, which raysegment does
    not depend on. None where neither can be read.
    """
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 0
    limits = [_read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    found = [n for n in (physical, *limits) if n and n > 0]
    return min(found) if found else None


@functools.lru_cache(maxsize=1)
def decode_slots() -> int:
    """CPUs this process may run on: how many one-CPU decode tasks can share the node."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class ItemBudget:
    """Bytes one item may take, and how that number came about (for the error message)."""

    bytes: int
    basis: str  # "half of 25.3 GB memory / 2 CPUs / batch of 8", or "set by --max-decode-memory"
    share: int | None = None  # one slot's memory (before the batch split); None when explicit

    def batch_that_fits(self, peak: int) -> int | None:
        """The largest batch size at which an item of ``peak`` bytes fits (None: none, or explicit)."""
        if self.share is None or peak <= MIN_ITEM_BUDGET:
            return None
        return self.share // peak or None


def item_budget(
    batch_size: int = 1,
    explicit: int | None = None,
    *,
    memory: int | None = None,
    slots: int | None = None,
) -> ItemBudget:
    """The per-item budget of the module's formula; ``memory``/``slots`` default to this node's."""
    if explicit is not None:
        return ItemBudget(int(explicit), "set by --max-decode-memory")
    known = memory if memory is not None else node_memory()
    memory_bytes = known if known is not None else UNKNOWN_MEMORY
    slots = slots or decode_slots()
    batch = max(1, int(batch_size))
    share = int(MEMORY_FRACTION * memory_bytes / slots)
    per_item = max(MIN_ITEM_BUDGET, share // batch)
    what = f"{format_bytes(memory_bytes)} memory" if known is not None else f"an assumed {format_bytes(memory_bytes)}"
    basis = f"half of {what} / {slots} CPU{'s' if slots != 1 else ''} / batch of {batch}"
    if per_item == MIN_ITEM_BUDGET and share // batch < MIN_ITEM_BUDGET:
        basis += f", raised to the floor of {format_bytes(MIN_ITEM_BUDGET)}"
    return ItemBudget(per_item, basis, share)


# -- sizes as people write them ---------------------------------------------------------------
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def format_bytes(n: int) -> str:
    """Decimal units, three significant figures: ``1.08 GB``, ``790 MB``, ``44 KB``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def parse_size(text: str | int) -> int:
    """``"800MB"``, ``"2G"``, ``"1.5GiB"``, ``"2000000000"`` -> bytes (K/M/G/T decimal, Ki/Mi/Gi binary)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ValueError(f"expected a size such as 800MB, 2GB or 1.5GiB, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value < 1:
        raise ValueError(f"a memory size must be at least 1 byte, got {text!r}")
    return value


def over_budget_message(fmt: str, need: Footprint, budget: ItemBudget, *, whole_input: bool, windowed: bool,
                        batch_size: int = 1) -> str:
    """The error row's line for an item over budget: what it needs, the budget and its basis, and
    the way out: ``--tile`` where the format is read by window, else a tiled TIFF/COG.

    ``windowed``: tiled inference reads this format window by window (TIFF, NIfTI); PNG and
    JPEG cannot be read by range, so ``--tile`` would decode them whole as well.
    """
    peak = need.peak(whole_input)
    with_what = "with its float32 model input" if whole_input else "while decoding"
    what = "volume" if len(need.shape) == 3 else "image"
    head = (f"{fmt} {what} is {need.describe()}: {format_bytes(need.decoded)} decoded, {format_bytes(peak)} at its "
            f"peak {with_what}, over this worker's decode budget of {format_bytes(budget.bytes)} per item "
            f"({budget.basis})")
    tile = "--tile 128" if len(need.shape) == 3 else "--tile 1024"
    if windowed and whole_input:
        advice = f"run with {tile} to read it by windows"
    elif windowed:
        advice = "lower --batch-size or raise --max-decode-memory"
    elif whole_input:
        advice = (f"{fmt} cannot be read by window, so --tile would decode it whole as well: convert it to a "
                  f"tiled TIFF or COG and run with {tile}")
    else:
        advice = f"{fmt} cannot be read by window, so --tile decodes it whole: convert it to a tiled TIFF or COG"
    fits = budget.batch_that_fits(peak)
    if fits and fits < batch_size:
        advice += f" (or run with --batch-size {fits})"
    return f"{head}; {advice}"
