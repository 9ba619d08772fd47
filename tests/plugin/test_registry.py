"""Plugin discovery through entry points, with broken and duplicate plugins beside good ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_fixtures import broken_plugins, duplicate_unet

from raysegment.plugin.registry import PluginLoadError, UnknownModelError, discover


def test_broken_plugins_are_reported_and_the_good_one_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(broken_plugins(tmp_path)))
    reg = discover()
    assert "unet" in reg.names()
    assert reg.create("unet", {"depth": 2, "base_channels": 4}).build() is not None
    assert "nonexistent_lib" in reg.broken["broken"].error and reg.broken["broken"].distribution == "broken-plugin"
    assert "not a subclass" in reg.broken["notamodel"].error
    with pytest.raises(PluginLoadError, match="broken-plugin.*nonexistent_lib"):
        reg.get("broken")
    with pytest.raises(UnknownModelError, match=r"installed: .*\bunet\b"):
        reg.get("nope")


def test_duplicate_names_are_an_error_naming_both_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(duplicate_unet(tmp_path)))
    reg = discover()
    assert "unet" not in reg.names()
    error = reg.broken["unet"].error
    assert "copycat-unet" in error and "raysegment-unet" in error
    with pytest.raises(PluginLoadError, match="duplicate"):
        reg.get("unet")


def _cli(*args: str, env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(env_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "raysegment.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_models_list_cli_shows_good_and_broken(tmp_path: Path) -> None:
    proc = _cli("models", "list", "--json", env_path=broken_plugins(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["unet"]["status"] == "ok" and rows["unet"]["distribution"] == "raysegment-unet"
    assert rows["broken"]["status"] == "broken" and "nonexistent_lib" in rows["broken"]["error"]
    text = _cli("models", "list", env_path=tmp_path)
    assert "BROKEN" in text.stdout and "unet" in text.stdout


def test_models_show_and_check_cli() -> None:
    show = _cli("models", "show", "unet")
    assert show.returncode == 0 and "base_channels (int, default 64)" in show.stdout
    assert "parameter count (defaults): 31,030,658" in show.stdout
    check = _cli("models", "check", "unet", "--param", "depth=2", "--param", "base_channels=4")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FAIL" not in check.stdout and "rle_roundtrip" in check.stdout
