"""A training run's folder ``STORAGE/NAME`` on any fsspec filesystem, and the files in it.

Shared by the driver (checks, report, best checkpoint) and rank 0 of the
training workers (metrics and curves after every epoch). One run at a time: the
driver takes the folder's lease (``NAME/_lease``, output/lease.py) in :meth:`RunFolder.check`
and renews it until :meth:`RunFolder.release`, so a second ``train`` with the same
``--storage/--name`` fails in one line instead of interleaving checkpoints; every
:meth:`RunFolder.write` first checks the lease is still this run's.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fsspec

from raysegment.output.atomic import write_atomic
from raysegment.output.lease import LEASE_FOLDER, Fence, Lease, acquire_lease, new_run_id
from raysegment.uri import redact, refuse_credentials

__all__ = ["RunFolder", "METRICS", "CURVES"]

METRICS = "metrics.jsonl"
CURVES = "curves.png"


class RunFolder:
    """The run folder ``STORAGE/NAME`` on any fsspec filesystem."""

    def __init__(self, storage: str, name: str, storage_options: dict[str, Any]):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"--name must be a plain folder name, got {name!r}")
        refuse_credentials(storage)  # before anything can echo it
        self.fs, root = fsspec.core.url_to_fs(storage, **storage_options)
        self.root = root.rstrip("/")
        self.path = f"{self.root}/{name}"
        self.url = f"{storage.rstrip('/')}/{name}"
        self.fence: Fence | None = None  # travels to rank 0 with the folder
        self._lease: Lease | None = None  # the driver's only
        self._beat: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lease": None, "_beat": None}

    def hold(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the folder: rank 0 calls it before
        each checkpoint it hands Ray Train, which writes into the folder on its own."""
        if self.fence is not None:
            self.fence.check(self.fs)

    def write(self, name: str, data: bytes) -> None:
        """Write-then-rename, so a crash mid-epoch never leaves a half-written report or history;
        only while this run holds the folder."""
        self.hold()
        write_atomic(self.fs, f"{self.path}/{name}", data)

    def check(self, resume: bool) -> None:
        """Refuse an existing run without ``resume`` and an unwritable folder, then take the folder's
        lease (LeaseHeld while another run trains there) and keep it renewed until :meth:`release`."""
        exists = self.fs.exists(self.path) and bool(self.fs.ls(self.path))
        if exists and not resume:
            raise ValueError(f"run {redact(self.url)} already exists; pass --resume to continue it or pick --name")
        try:
            self.fs.makedirs(self.path, exist_ok=True)
            self.write(".raysegment-probe", b"ok")
            self.fs.rm(f"{self.path}/.raysegment-probe")
        except (OSError, PermissionError) as exc:
            raise ValueError(f"cannot write to --storage {redact(self.url)}: {getattr(exc, 'strerror', None) or exc}") from None
        import logging

        self._lease = acquire_lease(self.fs, f"{self.path}/{LEASE_FOLDER}", run_id=new_run_id(),
                                    shown=f"run {redact(self.url)}", on_takeover=logging.getLogger("raysegment").warning)
        self.fence = self._lease.fence()
        self._beat = self._lease.heartbeat()
        self._beat.__enter__()

    def release(self) -> None:
        """Stop renewing the lease and mark it free (the run is over, finished or not)."""
        if self._beat is not None:
            self._beat.__exit__(None, None, None)
            self._beat = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def arrow_filesystem(self) -> tuple[str, Any]:
        """(path, pyarrow filesystem) for Ray Train, wrapping the same fsspec filesystem."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return self.root, PyFileSystem(FSSpecHandler(self.fs))

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl and curves.png, rewritten after every epoch so a crashed run keeps them."""
        self.write(METRICS, "".join(json.dumps(h) + "\n" for h in history).encode())
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] + 1 for h in history]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
        ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
        for key in [k for k, v in history[-1].items() if k.startswith("val_") and isinstance(v, float)]:
            ax2.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("val_", ""))
        ax2.set(xlabel="epoch", ylabel="validation", title="validation", ylim=(0, 1))
        ax2.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        self.write(CURVES, buf.getvalue())
