"""The driver's progress bar: counts, when it shows, and Ray Data's bars while it does."""

from __future__ import annotations

import io

import pytest

from raysegment.progress import ENV, Progress, progress, progress_enabled


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_counts_update_with_or_without_a_bar() -> None:
    for enabled in (False, True):
        out = io.StringIO()
        with progress(10, "infer", enabled=enabled, file=out) as bar:
            bar.update(3)
            bar.update()
            assert bar.done == 4
            bar.set(9)
            bar.set(2)  # a polled count never goes back
            assert bar.done == 9
        assert bool(out.getvalue()) == enabled


def test_a_bar_shows_done_total_rate_and_eta() -> None:
    out = Terminal()
    with progress(8, "stats", unit="item", file=out) as bar:
        assert bar.enabled
        bar.update(2)
        bar.update(6)
    text = out.getvalue()
    assert "stats" in text and "8/8" in text and "item/s" in text
    assert "<" in text  # tqdm's elapsed<remaining: the ETA


def test_off_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert not progress_enabled(io.StringIO())
    with progress(5, "eval") as bar:  # pytest's captured stderr is no terminal
        assert not bar.enabled
        bar.update(5)
    assert bar.done == 5
    assert capsys.readouterr().err == ""


def test_the_environment_switches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_enabled(Terminal())
    monkeypatch.setenv(ENV, "0")
    assert not progress_enabled(Terminal())
    out = Terminal()
    with progress(3, "infer", file=out) as bar:
        bar.update(3)
    assert out.getvalue() == "" and bar.done == 3
    monkeypatch.setenv(ENV, "1")  # forced on, off a terminal too
    assert progress_enabled(io.StringIO())
    out = io.StringIO()
    with progress(3, "infer", file=out) as bar:
        bar.update(3)
    assert "3/3" in out.getvalue()
    assert Progress(3, "x", enabled=False, file=Terminal()).enabled is False  # code overrides both


def test_an_unknown_total_still_counts() -> None:
    out = io.StringIO()
    with progress(None, "eval", unit="row", enabled=True, file=out) as bar:
        bar.update(7)
    assert "7" in out.getvalue() and "row" in out.getvalue()


def test_follow_polls_a_count_and_takes_the_last_one_at_the_end() -> None:
    state = {"rows": 0}
    for enabled in (False, True):
        bar = progress(10, "infer", enabled=enabled, file=io.StringIO())
        with bar, bar.follow(lambda: state["rows"], interval=0.01):
            state["rows"] = 6
        assert bar.done == 6
        state["rows"] = 0


def test_a_failing_count_never_fails_the_job() -> None:
    def broken() -> int:
        raise OSError("listing failed")

    with progress(4, "infer", enabled=True, file=io.StringIO()) as bar, bar.follow(broken, interval=0.01):
        bar.update(1)
    assert bar.done == 1


def test_ray_datas_bars_are_off_while_ours_shows_and_back_after() -> None:
    pytest.importorskip("ray.data")
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.enable_progress_bars
    try:
        context.enable_progress_bars = True
        with progress(2, "stats", enabled=True, file=io.StringIO()):
            assert DataContext.get_current().enable_progress_bars is False
        assert context.enable_progress_bars is True
        with progress(2, "stats", enabled=False):  # no bar of ours: Ray Data keeps its own
            assert context.enable_progress_bars is True
    finally:
        context.enable_progress_bars = before
