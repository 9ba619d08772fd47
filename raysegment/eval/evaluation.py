"""Scoring an inference output against ground truth, on Ray.

The CLI's ``eval`` is a thin wrapper over :func:`evaluate`. Ground truth is a
mask folder/prefix (matched by file stem through a pairing rule), a CSV/Parquet
manifest with ``image_uri`` and ``mask_uri`` (matched by image URI), or a COCO
annotation ``.json`` (matched by file basename), or vector labels (GeoJSON,
GeoParquet, shapefile, GeoPackage: every georeferenced 2D row is scored against
the polygons burnt onto its own grid, see :mod:`raysegment.eval.scoring`). A
``region`` leaves every pixel outside it unscored. Ray Data reads the output's
part files; each task decodes its rows' label maps, loads their masks and
returns one partial metric accumulator of the run model's task spec (semantic: a
confusion matrix over label maps), and the driver merges those exactly:
no mask ever reaches the driver, so memory does not grow with the dataset.

A row that cannot be compared is counted, never fatal: an error row of the
run, no ground truth, a mask of another size, or a failure (unreadable mask,
a label outside the classes after ``mask_values``), with the first few named.

Pixels no segment covers (instance outputs leave them; semantic outputs tile
the image) are predicted class 0, which is background in COCO-style numbering
and in :mod:`raysegment.io.coco`: "no object here" is a background prediction.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raysegment.criteria.metrics import SegmentationMetrics
from raysegment.errors import describe_error
from raysegment.eval.scoring import (
    VectorTruth,
    parse_region_spec,
    region_boxes,
    region_mask,
    score_against_vector,
    score_pixels,
)
from raysegment.io.coco import CocoSemantic, coco_ref, image_key, load_mask
from raysegment.io.sources import list_inputs, read_manifest
from raysegment.io.vector_labels import holds_vector_labels
from raysegment.output.root import OutputRoot
from raysegment.plugin.contract import SegmentationModel, Task, class_names_from
from raysegment.plugin.registry import PluginLoadError, UnknownModelError, get_registry
from raysegment.progress import progress
from raysegment.runtime import ensure_ray
from raysegment.tasks.spec import task_spec

# One stem rule and one mask-value mapping for training and evaluation.
from raysegment.train.data import apply_value_map, parse_value_map
from raysegment.uri import redact, stem

__all__ = ["EvalResult", "evaluate"]

EXAMPLES = 5  # problem URIs kept per kind, for the report
ROWS_PER_TASK = 16
_COUNTS = ("rows", "matched", "missing", "skipped_error_rows", "size_mismatch", "failed", "ignored_pixels",
           "outside_region")


@dataclasses.dataclass
class EvalResult:
    """Metrics over every matched row, and what could not be compared and why."""

    pred: str
    gt: str
    metrics: SegmentationMetrics
    rows: int  # rows in the output
    matched: int  # rows compared pixel by pixel
    missing: int  # ok rows with no ground truth
    missing_gt: list[str]  # the first few of those
    skipped_error_rows: int  # error rows of the inference run
    size_mismatch: int  # ground truth of another size than the prediction
    failed: int  # rows that could not be compared: unreadable mask, a label outside the classes
    problems: list[str]  # the first few "uri: reason" of size mismatches and errors
    ignored_pixels: int = 0  # ground-truth pixels at the ignore index (not scored)
    ignore_index: int = 255
    mask_values_given: bool = False
    region: str | None = None  # the --region spec scored, None for every pixel
    outside_region: int = 0  # ok rows the region does not touch (not scored)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the counts, examples and :meth:`SegmentationMetrics.to_dict`."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "metrics"}
        return {**out, "class_names": list(self.metrics.class_names), "metrics": self.metrics.to_dict()}

    def format(self) -> str:
        lines = [self.metrics.format_table(),
                 f"rows {self.rows}  matched {self.matched}  missing gt {self.missing}  "
                 f"error rows skipped {self.skipped_error_rows}  size mismatch {self.size_mismatch}  "
                 f"failed {self.failed}" + (f"  outside region {self.outside_region}" if self.region else "")]
        if self.region:
            lines.append(f"scored inside region {self.region} only")
        lines += [f"  no ground truth: {uri}" for uri in self.missing_gt]
        lines += [f"  {p}" for p in self.problems]
        absent = [n for n, iou in zip(self.metrics.class_names, self.metrics.iou) if iou != iou]  # NaN
        if absent:
            lines.append(f"classes absent from both prediction and truth (no IoU, left out of the means): "
                         f"{', '.join(absent)}")
        if self.ignored_pixels and not self.mask_values_given:
            lines.append(f"warning: {self.ignored_pixels:,} ground-truth pixel(s) have value {self.ignore_index} = "
                         f"--ignore-index and are not scored; if they are a class (a 0/{self.ignore_index} mask), "
                         f"pass --mask-values, e.g. 0:0,{self.ignore_index}:1")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _GtIndex:
    """Maps a prediction row's URI to its mask reference; shipped to every task."""

    kind: str  # "stem" | "uri" | "basename" | "vector"
    lookup: Mapping[str, str]
    pair: str = "{stem}"
    vector: VectorTruth | None = None  # kind "vector": one polygon file for every row

    def ref_for(self, uri: str) -> str | None:
        if self.vector is not None:
            return self.vector.uri
        if self.kind == "stem":
            return self.lookup.get(self.pair.format(stem=stem(uri)))
        if self.kind == "basename":
            return self.lookup.get(image_key(uri))
        return self.lookup.get(uri)


def _gt_index(gt: str, pair: str, storage_options: dict | None,
              label_field: str | None = None) -> tuple[_GtIndex, CocoSemantic | None]:
    """Resolve the ground-truth spec once, on the driver, before Ray starts."""
    if holds_vector_labels(gt, storage_options):
        truth = VectorTruth(gt, label_field, storage_options)
        truth.check()
        return _GtIndex("vector", {}, vector=truth), None
    if label_field is not None:
        raise ValueError(f"--label-field applies to vector label ground truth only, not {redact(gt)}")
    lowered = gt.lower().split("?", 1)[0]
    if lowered.endswith(".json"):
        coco = CocoSemantic.load(gt, storage_options)
        refs = {name: coco_ref(gt, image_id) for name, image_id in coco.image_ids_by_file_name.items()}
        return _GtIndex("basename", refs), coco
    if lowered.endswith((".csv", ".parquet")):
        cols = read_manifest(gt, ["image_uri", "mask_uri"], storage_options)
        # Output rows hold redacted URIs, so match on the redacted form.
        return _GtIndex("uri", {redact(i): m for i, m in zip(cols["image_uri"], cols["mask_uri"])}), None
    if "{stem}" not in pair:
        raise ValueError(f"--pair must contain {{stem}}, got {pair!r}")
    by_stem: dict[str, str] = {}
    for uri in list_inputs(gt, storage_options):
        by_stem.setdefault(stem(uri), uri)
    return _GtIndex("stem", by_stem, pair), None


_LABEL_NAMES = "__label_names__"  # the output's own names, kept apart from the plugin's parameters


def _run_model(pred_files: Sequence[str], fs: Any) -> tuple[str | None, dict[str, Any]]:
    """The run's model name and resolved parameters (plus its label names), from the first row."""
    import pyarrow.parquet as pq

    with fs.open(pred_files[0], "rb") as f:
        first = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=["model"]), None)
        model = first.column(0)[0].as_py() if first is not None and first.num_rows else None
    try:
        params = json.loads((model or {}).get("params") or "{}")
    except json.JSONDecodeError:
        params = {}
    if (model or {}).get("label_names"):
        params[_LABEL_NAMES] = list(model["label_names"])
    return (model or {}).get("name"), params


def _run_task(name: str | None) -> Task:
    """The task of the run's model, by its installed plugin; a model not installed here has the contract's default."""
    try:
        return get_registry().get(name).cls.task if name else SegmentationModel.task
    except (UnknownModelError, PluginLoadError):
        return SegmentationModel.task


def _label_names(params: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Names by output label as inference wrote them (sigmoid models add background)."""
    if params.get(_LABEL_NAMES):
        return tuple(params[_LABEL_NAMES])
    if "num_classes" not in params:
        return None
    names = class_names_from(params.get("class_names") or "", int(params["num_classes"]))
    return ("background", *names) if len(names) == 1 else names


def _evaluate_batch(batch: Any, *, index: _GtIndex, task: Task, num_classes: int, value_map: Mapping[int, int],
                    ignore_index: int, storage_options: dict | None, region: str | None = None) -> dict[str, np.ndarray]:
    """A block of output rows -> one row: the partial metric accumulator (pickled) and the counts."""
    spec = task_spec(task)
    area = parse_region_spec(region) if region else None
    acc = spec.require("metric", "evaluation")(num_classes, ignore_index)
    counts = dict.fromkeys(_COUNTS, 0)
    missing: list[str] = []
    problems: list[str] = []
    names: dict[int, str] = {}
    for row in batch.to_pylist():
        counts["rows"] += 1
        if row["status"] != "ok":
            counts["skipped_error_rows"] += 1
            continue
        ref = index.ref_for(row["uri"])
        if ref is None:
            counts["missing"] += 1
            missing.append(row["uri"])
            continue
        for seg in row["segments"] or []:
            names.setdefault(int(seg["label"]), seg["label_name"])
        try:
            pred = spec.row_prediction(row)  # semantic: the label map, uncovered pixels background
            boxes = region_boxes(area, pred.shape, row)  # None: every pixel
            if boxes is not None and not boxes:
                counts["outside_region"] += 1
                continue
            if index.vector is not None:
                ignored = score_against_vector(acc, pred, row, index.vector, boxes, value_map, ignore_index)
            else:
                target = apply_value_map(load_mask(ref, storage_options), value_map)
                if target.shape != pred.shape:
                    counts["size_mismatch"] += 1
                    problems.append(f"{row['uri']}: mask is {target.shape[1]}x{target.shape[0]} "
                                    f"but the prediction is {pred.shape[1]}x{pred.shape[0]}")
                    continue
                mask = region_mask(pred.shape, boxes) if boxes is not None else None
                ignored = score_pixels(acc, pred, target, mask, ignore_index)
            counts["matched"] += 1
            counts["ignored_pixels"] += ignored
        except Exception as exc:
            counts["failed"] += 1
            problems.append(f"{row['uri']}: {describe_error(exc)}")
    out: dict[str, np.ndarray] = {k: np.array([v], dtype=np.int64) for k, v in counts.items()}
    out["accumulator"] = np.array([pickle.dumps(acc)], dtype=object)  # merged on the driver, exactly
    out["examples"] = np.array([json.dumps({"missing": missing[:EXAMPLES], "problems": problems[:EXAMPLES],
                                            "names": names})], dtype=object)
    return out


def _resolve_classes(params: Mapping[str, Any], coco: CocoSemantic | None, num_classes: int | None,
                     class_names: Sequence[str] | None) -> tuple[int, tuple[str, ...], bool]:
    """(K, names, whether the names are final) before any row is read.

    Names given by the caller or the COCO file are final; otherwise the
    segments' label names (which carry checkpoint names) refine them later.
    """
    names = _label_names(params)
    k = num_classes or (len(names) if names else None)
    if coco is not None:
        if k is not None and k != coco.num_classes:
            raise ValueError(f"the predictions have {k} classes but COCO file {coco.source} has "
                             f"{coco.num_classes} (background + {coco.num_classes - 1} categories)")
        k, names = coco.num_classes, coco.class_names
    if k is None:
        raise ValueError("the output's model parameters give no num_classes; pass num_classes")
    if class_names is not None:
        if len(class_names) != k or len(set(class_names)) != k:
            raise ValueError(f"{len(class_names)} class names given for {k} classes; give {k} distinct names")
        return k, tuple(class_names), True
    if names is None or len(names) != k:
        names = tuple(f"class_{i}" for i in range(k))
    return k, names, coco is not None


def evaluate(pred: str, gt: str, *, pair: str = "{stem}", mask_values: str | Mapping[int, int] = "",
             num_classes: int | None = None, class_names: Sequence[str] | None = None, ignore_index: int = 255,
             storage_options: dict | None = None, address: str | None = None, label_field: str | None = None,
             region: str | None = None) -> EvalResult:
    """Score the output root ``pred`` against ``gt``; see the module docstring for the GT forms.

    ``label_field`` names the integer column burnt as the class of each polygon
    when ``gt`` is a vector label file (default: every polygon is class 1).
    ``region`` (``east:0.3``, ``bbox:L,B,R,T``, ``pixels:R0,C0,R1,C1``, a vector
    file; see :mod:`raysegment.io.regions`) scores only the pixels inside it.

    Classes default to the run's model parameters and the segments' label
    names (a COCO ground truth brings its own names and must have as many).
    Reuses an initialised Ray, else starts one (or joins ``address``) and
    stops it again.
    """
    value_map = parse_value_map(mask_values)
    root = OutputRoot(pred, storage_options)
    files = root.part_files()  # none: "not a raysegment output", one line before Ray starts
    index, coco = _gt_index(gt, pair, storage_options, label_field)
    if region:
        parse_region_spec(region)  # a bad spec is one line before Ray starts
    model_name, params = _run_model(files, root.fs)
    task = _run_task(model_name)
    spec = task_spec(task)
    for capability in ("metric", "row_prediction"):
        spec.require(capability, "evaluation")  # one line before Ray starts
    k, names, final = _resolve_classes(params, coco, num_classes, class_names)
    if 0 <= ignore_index < k:
        raise ValueError(f"ignore index {ignore_index} is one of the {k} class ids; pick another")

    import pyarrow.fs as pafs
    import ray
    import ray.data

    started = ensure_ray(address)
    bar = None
    try:
        bar = progress(root.item_count(), "eval", unit="row")  # before the dataset: it copies Ray Data's settings
        ds = ray.data.read_parquet(files, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(root.fs)),
                                   columns=["uri", "status", "height", "width", "segments",
                                            *(("depth", "crs", "transform") if region or index.vector else ())])
        ds = ds.map_batches(_evaluate_batch, batch_size=ROWS_PER_TASK, batch_format="pyarrow", num_cpus=1,
                            fn_kwargs={"index": index, "task": task, "num_classes": k, "value_map": value_map,
                                       "ignore_index": ignore_index, "storage_options": storage_options,
                                       "region": region})
        total = spec.metric(k, ignore_index)
        counts = dict.fromkeys(_COUNTS, 0)
        missing: list[str] = []
        problems: list[str] = []
        seen: dict[int, str] = {}
        for part in ds.iter_batches(batch_format="numpy", batch_size=None):  # per block: a steady bar
            for blob in part["accumulator"]:
                total.merge(pickle.loads(blob))  # our own tasks' accumulators, never outside data
            for key in _COUNTS:
                counts[key] += int(part[key].sum())
            bar.update(int(part["rows"].sum()))
            for text in part["examples"]:
                ex = json.loads(text)
                missing += ex["missing"][: EXAMPLES - len(missing)]
                problems += ex["problems"][: EXAMPLES - len(problems)]
                for label, name in ex["names"].items():
                    seen.setdefault(int(label), name)
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    if not counts["matched"]:
        first = problems[0] if problems else (f"no ground truth for {missing[0]}" if missing else
                                              f"region {region} touches no row" if counts["outside_region"] else "no ok rows")
        raise ValueError(f"no output row could be compared with {redact(gt)}: {first}")
    if not final:
        merged = tuple(seen.get(i, name) for i, name in enumerate(names))
        names = merged if len(set(merged)) == k else names
    metrics = total.metrics(names if len(set(names)) == k else None)
    return EvalResult(pred=root.shown, gt=redact(gt), metrics=metrics, missing_gt=missing, problems=problems,
                      ignore_index=ignore_index, mask_values_given=bool(value_map), region=region, **counts)
