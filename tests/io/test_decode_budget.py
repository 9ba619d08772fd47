"""The per-item decode memory budget: the formula, the header-only footprint, and real bombs.

The bomb is a real PNG: 19000x19000, 1-bit palette, written row by row with zlib (44 KB,
a tenth of a second), which Pillow decodes to 1.08 GB of RGB. Memory is measured in
this process, with the kernel's peak-RSS mark reset first (Linux ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from raysegment.io.decode_budget import (
    MIN_ITEM_BUDGET,
    Footprint,
    array_footprint,
    decode_slots,
    format_bytes,
    item_budget,
    node_memory,
    over_budget_message,
    parse_size,
    pillow_footprint,
)
from raysegment.io.decoders import DecodeError, DecodeLimits, decode
from raysegment.plugin.contract import Modality

REPO_ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
BOMB_SIDE = 19000


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def palette_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit palette PNG, compressed without ever holding its pixels."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join([comp.compress(row * 1000) for _ in range(height // 1000)]
                    + [comp.compress(row * (height % 1000)), comp.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff")
            + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(palette_png(BOMB_SIDE, BOMB_SIDE))
    return path


def _image(data: bytes, limits: DecodeLimits, name: str = "x.png") -> np.ndarray:
    return decode(name, data, Modality.IMAGE, limits).data


# -- the formula ----------------------------------------------------------------------------
def test_budget_formula_on_a_24_gib_two_core_node() -> None:
    budget = item_budget(8, memory=24 * GIB, slots=2)
    assert budget.bytes == 24 * GIB // 2 // 2 // 8 == 805_306_368
    assert budget.basis == "half of 25.8 GB memory / 2 CPUs / batch of 8"
    assert item_budget(1, memory=24 * GIB, slots=2).bytes == 6 * GIB  # the batch divides it
    assert item_budget(8, memory=24 * GIB, slots=4).bytes == 3 * GIB // 8  # so do the decode slots


def test_budget_floor_and_explicit() -> None:
    small = item_budget(16, memory=4 * GIB, slots=64)
    assert small.bytes == MIN_ITEM_BUDGET and "raised to the floor of 268 MB" in small.basis
    explicit = item_budget(8, explicit=123_456_789, memory=24 * GIB, slots=2)
    assert (explicit.bytes, explicit.basis) == (123_456_789, "set by --max-decode-memory")
    assert explicit.batch_that_fits(10**9) is None


def test_this_machines_facts_are_sane() -> None:
    memory = node_memory()
    assert memory is not None and 2**28 < memory <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 1 <= decode_slots() <= (os.cpu_count() or 1)
    assert DecodeLimits(batch_size=4).item_budget() == item_budget(4, memory=memory, slots=decode_slots())


def test_parse_size_and_format_bytes() -> None:
    assert parse_size("800MB") == 800_000_000 and parse_size("2g") == 2 * 10**9
    assert parse_size("1.5GiB") == 3 * 2**29 and parse_size("4096") == 4096 and parse_size(77) == 77
    for bad in ("", "two GB", "-1GB", "0", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert [format_bytes(n) for n in (0, 999, 44_000, 789_874_688, 1_083_000_000)] == [
        "0 B", "999 B", "44 KB", "790 MB", "1.08 GB"]
    with pytest.raises(ValueError, match="--max-decode-memory must be at least 1 byte"):
        DecodeLimits(max_decode_memory=0)


# -- the footprint from the header ---------------------------------------------------------------
def test_pillow_footprint_of_the_bomb() -> None:
    need = pillow_footprint(BOMB_SIDE, BOMB_SIDE, "P", "RGB")
    pixels = BOMB_SIDE * BOMB_SIDE
    assert (need.shape, need.bands, need.dtype, need.decoded) == ((BOMB_SIDE, BOMB_SIDE), 3, "uint8", 3 * pixels)
    assert need.decode_peak == pixels * (1 + 4 + 2 * 3)  # P image, its RGB copy, tobytes and the array
    assert need.peak(whole_input=True) == pixels * (3 + 3 * 3 * 4)  # + float32 input and its packed copies
    assert need.peak(whole_input=False) == need.decode_peak
    assert need.describe() == "19000x19000x3 uint8"


def test_footprints_of_other_modes() -> None:
    assert pillow_footprint(10, 20, "I;16").dtype == "uint16" and pillow_footprint(10, 20, "I;16B").decoded == 400
    assert pillow_footprint(10, 20, "1", "L").decoded == 200
    assert pillow_footprint(10, 20, "RGBA").bands == 4
    assert pillow_footprint(10, 20, "BGR;99") == pillow_footprint(10, 20, "RGBA")  # a mode Pillow cannot describe
    tiff = array_footprint((20, 10), 13, ">u2")
    assert (tiff.dtype, tiff.decoded, tiff.decode_peak, tiff.describe()) == ("uint16", 5200, 10400, "10x20x13 uint16")
    assert Footprint((4, 5, 6), 1, "float32", 0).describe() == "4x5x6x1 float32"


# -- over budget: one clear line, and no memory spent -------------------------------------------------
def test_the_bomb_is_refused_with_the_way_out(bomb: Path) -> None:
    limits = DecodeLimits(max_decode_memory=790_000_000, batch_size=8)
    with pytest.raises(DecodeError) as info:
        _image(bomb.read_bytes(), limits, "bomb.png")
    assert str(info.value) == (
        "PNG image is 19000x19000x3 uint8: 1.08 GB decoded, 14.1 GB at its peak with its float32 model input, "
        "over this worker's decode budget of 790 MB per item (set by --max-decode-memory); PNG cannot be read by "
        "window, so --tile would decode it whole as well: convert it to a tiled TIFF or COG and run with --tile 1024")
    assert bomb.stat().st_size < 100_000  # a tiny file: pixels alone (361 Mpx < 400 Mpx) let it through
    assert BOMB_SIDE * BOMB_SIDE < DecodeLimits().max_pixels


def test_the_bomb_in_a_decode_batch_is_an_error_row_under_the_default_budget(bomb: Path) -> None:
    from conftest import SMALL_UNET

    from raysegment.infer.stages import decode_batch
    from raysegment.plugin.spec import resolve_model

    limits = DecodeLimits(batch_size=8)  # what `raysegment infer` builds with its default --batch-size
    budget = limits.item_budget()
    if budget.bytes >= pillow_footprint(BOMB_SIDE, BOMB_SIDE, "P", "RGB").peak(True):
        pytest.skip(f"this machine's default budget ({format_bytes(budget.bytes)} per item) takes the bomb")
    good = bomb.with_name("good.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="PNG")
    good.write_bytes(buf.getvalue())
    batch = {"uri": np.array([str(bomb), str(good)], dtype=object), "index": np.arange(2),
             "shard": np.zeros(2, np.int32)}
    out = decode_batch(batch, spec=resolve_model("unet", SMALL_UNET), limits=limits)
    assert list(out["status"]) == ["error", "ok"]
    message = out["error"][0]
    assert message.startswith("PNG image is 19000x19000x3 uint8: 1.08 GB decoded")
    assert f"decode budget of {format_bytes(budget.bytes)} per item ({budget.basis})" in message
    assert "batch of 8" in message and "convert it to a tiled TIFF or COG" in message


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def peak_growth(fn: Callable[[], object]) -> tuple[int, object]:
    """Bytes the peak RSS of this process rose by while ``fn`` ran, and what it returned or raised.

    The kernel's high-water mark is reset first (``clear_refs`` 5), so an earlier peak (torch's
    import, a previous test) cannot hide this one.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS here: {exc}")
    start = _rss_kib("VmRSS")
    try:
        result: object = fn()
    except Exception as exc:
        result = exc
    return (_rss_kib("VmHWM") - start) * 1024, result


linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")


def _decode_growth(data: bytes, budget: int) -> tuple[int, str]:
    """In a fresh process (so no freed heap of earlier tests hides an allocation): the peak RSS
    growth of decoding ``data`` under ``budget``, and what came of it."""
    grown, result = peak_growth(lambda: _image(data, DecodeLimits(max_decode_memory=budget, batch_size=8)))
    shape = getattr(result, "shape", None)
    return grown, str(result) if shape is None else f"array {tuple(shape)}"


def _in_fresh_process(data: bytes, budget: int) -> tuple[int, str]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_decode_growth, (data, budget))


@linux_only
def test_refusing_the_bomb_allocates_nothing_like_its_size(bomb: Path) -> None:
    grown, refused = _in_fresh_process(bomb.read_bytes(), 790_000_000)
    assert "over this worker's decode budget" in refused
    assert grown < 32 * 2**20 < 3 * BOMB_SIDE * BOMB_SIDE / 30  # nothing of the 1.08 GB was allocated
    # The same measurement sees a real decode: about the footprint's decode peak (176 MB).
    grown, array = _in_fresh_process(palette_png(4000, 4000), 10**12)
    assert array == "array (4000, 4000, 3)"
    expected = pillow_footprint(4000, 4000, "P", "RGB").decode_peak
    assert 0.7 * expected < grown < 1.3 * expected


@pytest.mark.slow
@linux_only
def test_the_whole_input_estimate_matches_a_measured_decode_batch(tmp_path: Path) -> None:
    from conftest import SMALL_UNET

    from raysegment.infer.stages import decode_batch
    from raysegment.plugin.spec import resolve_model

    path = tmp_path / "rgb.png"
    path.write_bytes(palette_png(4000, 4000))
    spec = resolve_model("unet", {**SMALL_UNET, "in_channels": "3"})
    spec.plugin()
    batch = {"uri": np.array([str(path)], dtype=object), "index": np.arange(1), "shard": np.zeros(1, np.int32)}
    grown, out = peak_growth(lambda: decode_batch(batch, spec=spec, limits=DecodeLimits(max_decode_memory=10**12)))
    assert isinstance(out, dict) and out["status"][0] == "ok", out
    expected = pillow_footprint(4000, 4000, "P", "RGB").peak(True)  # 39 bytes a pixel: 624 MB
    assert 0.75 * expected < grown < 1.25 * expected


def test_just_under_the_budget_decodes_and_one_byte_less_does_not() -> None:
    data = palette_png(300, 200)
    need = pillow_footprint(300, 200, "P", "RGB").peak(True)
    array = _image(data, DecodeLimits(max_decode_memory=need))
    assert array.shape == (200, 300, 3) and not array.any()
    with pytest.raises(DecodeError, match="300x200x3 uint8: 180 KB decoded, 2.34 MB at its peak"):
        _image(data, DecodeLimits(max_decode_memory=need - 1))


def test_a_tiff_over_budget_points_to_tile() -> None:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 200, 300), np.uint16), photometric="minisblack", planarconfig="separate")
    data = buf.getvalue()
    need = array_footprint((200, 300), 4, "uint16").peak(True)
    assert _image(data, DecodeLimits(max_decode_memory=need), "x.tif").shape == (200, 300, 4)
    with pytest.raises(DecodeError) as info:
        _image(data, DecodeLimits(max_decode_memory=need - 1), "x.tif")
    assert str(info.value).startswith("TIFF image is 300x200x4 uint16: 480 KB decoded, 3.36 MB at its peak")
    assert str(info.value).endswith("; run with --tile 1024 to read it by windows")


def test_tiled_decode_of_a_png_counts_no_model_input_and_says_tile_cannot_help() -> None:
    data = palette_png(300, 200)
    need = pillow_footprint(300, 200, "P", "RGB")
    tiled = DecodeLimits(max_decode_memory=need.decode_peak, whole_input=False)
    assert _image(data, tiled).shape == (200, 300, 3)  # whole-input peak is 3x higher; windows are small
    with pytest.raises(DecodeError) as info:
        _image(data, DecodeLimits(max_decode_memory=need.decode_peak - 1, whole_input=False))
    assert "at its peak while decoding" in str(info.value)
    assert str(info.value).endswith("PNG cannot be read by window, so --tile decodes it whole: "
                                    "convert it to a tiled TIFF or COG")


def test_the_message_names_a_batch_size_that_fits() -> None:
    need = pillow_footprint(4000, 4000, "P", "RGB")  # 624 MB at its whole-input peak
    budget = item_budget(8, memory=4 * GIB, slots=1)  # 2.15 GB per slot, 268 MB per item
    message = over_budget_message("PNG", need, budget, whole_input=True, windowed=False, batch_size=8)
    assert message.endswith("and run with --tile 1024 (or run with --batch-size 3)")
    assert "(half of 4.29 GB memory / 1 CPU / batch of 8)" in message
    assert "--batch-size" not in over_budget_message("PNG", need, item_budget(8, memory=GIB, slots=4),
                                                     whole_input=True, windowed=False, batch_size=8)
