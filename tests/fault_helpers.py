"""Helpers of the fault tests: Ray's processes found through /proc, and the exactly-once check."""

from __future__ import annotations

import json
import os
from pathlib import Path

from raysegment.io.sources import list_inputs
from raysegment.output.root import MANIFEST, SUCCESS, OutputRoot, read_output

#: The process title of a predictor actor once its ``__init__`` has run (during it: ``ray::_MapWorker.__init__``).
PREDICTOR_TITLE = "ray::MapWorker(MapBatches(Predictor))"
DEADLINE_S = 240.0  # a generous bound for any one wait on a loaded 2-core machine; reaching it fails the test


def process_table() -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (parent pid, first word of its command line, i.e. a Ray process title)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] not in "ZX":
            table[int(entry)] = (int(fields[1]), title)
    return table


def predictors(ancestor: int, title: str = PREDICTOR_TITLE) -> dict[int, int]:
    """Predictor actor processes (or others, by ``title``) descending from ``ancestor``: pid -> parent
    pid (its node's raylet)."""
    table = process_table()

    def descends(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = table.get(pid, (0, ""))[0]
            if pid == ancestor:
                return True
        return False

    return {pid: parent for pid, (parent, name) in table.items() if name.startswith(title) and descends(pid)}


def assert_exactly_once(folder: Path, out: Path) -> list[dict]:
    """One row per listed entry, by uri and by index, all of the output's run id; returns the rows."""
    uris = list_inputs(str(folder))
    rows = read_output(str(out), columns=["index", "uri", "status", "error", "run_id"]).to_pylist()
    indices = [r["index"] for r in rows]
    assert len(rows) == len(uris), f"{len(rows)} rows for {len(uris)} items"
    assert indices == list(range(len(uris))), "an index is missing or doubled"
    assert [r["uri"] for r in rows] == uris, "a uri is missing, doubled or under another index"
    run_id = json.loads((out / MANIFEST).read_text())["run_id"]
    assert {r["run_id"] for r in rows} == {run_id}, "a committed row belongs to another run"
    assert (out / SUCCESS).exists()
    assert OutputRoot(str(out)).status_counts(run_id)[3] == 0
    return rows
