"""One writer per output: a lease with a run id, a heartbeat and an expiry, on any fsspec filesystem.

Two runs on one output used to mix silently: a second run started with ``--overwrite`` while
the first was still writing, both committed parts, and both wrote ``_SUCCESS``. Now every
output root and every training run folder has a lease, and only its holder writes there.

The lease is a folder of numbered records, ``_lease/gen-000001.json``, ``gen-000002.json``, ...
The *newest* record says who holds it: a run id, the holder (one process's attempt: a resume
keeps the run id but is a new holder), its host and pid, and when it last renewed. Taking
the lease means creating the next record **exclusively**: ``O_EXCL`` on a local disk, S3's
conditional put (``If-None-Match: *``, through s3fs's ``"xb"`` mode) on object storage. Of two
runs racing for the same number exactly one creates it, so there is no read-then-write
window. Only the holder ever rewrites its own record (the heartbeat) or marks it released,
so no write races another run's.

The newest record is free when it is released, when its heartbeat is older than its TTL
(a crashed run on another machine), or when its holder is a process of this host that no
longer exists (a killed run here: no need to wait for the expiry). Otherwise taking it fails
with one line naming the run, its host and pid, and when its lease expires. A holder that
finds a newer record than its own has lost the lease (to a take-over after its heartbeat
stopped): :meth:`Lease.check` raises :class:`LeaseLost`, and the sink checks it before every
commit, so a run that lost the output never commits a part there again.

Filesystems without exclusive create (fsspec's memory filesystem, some object stores) fall
back to create-if-absent then read back, which is safe against everything but a race in the
same few milliseconds; local disks and S3 are exact. Times are wall clock (``time.time``),
because holders on different machines compare them: keep the clocks synchronised (NTP).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["LEASE_FOLDER", "TTL_ENV", "Lease", "LeaseHeld", "LeaseLost", "LeaseRecord", "acquire_lease",
           "Fence", "lease_holder", "new_run_id"]

LEASE_FOLDER = "_lease"
#: Seconds a lease lives without a heartbeat (default 60); the heartbeat renews it every TTL / 4.
TTL_ENV = "RAYSEGMENT_LEASE_TTL"
DEFAULT_TTL_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live run holds the output (or run folder)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over: it must not write there any more."""


def new_run_id() -> str:
    """A run id: time-ordered (sorts by start) and unique (random tail)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _ttl() -> float:
    try:
        return max(1.0, float(os.environ.get(TTL_ENV, DEFAULT_TTL_S)))
    except ValueError:
        return DEFAULT_TTL_S


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """One generation of the lease: who holds it and since when."""

    generation: int
    run_id: str
    holder: str
    host: str
    pid: int
    acquired: float
    renewed: float
    ttl: float
    released: bool = False

    def free(self, now: float) -> str | None:
        """Why this record no longer holds the lease (released, expired, dead process), or None."""
        if self.released:
            return "released"
        if now - self.renewed > self.ttl:
            return f"its heartbeat stopped {now - self.renewed:.0f} s ago"
        if self.host == socket.gethostname() and not _alive(self.pid):
            return f"its process {self.pid} on this host is gone"
        return None

    def describe(self, now: float) -> str:
        age = max(0.0, now - self.renewed)
        left = max(0.0, self.ttl - age)
        return (f"run {self.run_id} (pid {self.pid} on {self.host}, last heartbeat {age:.0f} s ago; "
                f"if that run is dead its lease expires in {left:.0f} s)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _record_name(generation: int) -> str:
    return f"gen-{generation:06d}.json"


def _generations(fs: Any, folder: str) -> list[int]:
    fs.invalidate_cache(folder)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n[4:10]) for n in names if n.startswith("gen-") and n.endswith(".json") and n[4:10].isdigit())


def _read(fs: Any, folder: str, generation: int) -> LeaseRecord | None:
    try:
        with fs.open(f"{folder}/{_record_name(generation)}", "rb") as f:
            data = json.loads(f.read())
        names = [field.name for field in dataclasses.fields(LeaseRecord)]
        return LeaseRecord(**{k: data[k] for k in names if k in data})
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def lease_holder(fs: Any, folder: str) -> LeaseRecord | None:
    """The newest lease record under ``folder`` (held or not), None if there is none."""
    for generation in reversed(_generations(fs, folder)):
        record = _read(fs, folder, generation)
        if record is not None:
            return record
    return None


@dataclasses.dataclass(frozen=True)
class Fence:
    """What a writer in another process (the sink's Ray tasks) needs to check it still owns the
    place it writes: small and picklable, unlike :class:`Lease`."""

    folder: str
    holder: str
    run_id: str
    shown: str

    def check(self, fs: Any) -> None:
        """Raise :class:`LeaseLost` unless this holder has the newest record: the check before
        every commit that fences off a run which lost the output."""
        newest = lease_holder(fs, self.folder)
        if newest is None or newest.holder != self.holder:
            who = f"run {newest.run_id} (pid {newest.pid} on {newest.host})" if newest else "nobody (the lease is gone)"
            raise LeaseLost(f"run {self.run_id} lost {self.shown} to {who}; it stopped writing there")


def _create_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """Create ``path`` only if absent: True if this call created it."""
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):
        pass  # no exclusive mode here: create if absent, then read back
    if fs.exists(path):
        return False
    with fs.open(path, "wb") as f:
        f.write(data)
    with fs.open(path, "rb") as f:
        return f.read() == data


class Lease:
    """This process's hold on a folder's lease; renew it (or run :meth:`heartbeat`) while writing."""

    def __init__(self, fs: Any, folder: str, record: LeaseRecord, shown: str, clock: Callable[[], float]):
        self.fs, self.folder, self.record, self.shown, self.clock = fs, folder, record, shown, clock
        self.lost: LeaseLost | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def _write(self, record: LeaseRecord) -> None:
        with self.fs.open(f"{self.folder}/{_record_name(record.generation)}", "wb") as f:
            f.write(json.dumps(dataclasses.asdict(record)).encode())
        self.record = record

    def check(self) -> None:
        """Raise :class:`LeaseLost` if a newer record than this holder's exists."""
        self.fence().check(self.fs)

    def fence(self) -> Fence:
        """This holder's identity for writers in other processes."""
        return Fence(self.folder, self.record.holder, self.run_id, self.shown)

    def renew(self) -> None:
        """Check the lease is still ours, then push its expiry forward."""
        self.check()
        self._write(dataclasses.replace(self.record, renewed=self.clock()))

    def release(self) -> None:
        """Mark the lease free (best effort: an expired lease is free anyway)."""
        try:
            self.check()
            self._write(dataclasses.replace(self.record, released=True, renewed=self.clock()))
        except (LeaseLost, OSError):
            pass

    def heartbeat(self, interval: float | None = None) -> _Heartbeat:
        """A context manager renewing the lease every ``interval`` s (TTL / 4) in a daemon thread."""
        return _Heartbeat(self, interval or self.record.ttl / 4)


class _Heartbeat:
    def __init__(self, lease: Lease, interval: float):
        self.lease, self.interval = lease, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raysegment-lease", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.lease.renew()
            except LeaseLost as exc:
                self.lease.lost = exc
                return
            except OSError:
                continue  # a failed renewal is retried; the TTL covers a few misses

    def __enter__(self) -> Lease:
        self._thread.start()
        return self.lease

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def acquire_lease(fs: Any, folder: str, *, run_id: str, shown: str, ttl: float | None = None,
                  clock: Callable[[], float] = time.time, on_takeover: Callable[[str], None] | None = None) -> Lease:
    """Take the lease under ``folder`` for ``run_id``, or raise :class:`LeaseHeld` naming who has it.

    ``shown`` is the (redacted) place the messages name. A free but unreleased record (a
    crashed or killed run) is taken over, and ``on_takeover`` is told why in one line.
    """
    ttl = float(ttl or _ttl())
    for _ in range(8):  # lost races only: each retry sees a newer record
        generations = _generations(fs, folder)
        newest = lease_holder(fs, folder) if generations else None
        now = clock()
        if newest is not None:
            why = newest.free(now)
            if why is None:
                raise LeaseHeld(f"{shown} is in use by {newest.describe(now)}")
            if why != "released" and on_takeover is not None:
                on_takeover(f"taking over {shown} from run {newest.run_id}: {why}")
        generation = (generations[-1] if generations else 0) + 1
        record = LeaseRecord(generation=generation, run_id=run_id, holder=uuid.uuid4().hex, host=socket.gethostname(),
                             pid=os.getpid(), acquired=now, renewed=now, ttl=ttl)
        if not generations:
            fs.makedirs(folder, exist_ok=True)
        created = _create_exclusive(fs, f"{folder}/{_record_name(generation)}", json.dumps(dataclasses.asdict(record)).encode())
        if not created:  # the store may have created it and lost the reply: a retried put then gets 412
            mine = _read(fs, folder, generation)
            created = mine is not None and mine.holder == record.holder
        if created:
            for old in generations[:-1]:  # keep the previous record (who we took over from); drop older ones
                try:
                    fs.rm(f"{folder}/{_record_name(old)}")
                except OSError:
                    pass
            return Lease(fs, folder, record, shown, clock)
    raise LeaseHeld(f"{shown}: another run keeps taking its lease; try again")
