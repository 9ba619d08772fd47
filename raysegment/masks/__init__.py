"""Masks: COCO RLE encoding of predictions and decoding of output rows (the public face).

:mod:`raysegment.masks.rle` encodes and decodes whole masks through pycocotools,
:mod:`raysegment.masks.rle_stream` builds one scene's RLE strip by strip, and
:mod:`raysegment.masks.scene_segments` turns merged strips into a row's segments.
"""

from raysegment.masks.rle import decode_counts, encode_masks, row_label_map, row_masks, segments_from_prediction

__all__ = ["encode_masks", "decode_counts", "segments_from_prediction", "row_masks", "row_label_map"]
