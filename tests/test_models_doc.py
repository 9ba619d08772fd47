"""docs/models.md is generated from the registry; it must match what the generator writes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_models_doc_is_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_models_doc.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_models_show_prints_paper_count_and_stride() -> None:
    proc = subprocess.run([sys.executable, "-m", "raysegment.cli", "models", "show", "unet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "arXiv:1505.04597" in out and "output stride: 16" in out
    assert "parameter count (defaults): 31,030,658" in out and "paper: 31" in out
