"""Value objects that travel as JSON (the run manifest, window rows, ``meta``) come back equal."""

from __future__ import annotations

import json

import pytest

from raysegment.infer.tiled_stages import Tiling
from raysegment.io.scenes.base import Georef


@pytest.mark.parametrize("tiling", [
    Tiling((256, 512), (32, 64)),
    Tiling((64, 96, 96), (16, 24, 24), blend="constant", align=(16, 16, 16), margin=(2, 3, 4)),
])
def test_tiling_survives_a_json_trip(tiling: Tiling) -> None:
    data = json.loads(json.dumps(tiling.to_json()))
    assert data["tile"] == list(tiling.tile) and data["margin"] == list(tiling.margin)  # lists, as stored
    back = Tiling.from_json(data)
    assert back == tiling and isinstance(back.tile, tuple) and isinstance(back.align, tuple)


def test_tiling_from_json_refuses_an_unknown_key() -> None:
    with pytest.raises(TypeError, match="stride"):
        Tiling.from_json({"tile": [8, 8], "overlap": [2, 2], "stride": 4})


def test_georef_survives_a_json_trip() -> None:
    import dataclasses

    georef = Georef("EPSG:32618", (0.5, 0.0, 500000.0, 0.0, -0.5, 4200000.0), (500000.0, 4199000.0, 500500.0, 4200000.0),
                    None)
    back = Georef.from_json(json.loads(json.dumps(dataclasses.asdict(georef))))
    assert back == georef and isinstance(back.transform, tuple)
