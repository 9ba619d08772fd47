"""Regions: the text a user writes -> pixel boxes on a scene, identical for train and eval."""

from __future__ import annotations

import json

import pytest

from raysegment.errors import InputSpecError
from raysegment.io.regions import box_pixels, boxes_overlap, parse_region

# SpaceNet-like grid: 0.5 m pixels, origin (733601, 3725139)
TRANSFORM = (0.5, 0.0, 733601.0, 0.0, -0.5, 3725139.0)


@pytest.mark.parametrize(
    ("spec", "shape", "boxes"),
    [
        ("east:0.3", (900, 900), [((0, 900), (630, 900))]),
        ("west:0.3", (900, 900), [((0, 900), (0, 270))]),
        ("south:0.25", (100, 40), [((75, 100), (0, 40))]),
        ("north:0.25", (100, 40), [((0, 25), (0, 40))]),
        ("depth:0.2", (35, 50, 40), [((28, 35), (0, 50), (0, 40))]),
        ("east:0.5", (10, 20, 30), [((0, 10), (0, 20), (15, 30))]),
        ("pixels:10,20,30,40", (100, 100), [((10, 30), (20, 40))]),
        ("pixels:10,20,300,400", (100, 100), [((10, 100), (20, 100))]),
        ("pixels:200,200,300,300", (100, 100), []),
        ("pixels:1,2,3,4,5,6", (10, 10, 10), [((1, 4), (2, 5), (3, 6))]),
    ],
)
def test_pixel_regions(spec, shape, boxes):
    assert parse_region(spec).pixel_boxes(shape) == boxes


def test_bbox_in_crs_units_widens_to_whole_pixels():
    # x 733611..733621 -> cols 20..40; y 3725129..3725134 -> rows 10..20; a half-pixel edge widens outward
    region = parse_region("bbox:733611,3725129,733621,3725134")
    assert region.pixel_boxes((900, 900), transform=TRANSFORM) == [((10, 20), (20, 40))]
    assert parse_region("bbox:733611.2,3725129,733621,3725134").pixel_boxes((900, 900), TRANSFORM) == [((10, 20), (20, 40))]
    assert parse_region("bbox:733611.6,3725129,733621,3725134").pixel_boxes((900, 900), TRANSFORM) == [((10, 20), (21, 40))]


def test_vector_region_is_the_boxes_of_its_geometries(tmp_path):
    pytest.importorskip("geopandas")
    # a square of 10 x 10 m at x 733651..733661, y 3725089..3725099 -> rows 80..100, cols 100..120
    square = [[733651, 3725089], [733661, 3725089], [733661, 3725099], [733651, 3725099], [733651, 3725089]]
    path = tmp_path / "val.geojson"
    path.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [square]}}]}))
    boxes = parse_region(str(path)).pixel_boxes((900, 900), transform=TRANSFORM, crs="EPSG:32616")
    assert boxes == [((80, 100), (100, 120))]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("east:1.5", "in (0, 1)"),
        ("east:x", "not a fraction"),
        ("bbox:1,2,3", "expected 4 numbers"),
        ("bbox:3,2,1,4", "left < right"),
        ("pixels:1,2,3", "4 (2D) or 6"),
        ("pixels:1.5,2,3,4", "whole numbers"),
        ("nowhere", "is not one of"),
        ("", "empty region"),
    ],
)
def test_bad_region_is_one_line(spec, message):
    with pytest.raises(InputSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_region(spec)


def test_map_regions_need_georeferencing_and_sides_need_the_axis():
    with pytest.raises(InputSpecError, match="no georeferencing"):
        parse_region("bbox:0,0,1,1").pixel_boxes((10, 10))
    with pytest.raises(InputSpecError, match="needs a volume"):
        parse_region("depth:0.3").pixel_boxes((10, 10))
    with pytest.raises(InputSpecError, match="needs 4"):
        parse_region("pixels:1,2,3,4,5,6").pixel_boxes((10, 10))


def test_overlap_and_size():
    a, b, c = ((0, 10), (0, 10)), ((9, 20), (9, 20)), ((10, 20), (0, 10))
    assert boxes_overlap(a, b) and not boxes_overlap(a, c)
    assert box_pixels(a) == 100 and box_pixels(((0, 2), (0, 3), (0, 4))) == 24
