"""The ``raysegment`` command: a thin click layer over the Python API.

Exit codes (documented in the README):
  0  every item succeeded
  1  fatal error (one line on stderr, no traceback; RAYSEGMENT_DEBUG=1 shows it, redacted)
  2  bad command line (click's usage error)
  3  the run completed but some items are error rows
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ITEMS_FAILED = 0, 1, 2, 3

log = logging.getLogger("raysegment")


def _fail(exc: BaseException) -> NoReturn:
    """One redacted ``error:`` line and exit 1; Ray's multi-line dumps are read for what failed and why.

    With RAYSEGMENT_DEBUG=1 the exception goes on, and the traceback Python prints is redacted too.
    """
    from raysegment.errors import describe_fatal, redacting_excepthook

    if os.environ.get("RAYSEGMENT_DEBUG"):
        sys.excepthook = redacting_excepthook
        raise exc
    from raysegment.runtime import describe_failure

    click.echo(f"error: {describe_fatal(exc, describe_failure(exc))}", err=True)
    sys.exit(EXIT_FATAL)


class _Group(click.Group):
    """Turns any uncaught exception from a command into a one-line error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; rerun with --resume to finish", err=True)
            sys.exit(130)
        except Exception as exc:
            _fail(exc)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """raysegment: batch segmentation on Ray, masks to Parquet as COCO RLE."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    log.setLevel(logging.INFO if verbose else logging.WARNING)


# -- models ------------------------------------------------------------------------------
@main.group(cls=_Group)
def models() -> None:
    """List, describe and check installed model plugins."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_list(as_json: bool) -> None:
    """Installed models, and plugins that failed to load with the reason."""
    from raysegment.plugin.registry import get_registry

    reg = get_registry()
    rows = [
        {"name": i.name, "distribution": i.distribution, "version": i.version, "task": i.cls.task.value,
         "modality": i.cls.modality.value, "summary": i.cls.summary, "status": "ok", "error": None}
        for i in reg.plugins.values()
    ] + [
        {"name": b.name, "distribution": b.distribution, "version": None, "task": None, "modality": None,
         "summary": None, "status": "broken", "error": b.error}
        for b in reg.broken.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no model plugins installed (entry-point group 'raysegment.models')")
        return
    for r in rows:
        if r["status"] == "ok":
            click.echo(f"{r['name']:<16} {r['distribution']} {r['version']}  [{r['task']}, {r['modality']}]  {r['summary']}")
        else:
            click.echo(f"{r['name']:<16} {r['distribution']}  BROKEN: {r['error']}")


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def models_show(name: str, as_json: bool) -> None:
    """Parameters with defaults, paper, output stride and parameter count of the default build."""
    from raysegment.plugin.card import model_card

    card = model_card(name)
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(card), "bands": card.bands}, indent=2, default=str))
        return
    click.echo(f"{card.name}  ({card.distribution} {card.version})")
    click.echo(f"  task: {card.task}   modality: {card.modality}")
    if card.summary:
        click.echo(f"  {card.summary}")
    if card.paper:
        click.echo(f"  paper: {card.paper}")
    click.echo("  parameters:")
    for p in card.params:
        choices = f" one of {p['choices']}" if p["choices"] else ""
        click.echo(f"    {p['name']} ({p['type']}, default {p['default']!r}){choices}  {p['help']}")
    paper = f"; paper: {card.paper_parameters_m:g}M" if card.paper_parameters_m is not None else ""
    click.echo(f"  parameter count (defaults): {card.parameters:,} ({card.parameters / 1e6:.2f}M{paper})")
    if card.parameter_note:
        click.echo(f"    {card.parameter_note}")
    click.echo(f"  output stride: {card.output_stride or 'n/a'}   inputs padded to a multiple of {card.size_divisor}")
    click.echo(f"  input bands: {card.bands}")
    if card.smoke_params:
        click.echo(f"  smoke configuration: {json.dumps(card.smoke_params, sort_keys=True)}")


@models.command("check")
@click.argument("name")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Model parameter; repeatable.")
@click.option("--smoke", is_flag=True, help="Start from the model's small smoke configuration, not its defaults.")
def models_check(name: str, params: tuple[str, ...], smoke: bool) -> None:
    """Run the conformance kit (raysegment.testing.conformance) against an installed model."""
    from raysegment.plugin.registry import get_registry
    from raysegment.plugin.spec import parse_params
    from raysegment.testing import check_model, format_results

    base = dict(get_registry().get(name).cls.smoke_params) if smoke else {}
    results = check_model(name, {**base, **parse_params(params)})
    click.echo(format_results(results))
    if not all(r.ok for r in results):
        sys.exit(EXIT_FATAL)


# -- infer -------------------------------------------------------------------------------
def _actors(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    from raysegment.runtime import parse_actors

    try:
        return parse_actors(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> int | tuple[int, ...] | None:
    if value is None or value == "":
        return None
    try:
        sizes = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"expects an integer or comma-separated integers, got {value!r}") from None
    return sizes[0] if len(sizes) == 1 else sizes


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from raysegment.io.decode_budget import parse_size

    try:
        return None if value is None else parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("input")
@click.argument("output")
@click.option("--model", "-m", default=None, help="Model name (optional when the checkpoint names it).")
@click.option("--checkpoint", "-c", default=None, help="Checkpoint path or fsspec URL; random weights without it.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Model parameter; repeatable.")
@click.option("--batch-size", "-b", default=8, type=click.IntRange(min=1), help="Items per forward pass.")
@click.option("--actors", default=None, callback=_actors, metavar="N|MIN:MAX",
              help="Predictor pool size; MIN:MAX autoscales. [default: one per GPU, else 1]")
@click.option("--gpus-per-actor", default=None, type=click.FloatRange(min=0),
              help="GPUs per predictor actor; 0 forces CPU. [default: 1 where GPUs exist]")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Torch threads per CPU actor. [default: CPUs / actors]")
@click.option("--address", default=None, help="Ray cluster to join ('auto', ray://host:port). [default: embedded local Ray]")
@click.option("--resume", is_flag=True, help="Finish a previous run: redo only shards not committed.")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in OUTPUT.")
@click.option("--shard-size", default=256, type=click.IntRange(min=1), help="Items per output file (unit of resume).")
@click.option("--precision", default="fp32", type=click.Choice(["fp32", "bf16", "fp16"]), help="Autocast precision.")
@click.option("--channels-last", is_flag=True, help="Run the model in channels_last memory format.")
@click.option("--max-pixels", default=20000 * 20000, type=click.IntRange(min=1),
              help="Refuse images larger than this (decompression-bomb guard).")
@click.option("--max-decode-memory", default=None, callback=_size, metavar="SIZE",
              help="Most memory one item may take to decode and preprocess, e.g. 800MB, 2GiB. "
                   "[default: half the worker's memory / its CPUs / --batch-size]")
@click.option("--stall-timeout", default=300.0, type=float, metavar="SECONDS",
              help="Fail in one line, naming the stage, when no stage makes progress this long (0: never).")
@click.option("--tile", default=None, callback=_sizes, metavar="SIZE[,SIZE...]",
              help="Cut each scene into overlapping windows of this size (per axis, or one for all). [default: the model's; whole images for 2D models]")
@click.option("--overlap", default=None, callback=_sizes, metavar="PX[,PX...]",
              help="Overlap of neighbouring windows in pixels. [default: the model's, else tile/4]")
@click.option("--blend", default="gaussian", type=click.Choice(["gaussian", "linear", "constant"]),
              help="Weighting of overlapping windows' logits.")
@click.option("--mask-raster", is_flag=True, help="Tiled 2D scenes: also write a COG label raster with the source's CRS under OUTPUT/_masks/.")
@click.option("--polygons", is_flag=True, help="Tiled 2D scenes: also write a GeoParquet polygon layer under OUTPUT/_polygons/.")
def infer(input: str, output: str, params: tuple[str, ...], **options: Any) -> None:
    """Segment every item of INPUT and write one Parquet row per item to OUTPUT.

    INPUT is a local path or fsspec URL: a directory/prefix (recursive), a glob,
    or a CSV/Parquet manifest with a `uri` (or `image_uri`) column. Credentials
    come from the environment (e.g. AWS_*), never from the command line.
    """
    from raysegment.infer.pipeline import InferenceConfig, run_inference
    from raysegment.plugin.spec import parse_params

    summary = run_inference(InferenceConfig(input=input, output=output, params=parse_params(params), **options))
    click.echo(summary.format())
    if summary.failed:
        click.echo(f"{summary.failed} item(s) failed; see the 'error' column", err=True)
        sys.exit(EXIT_ITEMS_FAILED)


# -- train -------------------------------------------------------------------------------
def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | str | None:
    if not value:
        return None
    if value.strip() == "balanced":
        return "balanced"
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expects comma-separated numbers, got {value!r}") from None


@main.command()
@click.argument("data")
@click.option("--masks", default=None, help="Mask folder/prefix matched to DATA's images by stem, or a COCO .json. [default: DATA is a manifest with image_uri, mask_uri]")
@click.option("--pair", default="{stem}", help="Mask stem for an image stem, e.g. '{stem}_mask'.")
@click.option("--val-images", default=None, help="Separate validation images (with --val-masks). [default: split DATA]")
@click.option("--val-masks", default=None, help="Masks of --val-images.")
@click.option("--val-fraction", default=0.2, type=click.FloatRange(0, 1, max_open=True), help="Validation share of DATA when no --val-images.")
@click.option("--model", "-m", default=None, help="Model name (optional with --checkpoint).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Model parameter; repeatable.")
@click.option("--checkpoint", "-c", default=None, help="Initial weights (path or fsspec URL).")
@click.option("--epochs", default=10, type=click.IntRange(min=1), help="Training epochs.")
@click.option("--batch-size", "-b", default=4, type=click.IntRange(min=1), help="Images per worker step.")
@click.option("--workers", default=2, type=click.IntRange(min=1), help="Ray Train workers (one per GPU with --use-gpu).")
@click.option("--use-gpu", is_flag=True, help="One GPU per worker.")
@click.option("--lr", default=1e-3, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--weight-decay", default=0.0, type=click.FloatRange(min=0), help="Adam weight decay.")
@click.option("--loss", default=None, help="Loss terms: ce, bce, dice, focal, unet_weighted; combine as 'ce:1,dice:0.5'. "
              "Default: the plugin's own loss (for semantic models pixel-wise cross-entropy plus aux terms).")
@click.option("--class-weights", default=None, callback=_floats,
              help="Per-class loss weights, comma-separated, or 'balanced' (total / (K x class pixels) of the training masks).")
@click.option("--augment", default="flip,rot90", help="e.g. 'flip,rot90,crop=256,scale=0.8-1.2,gamma=0.8-1.25,brightness=0.1,elastic=10' or 'none'.")
@click.option("--mask-values", default="", show_default=False,
              help="Raw mask value to class id, e.g. '0:1,255:0'. [default: values are class ids]")
@click.option("--select", default=None,
              help="Checkpoint metric: miou, fg_miou (without background), iou:<class> or dice:<class>. "
                   "[default: the foreground IoU for two classes, else miou]")
@click.option("--normalize", default=None,
              help="Input normalisation before the model's preprocess: dtype, minmax:LO:HI[,LO:HI...], "
                   "percentile[:2:98] or zscore; stored in the checkpoint, applied by infer. "
                   "[default: the --checkpoint's, else dtype]")
@click.option("--stats", "stats_file", default=None,
              help="Statistics JSON from `raysegment stats` for percentile/zscore. [default: computed on the training images]")
@click.option("--window", default=None, callback=_sizes, metavar="SIZE[,SIZE...]",
              help="Train on windows sampled from whole scenes (GeoTIFF/COG, NIfTI) with label rasters or vector labels (--masks).")
@click.option("--windows-per-epoch", default=None, type=click.IntRange(min=1), help="With --window. [default: about one pass over the training pixels]")
@click.option("--positive-fraction", default=0.0, type=click.FloatRange(0, 1), help="With --window: share of windows placed over a foreground label.")
@click.option("--val-region", default=None, help="With --window: the part of every scene held out: east:0.3 (west, north, south, depth), bbox:L,B,R,T, pixels:R0,C0,R1,C1 or a vector file.")
@click.option("--label-field", default=None, help="Vector labels: the integer column to burn. [default: every polygon is class 1]")
@click.option("--storage", default="runs", help="Where runs live: a folder or fsspec URL (s3://...).")
@click.option("--name", default="train", help="Run name: its folder under --storage.")
@click.option("--resume", is_flag=True, help="Continue the run NAME from its last checkpoint.")
@click.option("--seed", default=0, type=int, help="Seed for the split, the weights and the augmentations.")
@click.option("--bad-data", default="skip", type=click.Choice(["skip", "fail"]), help="Skip bad pairs (listed in the report) or stop.")
@click.option("--max-failures", default=2, type=click.IntRange(min=-1), help="Worker failures Ray Train retries from the last checkpoint.")
@click.option("--address", default=None, help="Ray cluster to join. [default: embedded local Ray]")
def train(data: str, masks: str | None, pair: str, val_images: str | None, val_masks: str | None, val_fraction: float,
          model: str | None, params: tuple[str, ...], checkpoint: str | None, epochs: int, batch_size: int,
          workers: int, use_gpu: bool, lr: float, weight_decay: float, loss: str | None,
          class_weights: tuple[float, ...] | str | None, augment: str, mask_values: str, select: str | None,
          normalize: str | None, stats_file: str | None, window: int | tuple[int, ...] | None,
          windows_per_epoch: int | None, positive_fraction: float, val_region: str | None, label_field: str | None,
          storage: str, name: str, resume: bool, seed: int, bad_data: str, max_failures: int,
          address: str | None) -> None:
    """Train a model on Ray Train from (image, mask) pairs or from windows of scenes; the best checkpoint feeds `infer`.

    DATA is an image folder/prefix (with --masks) or a CSV/Parquet manifest with
    image_uri and mask_uri columns. With --window, DATA holds scenes and --masks
    their label rasters or one vector label file (GeoJSON, GeoParquet, shapefile).
    """
    from raysegment.plugin.spec import parse_params
    from raysegment.train.training import TrainConfig, run_training

    summary = run_training(TrainConfig(
        images=data, masks=masks, pair=pair, val_images=val_images, val_masks=val_masks, val_fraction=val_fraction,
        model=model, params=parse_params(params), init_checkpoint=checkpoint, epochs=epochs, batch_size=batch_size,
        workers=workers, use_gpu=use_gpu, lr=lr, weight_decay=weight_decay, loss=loss, class_weights=class_weights,
        augment=augment, mask_values=mask_values, select=select, normalize=normalize, stats=stats_file, window=window,
        windows_per_epoch=windows_per_epoch, positive_fraction=positive_fraction, val_region=val_region,
        label_field=label_field, storage=storage, name=name, resume=resume, seed=seed, bad_data=bad_data, max_failures=max_failures, address=address,
    ))
    click.echo(summary.format())


# -- eval --------------------------------------------------------------------------------
@main.command("eval")
@click.argument("pred")
@click.argument("gt")
@click.option("--pair", default="{stem}", help="Mask stem for an image stem when GT is a mask folder, e.g. '{stem}_mask'.")
@click.option("--label-field", default=None,
              help="Integer column burnt as each polygon's class when GT is a vector label file. [default: class 1]")
@click.option("--region", default=None,
              help="Score only pixels inside: east:F, west:F, north:F, south:F, depth:F (last fraction F of that "
                   "axis), bbox:L,B,R,T (CRS units), pixels:R0,C0,R1,C1, or a vector file. [default: every pixel]")
@click.option("--mask-values", default="", show_default=False,
              help="Raw mask value to class id, e.g. '0:1,255:0'. [default: values are class ids]")
@click.option("--ignore-index", default=255, type=int, help="Mask value (after --mask-values) left out of the metrics.")
@click.option("--num-classes", default=None, type=click.IntRange(min=1), help="Number of classes. [default: from the run's model]")
@click.option("--class-names", default=None, help="Comma-separated class names. [default: from the run / the COCO file]")
@click.option("--out", "out_path", default="eval.json", help="JSON report to write (path or fsspec URL).")
@click.option("--address", default=None, help="Ray cluster to join. [default: embedded local Ray]")
def eval_(pred: str, gt: str, pair: str, label_field: str | None, region: str | None, mask_values: str,
          ignore_index: int, num_classes: int | None, class_names: str | None, out_path: str,
          address: str | None) -> None:
    """Score the output PRED of `infer` against ground truth GT: IoU and accuracy per class.

    GT is a mask folder/prefix (matched by stem through --pair), a CSV/Parquet
    manifest with image_uri and mask_uri, a COCO annotation .json (matched
    by file name), or vector labels (.geojson, GeoParquet, .shp, .gpkg, .zip)
    burnt onto each georeferenced scene's grid (a tiled run's rows).
    """
    import fsspec

    from raysegment.eval.evaluation import evaluate

    names = [n.strip() for n in class_names.split(",")] if class_names else None
    result = evaluate(pred, gt, pair=pair, mask_values=mask_values, num_classes=num_classes, class_names=names,
                      ignore_index=ignore_index, address=address, label_field=label_field, region=region)
    with fsspec.open(out_path, "w") as f:
        json.dump(result.to_dict(), f, indent=2)
    click.echo(result.format())
    click.echo(f"wrote {out_path}")


# -- stats -------------------------------------------------------------------------------
@main.command()
@click.argument("input")
@click.option("--modality", default="image", type=click.Choice(["image", "volume"]),
              help="How the items are decoded (volume: NIfTI).")
@click.option("--out", "out_path", default="stats.json", help="JSON to write (path or fsspec URL).")
@click.option("--address", default=None, help="Ray cluster to join. [default: embedded local Ray]")
def stats(input: str, modality: str, out_path: str, address: str | None) -> None:
    """Per-band statistics of INPUT on Ray: count, min, max, mean, std and percentiles (for --normalize).

    INPUT is a folder/prefix, a glob or a manifest, as for `infer`. Memory stays bounded
    (quantile sketches); percentiles are approximate within the rank error the JSON states.
    """
    import fsspec

    from raysegment.eval.stats import compute_stats

    result = compute_stats(input, modality=modality, address=address)
    with fsspec.open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    for band in result["bands"]:
        p = band["percentiles"]
        click.echo(f"band {band['band']}: n {band['count']}  min {band['min']:g}  max {band['max']:g}  "
                   f"mean {band['mean']:.4g}  std {band['std']:.4g}  p2 {p[4]:g}  p50 {p[100]:g}  p98 {p[196]:g}")
    click.echo(f"{result['items']} item(s), {result['failed']} unreadable; wrote {out_path}")
    for problem in result["problems"]:
        click.echo(f"  {problem}")


# -- show --------------------------------------------------------------------------------
@main.command()
@click.argument("output")
@click.argument("uri")
@click.option("--out", "out_path", default="overlay.png", help="PNG to write.")
@click.option("--alpha", default=0.45, type=click.FloatRange(0, 1), help="Mask opacity.")
@click.option("--skip-label", "skip", multiple=True, type=int, help="Label left unpainted; repeatable.")
def show(output: str, uri: str, out_path: str, alpha: float, skip: tuple[int, ...]) -> None:
    """Render the masks of one input URI from OUTPUT over its image, as a PNG."""
    from raysegment.eval.overlay import render_overlay

    row = render_overlay(output, uri, out_path, alpha=alpha, skip_labels=skip)
    names = ", ".join(f"{s['label_name']} ({s['area']} px)" for s in row["segments"] or [])
    click.echo(f"wrote {out_path}: {row['width']}x{row['height']}, segments: {names or 'none'}")


if __name__ == "__main__":
    main()
