"""The progress watchdog: a run whose reads hang fails in one line naming the stage, and --resume finishes it."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SMALL_UNET

from raysegment.infer.pipeline import InferenceConfig, run_inference
from raysegment.output.root import read_output
from raysegment.runtime import StalledRunError

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture
def silent_server() -> Iterator[tuple[str, Callable[[], None]]]:
    """An HTTP endpoint on 127.0.0.1 that accepts connections and never answers: a hung object store."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    def hang_up() -> None:
        stop.wait()
        thread.join()
        for conn in held:  # the hung reads now fail at once, freeing the shared Ray's CPUs
            conn.close()
        server.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    closer = threading.Thread(target=hang_up, daemon=True)
    closer.start()
    def close() -> None:  # returns once the port refuses connections
        stop.set()
        closer.join()

    yield f"http://127.0.0.1:{server.getsockname()[1]}", close
    close()


def test_a_hung_read_fails_in_one_line_and_resume_finishes(silent_server: tuple[str, Callable[[], None]],
                                                           tmp_path: Path) -> None:
    url, hang_up = silent_server
    out = tmp_path / "out"
    cfg = dict(input=f"{url}/scene.png", output=str(out), model="unet", params=SMALL_UNET, stall_timeout=4)
    with pytest.raises(StalledRunError) as info:
        run_inference(InferenceConfig(**cfg))
    message = str(info.value)
    assert "\n" not in message
    # the read and the decode run fused in one task: either name is the stalled stage
    assert re.match(r"no progress for 4 s \(--stall-timeout\): stage (ReadRaysegmentShards|MapBatches\(decode_batch\)) "
                    r"\(1 task\(s\) running\) did not finish a task; still running: ", message), message
    assert message.endswith("Rerun with --resume to finish the rest")
    hang_up()  # the store comes back refusing connections: the item becomes an error row
    summary = run_inference(InferenceConfig(**{**cfg, "stall_timeout": 120}, resume=True))  # room for actor start-up
    table = read_output(str(out))
    assert (summary.items, summary.failed, table.num_rows) == (1, 1, 1)
    assert table.column("uri").to_pylist() == [f"{url}/scene.png"] and table.column("status")[0].as_py() == "error"


def test_a_pool_that_took_every_cpu_names_the_first_stage_that_cannot_run() -> None:
    """The deadlock of the issue (a restarted predictor took the last CPU): no task runs anywhere."""
    from ray.data.exceptions import ExecutionTimeoutError

    from raysegment.runtime import describe_stall

    text = ("Dataset execution made no progress for at least 300s of scheduling time (timeout: 300s).\n"
            "Operators still running:\n"
            "  - MapBatches(decode_batch): 0 active task(s), 100 finished, 100 outputs taken\n"
            "  - MapBatches(Predictor): 0 active task(s), 13 finished, 13 outputs taken\n")
    try:
        try:
            raise ExecutionTimeoutError(text)
        except ExecutionTimeoutError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        line = describe_stall(exc, 300)
    assert line is not None and line.startswith(
        "no progress for 300 s (--stall-timeout): stage MapBatches(decode_batch) got no task running")
    assert describe_stall(ValueError("other"), 300) is None


def test_a_pool_that_holds_every_cpu_left_is_named_as_the_cause() -> None:
    """A lost node: its predictor restarted on the last free CPU, and the read task Ray Data counts
    as running is one waiting for a CPU. With the CPUs left beside the pool (0) the line says so
    instead of blaming a hung read; with a CPU left, the same report blames the read."""
    from ray.data.exceptions import ExecutionTimeoutError

    from raysegment.runtime import describe_stall

    exc = ExecutionTimeoutError(
        "Dataset execution made no progress for at least 30s of scheduling time (timeout: 30s).\n"
        "Operators still running:\n"
        "  - ReadRaysegmentShards: 1 active task(s), 4 finished, 4 outputs taken\n"
        "  - MapBatches(decode_batch): 0 active task(s), 4 finished, 4 outputs taken\n"
        "  - MapBatches(Predictor): 1 active task(s), 3 finished, 3 outputs taken\n")
    starved = describe_stall(exc, 30, cpus_left=0.0)
    assert starved is not None and "\n" not in starved
    assert starved.startswith("no progress for 30 s (--stall-timeout): stage ReadRaysegmentShards has no CPU to run "
                              "on: the predictor actors ask for all the CPUs the cluster has now (0 left"), starved
    assert starved.endswith("Rerun with --resume: on the cluster as it is now the pool leaves a CPU free"), starved
    hung = describe_stall(exc, 30, cpus_left=1.0)
    assert hung is not None and "stage ReadRaysegmentShards (1 task(s) running) did not finish a task" in hung
    assert hung.endswith("Rerun with --resume to finish the rest")
