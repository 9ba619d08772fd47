"""COCO instance annotations as semantic ground truth.

A COCO file describes objects (polygons or RLE, crowd or not); evaluation and
training want one class id per pixel. :class:`CocoSemantic` paints each image's
annotations into an (H, W) label map with contiguous class ids: 0 is
background and the categories, sorted by id, are 1..N. A category with id 0
(labelme and VOC exporters write one named ``_background_``) *is* the
background: it keeps class 0 and lends it its name, so VOC-style files keep
their VOC class numbers.

Masks travel through Ray Data as strings: a plain mask-image URI, or a
``coco+<annotation_uri>#<image_id>`` reference made by :func:`coco_ref`;
:func:`load_mask` turns either into an array on the worker.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from raysegment.errors import InputSpecError
from raysegment.io.decoders import decode
from raysegment.io.sources import list_inputs
from raysegment.plugin.contract import Modality
from raysegment.uri import read_bytes, redact

__all__ = ["CocoSemantic", "coco_ref", "parse_coco_ref", "load_mask", "image_key", "COCO_REF_PREFIX"]

COCO_REF_PREFIX = "coco+"


def image_key(uri_or_file_name: str) -> str:
    """The basename that matches an image file to a COCO ``file_name`` (folders may differ)."""
    return posixpath.basename(uri_or_file_name.split("?", 1)[0].replace("\\", "/"))


class CocoSemantic:
    """One COCO annotation file, able to paint semantic masks for its images."""

    def __init__(self, data: Mapping[str, Any], source: str = "<dict>") -> None:
        self.source = redact(source)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"COCO file {self.source} has no '{key}' list; is it a COCO instances file?")
        coco = COCO()  # built from the dict: no temporary file
        coco.dataset = dict(data)
        _quiet_index(coco)
        self.coco = coco
        cats = sorted(coco.cats.values(), key=lambda c: int(c["id"]))
        rest = [c for c in cats if int(c["id"]) != 0]
        first = [str(c["name"]) for c in cats if int(c["id"]) == 0] or ["background"]
        #: COCO category id -> contiguous class id.
        self.class_of_category: dict[int, int] = {int(c["id"]): i for i, c in enumerate(rest, start=1)}
        if len(rest) < len(cats):
            self.class_of_category[0] = 0
        self.class_names: tuple[str, ...] = (first[0], *(str(c["name"]) for c in rest))
        self.image_ids_by_file_name: dict[str, int] = {}
        for img in coco.imgs.values():
            name = image_key(str(img.get("file_name", "")))
            if name in self.image_ids_by_file_name:
                raise ValueError(f"COCO file {self.source} has two images named {name!r}; basenames must be unique")
            self.image_ids_by_file_name[name] = int(img["id"])

    @classmethod
    def load(cls, annotation_uri: str, storage_options: dict | None = None) -> CocoSemantic:
        """Read and index a COCO JSON file from any fsspec URL."""
        try:
            raw = read_bytes(annotation_uri, storage_options)
        except FileNotFoundError:
            raise InputSpecError(f"COCO file not found: {redact(annotation_uri)}") from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"COCO file {redact(annotation_uri)} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"COCO file {redact(annotation_uri)} holds a JSON {type(data).__name__}, not an object")
        return cls(data, annotation_uri)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def mask_for(self, image_id: int) -> np.ndarray:
        """The (H, W) class-id map of one image; 0 where no annotation covers.

        Annotations are painted largest first, so where objects overlap the
        smaller one (usually the one in front: a bottle held by a person) stays
        on top; ties keep file order. Crowd regions are painted as their class.
        The dtype is uint8 while class ids fit below 255 (the usual ignore
        value), else uint16.
        """
        if image_id not in self.coco.imgs:
            raise KeyError(f"COCO file {self.source} has no image with id {image_id}")
        img = self.coco.imgs[image_id]
        h, w = int(img["height"]), int(img["width"])
        dtype = np.uint8 if self.num_classes <= 255 else np.uint16
        out = np.zeros((h, w), dtype=dtype)
        painted = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            cls = self.class_of_category.get(int(ann["category_id"]))
            if cls is None:
                raise ValueError(f"COCO file {self.source}: annotation {ann.get('id')} has unknown "
                                 f"category_id {ann['category_id']}")
            rle = self.coco.annToRLE(ann)
            painted.append((-int(mask_utils.area(rle)), len(painted), cls, rle))
        for _, _, cls, rle in sorted(painted, key=lambda p: p[:2]):
            out[mask_utils.decode(rle).astype(bool)] = cls
        return out

    def pairs(self, images: str, storage_options: dict | None = None) -> tuple[list[tuple[str, int]], list[str]]:
        """Listed images matched to COCO images by basename, plus the URIs that found none."""
        matched, unmatched = [], []
        for uri in list_inputs(images, storage_options):
            image_id = self.image_ids_by_file_name.get(image_key(uri))
            if image_id is None:
                unmatched.append(uri)
            else:
                matched.append((uri, image_id))
        return matched, unmatched


def _quiet_index(coco: COCO) -> None:
    """``COCO.createIndex`` prints progress lines; keep them off the CLI's stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()


def coco_ref(annotation_uri: str, image_id: int) -> str:
    """A string naming one image's mask inside a COCO file, fit for a Ray Data column."""
    return f"{COCO_REF_PREFIX}{annotation_uri}#{int(image_id)}"


def parse_coco_ref(ref: str) -> tuple[str, int] | None:
    """``coco+<uri>#<id>`` -> (uri, id); None for anything else (a plain mask URI)."""
    if not ref.startswith(COCO_REF_PREFIX):
        return None
    uri, sep, image_id = ref[len(COCO_REF_PREFIX):].rpartition("#")
    try:
        return (uri, int(image_id)) if sep and uri else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=4)
def _cached(annotation_uri: str, options_json: str) -> CocoSemantic:
    # Keyed on the options too: the same URL may be read with other credentials.
    return CocoSemantic.load(annotation_uri, json.loads(options_json) or None)


def load_mask(ref_or_uri: str, storage_options: dict | None = None, modality: Modality = Modality.IMAGE) -> np.ndarray:
    """A mask reference -> array of raw values: a COCO ref, or a label file's first band.

    Label files are decoded like their inputs, by the model's ``modality``: a mask image
    gives (H, W), a label volume (D, H, W). A worker parses each COCO file once (kept in
    a small per-process cache).
    """
    parsed = parse_coco_ref(ref_or_uri)
    if parsed is not None:
        uri, image_id = parsed
        return _cached(uri, json.dumps(storage_options or {}, sort_keys=True)).mask_for(image_id)
    data = decode(ref_or_uri, read_bytes(ref_or_uri, storage_options), modality).data
    rank = 3 if Modality(modality) is Modality.VOLUME else 2
    return data[..., 0] if data.ndim > rank else data
