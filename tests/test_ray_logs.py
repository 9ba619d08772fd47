"""Ray's known-harmless notices go to the quiet log, not the terminal; real warnings stay."""

from __future__ import annotations

import io
import logging
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from raysegment.ray_logs import QuietRayLogs, is_harmless, quiet_ray_logs

NO_CPU = ("Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang unless "
          "more CPUs are freed up.")
HARMLESS = [
    NO_CPU,
    "Actor with class name: 'MapWorker(MapBatches(Predictor))' and ID: 'ab12' has constructor arguments in the "
    "object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    "actor restart will fail.",
    "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. Continuing to monitor.",
    "/x/execution_options.py:491: RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated and will "
    "be removed after January 2027.",
    "  self.exclude_resources = exclude_resources",
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "Execution plan of Dataset dataset_0358_0: InputDataBuffer[Input] -> TaskPoolMapOperator[MapBatches(load_windows)]",
    "\u2714\ufe0f  Dataset dataset_0358FfqvX_0 execution finished in 5.01 seconds",
    "Reporting training result 3: TrainingReport(checkpoint=Checkpoint(filesystem=local, path=/r/x), metrics={})",
    "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/r/checkpoint_2026)",
]
REAL = [
    "Ray task MapBatches(decode_batch) failed: ValueError: bad input",
    "The Ray cluster has no GPU; running on CPU",
    "Task failed due to out of memory: exclude_resources were 2 CPU",
    "Dataset dataset_12 failed: cannot read s3://b/x.tif",
]


@pytest.fixture
def quiet(tmp_path: Path) -> Iterator[QuietRayLogs]:
    pytest.importorskip("ray.data")  # its loggers and console handlers exist from here on
    installed = quiet_ray_logs(str(tmp_path / "quiet.log"))
    yield installed
    installed.close()


@pytest.mark.parametrize("text", HARMLESS)
def test_known_harmless_notices_match(text: str) -> None:
    assert is_harmless(text)


@pytest.mark.parametrize("text", REAL)
def test_warnings_that_matter_do_not(text: str) -> None:
    assert not is_harmless(text)


@pytest.fixture
def consoles() -> Iterator[io.StringIO]:
    """What Ray's own console handlers (of ``ray`` and ``ray.data``) write, instead of the terminal."""
    pytest.importorskip("ray.data")
    from ray._private.log import PlainRayHandler

    out = io.StringIO()
    handlers = [h for name in ("ray", "ray.data") for h in logging.getLogger(name).handlers
                if isinstance(h, PlainRayHandler)]
    assert len(handlers) == 2
    before = [h.setStream(out) for h in handlers]
    yield out
    for handler, stream in zip(handlers, before):
        handler.setStream(stream)


def test_a_harmless_record_goes_to_the_file_and_a_real_one_to_the_console(
    consoles: io.StringIO, quiet: QuietRayLogs, tmp_path: Path
) -> None:
    real = f"a real problem {uuid.uuid4().hex}"
    logging.getLogger("ray.data.dataset").warning(NO_CPU)  # Ray Data's own console handler
    logging.getLogger("ray.train.v2.cleaner").warning(HARMLESS[2])  # the ray logger's handler
    logging.getLogger("ray.data.dataset").warning(real)
    err = consoles.getvalue()
    assert real in err
    assert "available CPUs" not in err and "Train Controller" not in err
    assert quiet.path == str(tmp_path / "quiet.log")
    text = (tmp_path / "quiet.log").read_text()
    assert "available CPUs" in text and "Train Controller" in text and real not in text
    quiet.close()  # everything taken back: the notice shows again
    logging.getLogger("ray.data.dataset").warning(NO_CPU)
    assert "available CPUs" in consoles.getvalue()


def test_notices_before_the_log_file_is_known_wait_for_it(consoles: io.StringIO, tmp_path: Path) -> None:
    quiet = quiet_ray_logs()  # before ray.init: no session folder yet
    try:
        logging.getLogger("ray").warning(HARMLESS[5])
        assert "Token authentication" not in consoles.getvalue()
        quiet.attach(str(tmp_path / "later.log"))
        assert "Token authentication" in (tmp_path / "later.log").read_text()
    finally:
        quiet.close()


def test_python_warnings_are_filtered_too(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as shown:  # what Python would print
        warnings.simplefilter("always")
        quiet = QuietRayLogs(str(tmp_path / "quiet.log"))
        quiet.filter_warnings()
        warnings.warn("`ExecutionOptions.exclude_resources` is deprecated and will be removed", FutureWarning)
        warnings.warn("this one matters", UserWarning)
        quiet.close()
    assert [str(w.message) for w in shown] == ["this one matters"]
    assert "exclude_resources" in (tmp_path / "quiet.log").read_text()


def test_worker_lines_forwarded_by_ray(ray_local: None, quiet: QuietRayLogs, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Lines of workers and actors reach the driver through Ray's own printer, which is wrapped."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    assert quiet.filter_worker_lines()
    tag = uuid.uuid4().hex
    dispatcher.emit({"ip": "127.0.0.1", "localhost": "127.0.0.1", "pid": 4242, "job": "", "is_err": True,
                     "actor_name": "PlacementGroupCleaner", "task_name": "",
                     "lines": [f"{HARMLESS[2]} {tag}", "", "   ", f"worker says {tag}"]})
    err = capsys.readouterr().err
    shown = [line for line in err.splitlines() if tag in line]
    assert len(shown) == 1 and f"worker says {tag}" in shown[0] and "pid=4242" in shown[0]
    assert not any(line.rstrip().endswith(")") and "pid=4242" in line for line in err.splitlines())  # no blank line
    assert f"(PlacementGroupCleaner pid=4242) {HARMLESS[2]} {tag}" in (tmp_path / "quiet.log").read_text()
    quiet.close()
    printers = [fn for name, fn in dispatcher.handlers if name == "ray_print_logs"]
    assert len(printers) == 1 and not getattr(printers[0], "raysegment_quiet", False)  # Ray's own printer back


def test_an_unwritable_log_file_never_fails_the_job(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    quiet = QuietRayLogs()
    try:
        quiet.attach(str(blocker / "quiet.log"))  # its folder cannot be made
        assert quiet.path is None
        quiet.sink.handle(logging.makeLogRecord({"msg": NO_CPU}))  # still kept from the terminal, in memory
    finally:
        quiet.close()
