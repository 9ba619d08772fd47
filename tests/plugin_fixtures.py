"""Installable-looking plugin distributions made on the fly, for registry tests.

Each is a ``*.dist-info`` folder with ``entry_points.txt`` beside a module, on a
path that tests prepend to ``sys.path`` or ``PYTHONPATH``: exactly how an
installed third-party plugin is found.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[raysegment.models]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def broken_plugins(root: Path) -> Path:
    """One plugin whose import fails and one whose class breaks the contract."""
    make_dist(root, "broken-plugin", {"broken": "broken_plugin_mod:Model"},
              {"broken_plugin_mod": "raise ImportError(\"No module named 'nonexistent_lib'\")\n"})
    make_dist(root, "odd-plugin", {"notamodel": "odd_plugin_mod:Thing"},
              {"odd_plugin_mod": "class Thing:\n    pass\n"})
    return root


def duplicate_unet(root: Path) -> Path:
    """A second distribution that also registers the name ``unet``."""
    return make_dist(root, "copycat-unet", {"unet": "copycat_mod:Model"},
                     {"copycat_mod": "from raysegment_unet.plugin import UNet as Model\n"})
