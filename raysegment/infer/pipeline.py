"""Batch inference as a Python API: the CLI's ``infer`` is a thin wrapper over this.

Everything that can be checked without Ray (model, checkpoint, input listing,
output root) is checked first, so a mistake costs a one-line error, not a
cluster start. The pipeline is a Ray Data stream::

    shards -> decode (CPU tasks) -> Predictor (actor pool, GPU if any)
           -> encode RLE (CPU tasks) -> ShardedParquetSink

Memory is bounded by Ray Data's streaming backpressure, not dataset size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from raysegment.infer.datasource import PROCESS_LOCAL, ShardDatasource
from raysegment.infer.scene_merger import GeoOutputOptions, SceneMerger
from raysegment.infer.stages import PredictOptions, Predictor, decode_batch, encode_batch
from raysegment.infer.tiled_stages import Tiling, plan_scene_windows, read_windows
from raysegment.io.decoders import DecodeLimits
from raysegment.io.sources import Shard, list_inputs, listing_digest, make_shards, refuse_output_inside_input
from raysegment.output.lease import Lease
from raysegment.output.root import OutputError, OutputRoot, RunManifest
from raysegment.output.sink import IncompleteOutputError, ShardedParquetSink
from raysegment.plugin.contract import Modality
from raysegment.plugin.spec import ModelSpec, resolve_model
from raysegment.progress import progress
from raysegment.runtime import (
    ActorPlan,
    StalledRunError,
    cluster_resources,
    describe_stall,
    ensure_ray,
    free_resources,
    plan_actors,
)
from raysegment.tasks.spec import task_spec
from raysegment.uri import redact

__all__ = ["InferenceConfig", "RunSummary", "run_inference"]

log = logging.getLogger("raysegment")

PREDICTOR_MEMORY = 1024 * 2**20  # bytes reserved per predictor actor
PROGRESS_POLL_S = 2.0  # how often the progress bar lists the output (two listings a poll)
#: The untiled pipeline's task stages beside the predictor pool, one CPU each: read, decode, encode.
UNTILED_CPU_STAGES = 3


@dataclasses.dataclass
class InferenceConfig:
    """Everything one ``infer`` run needs; defaults match the CLI's."""

    input: str
    output: str
    model: str | None = None
    checkpoint: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 8
    actors: tuple[int, int] | None = None  # (min, max); None = from the cluster
    gpus_per_actor: float | None = None  # None = 1 where GPUs exist, else CPU
    threads: int | None = None  # torch threads per CPU actor; None = CPUs / actors
    address: str | None = None  # None = embedded local Ray (or RAY_ADDRESS)
    resume: bool = False
    overwrite: bool = False
    shard_size: int = 256
    precision: str = "fp32"
    channels_last: bool = False
    max_pixels: int = DecodeLimits().max_pixels
    max_decode_memory: int | None = None  # bytes one item may take to decode; None: from the worker's memory and the batch
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # never logged
    # -- tiled sliding-window inference (scenes and volumes) --
    tile: int | tuple[int, ...] | None = None  # None: the plugin's default_tile (volumes), else untiled
    overlap: int | tuple[int, ...] | None = None  # None: the plugin's default_overlap, else tile // 4
    blend: str = "gaussian"  # gaussian | linear | constant
    mask_raster: bool = False  # also write a COG label raster per 2D scene under OUTPUT/_masks/
    polygons: bool = False  # also write a GeoParquet polygon layer per 2D scene under OUTPUT/_polygons/
    stall_timeout: float = 300.0  # seconds with no progress in any stage before the run fails; <= 0: never

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if self.max_pixels < 1:
            raise ValueError("--max-pixels must be >= 1")


@dataclasses.dataclass
class RunSummary:
    """What a run did; ``failed`` > 0 means some items became error rows."""

    output: str
    items: int
    ok: int
    failed: int
    rows_written: int  # rows committed by this run (resumed shards excluded)
    rows_total: int
    shards_skipped: int
    seconds: float
    pipeline_seconds: float
    actors: str

    @property
    def throughput(self) -> float:
        return self.rows_written / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "throughput_items_per_s": round(self.throughput, 3)}

    def format(self) -> str:
        return (
            f"items {self.items}  ok {self.ok}  failed {self.failed}  rows written {self.rows_written}"
            f" (total {self.rows_total}, {self.shards_skipped} shard(s) already done)"
            f"  throughput {self.throughput:.2f} items/s  elapsed {self.seconds:.1f}s\n"
            f"output: {self.output}"
        )


@dataclasses.dataclass
class _Plan:
    spec: ModelSpec
    root: OutputRoot
    shards: list[Shard]
    pending: list[Shard]
    num_items: int
    lease: Lease
    sink: ShardedParquetSink
    tiling: Tiling | None = None
    staged: dict[int, set[int]] = dataclasses.field(default_factory=dict)  # items a killed attempt finished

    @property
    def todo(self) -> int:
        """Items this run still has to run (pending shards less their staged items)."""
        return sum(len(s.uris) for s in self.pending) - sum(len(v) for v in self.staged.values())


def _plan(config: InferenceConfig) -> _Plan:
    """All driver-side validation; raises before Ray is touched."""
    config.validate()
    spec = resolve_model(config.model, config.params, config.checkpoint, config.storage_options)
    tiling = _tiling(config, spec)
    refuse_output_inside_input(config.input, config.output, config.storage_options)  # before listing it
    uris = list_inputs(config.input, config.storage_options)
    shards = make_shards(uris, config.shard_size)
    root = OutputRoot(config.output, config.storage_options)
    if config.output.startswith(PROCESS_LOCAL):
        raise OutputError(f"output {redact(config.output)} lives in this process only; Ray workers cannot write it")
    manifest = RunManifest(
        input=redact(config.input),
        num_items=len(uris),
        shard_size=config.shard_size,
        listing_sha256=listing_digest(uris),
        model=spec.info(),
        tiling=tiling.to_json() if tiling else None,
    )
    lease = root.prepare(manifest, resume=config.resume, overwrite=config.overwrite)
    try:
        done = root.committed(shards, lease.run_id) if config.resume else set()
        # Item-level resume (untiled): keep this run id's staged items, redo only the others;
        # items whose read outlasted the storage retries are redone too, in shards reopened.
        keep = lease.run_id if config.resume and tiling is None else None
        reopen = root.retryable(done) if keep else {}
        done -= set(reopen)
        pending = [s for s in shards if s.id not in done]
        root.clear_staging([s.id for s in pending], keep_run_id=keep)
        sink = ShardedParquetSink(config.output, {s.id: range(s.start, s.start + len(s.uris)) for s in pending},
                                  config.storage_options, lease.fence(), staged=tiling is None)
        for sid, rows in reopen.items():
            sink.reopen(sid, rows)
        if reopen:
            log.warning("redoing %d item(s) whose storage read failed in an earlier attempt",
                        sum(len(s.uris) for s in shards if s.id in reopen) - sum(t.num_rows for t in reopen.values()))
        staged = {s.id: sink.staged_items(s.id) for s in pending} if keep else {}
        complete = {sid for sid, items in staged.items() if items and sink.try_commit(sid)}  # killed before commit
        pending = [s for s in pending if s.id not in complete]
        staged = {sid: items for sid, items in staged.items() if items and sid not in complete}
    except BaseException:
        lease.release()
        raise
    return _Plan(spec, root, shards, pending, len(uris), lease, sink, tiling, staged)


def _tiling(config: InferenceConfig, spec: ModelSpec) -> Tiling | None:
    """The run's tiling, or None; every option mistake is a one-line error here."""
    plugin = spec.plugin()
    tiling = Tiling.resolve(plugin, config.tile, config.overlap, config.blend)
    if tiling is None:
        if config.overlap is not None or config.mask_raster or config.polygons:
            raise ValueError("--overlap, --mask-raster and --polygons need tiled inference: pass --tile")
        return None
    task_spec(plugin.task).require("tiled_merge", "tiled inference")
    if (config.mask_raster or config.polygons) and plugin.modality is Modality.VOLUME:
        raise ValueError("--mask-raster and --polygons are for 2D scenes, not volumes")
    return tiling


def _predict(ds, config: InferenceConfig, plan: _Plan, actors: ActorPlan, stager: Any = None):
    """The predictor pool; with a ``stager`` (the sink) it also encodes and stages each batch."""
    import ray.data

    options = PredictOptions(config.precision, config.channels_last, actors.threads, tiled=plan.tiling is not None)
    return ds.map_batches(
        Predictor,
        batch_size=config.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"spec": plan.spec, "options": options, "storage_options": config.storage_options,
                               "stager": stager},
        compute=ray.data.ActorPoolStrategy(min_size=actors.min_size, max_size=actors.max_size),
        num_cpus=actors.num_cpus,
        num_gpus=actors.num_gpus or None,
        udf_modifying_row_count=False,
        # A host-memory reservation for the model, which also differs from the
        # decode stage's requirements, so Ray Data does not fuse decoding into
        # the actor: decode tasks then overlap the forward pass.
        memory=PREDICTOR_MEMORY,
    )


def _build_tiled_dataset(config: InferenceConfig, plan: _Plan, actors: ActorPlan):
    """scenes -> windows (fan-out) -> read -> Predictor -> SceneMerger (fan-in, one actor)."""
    import ray.data

    limits = DecodeLimits(config.max_pixels, config.max_decode_memory, config.batch_size, whole_input=False)
    common = {"spec": plan.spec, "limits": limits, "storage_options": config.storage_options}
    ds = ray.data.read_datasource(ShardDatasource(plan.pending, config.storage_options),
                                  override_num_blocks=len(plan.pending))
    ds = ds.map_batches(plan_scene_windows, batch_size=1, batch_format="numpy",
                        fn_kwargs={**common, "tiling": plan.tiling}, num_cpus=1, udf_modifying_row_count=True)
    # A scene's windows leave the plan stage as one block; cut it (streaming) so that the
    # windows of one large scene are read by many tasks at once, not one after another.
    ds = ds.repartition(target_num_rows_per_block=config.batch_size)
    ds = ds.map_batches(read_windows, batch_size=config.batch_size, batch_format="numpy", fn_kwargs=common,
                        num_cpus=1, udf_modifying_row_count=False)
    ds = _predict(ds, config, plan, actors)
    outputs = GeoOutputOptions(config.output, config.mask_raster, config.polygons, config.storage_options,
                               fence=plan.lease.fence())
    return ds.map_batches(
        SceneMerger,
        batch_size=config.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"spec": plan.spec, "outputs": outputs},
        compute=ray.data.ActorPoolStrategy(size=1),
        # No CPU reserved: the merger is mostly idle between windows, and a reserved
        # core would starve the read tasks on a small machine.
        num_cpus=0,
        udf_modifying_row_count=True,
    )


def _build_dataset(config: InferenceConfig, plan: _Plan, actors: ActorPlan):
    import ray.data

    if plan.tiling is not None:
        return _build_tiled_dataset(config, plan, actors)
    limits = DecodeLimits(config.max_pixels, config.max_decode_memory, config.batch_size)
    # One read task (one block) per batch of a shard, without the items a killed attempt
    # staged: a block is the unit Ray Data streams, so blocks of one batch keep every stage
    # busy at once and each batch is staged (durable) as soon as it is encoded. Blocks of a
    # whole shard would pass each stage one shard at a time, and a kill would lose them all.
    source = ShardDatasource(plan.pending, config.storage_options, chunk=config.batch_size, skip=plan.staged)
    ds = ray.data.read_datasource(source, override_num_blocks=max(1, len(source.chunks())))
    ds = ds.map_batches(
        decode_batch,
        batch_size=config.batch_size,
        batch_format="numpy",
        fn_kwargs={"spec": plan.spec, "limits": limits, "storage_options": config.storage_options},
        num_cpus=1,
        udf_modifying_row_count=False,
    )
    if not actors.reserves(UNTILED_CPU_STAGES):
        # Too few CPUs to reserve one for encoding beside the read and decode stages: Ray Data
        # would hold every encode task back until decoding had finished, so nothing would be
        # durable until the end. The predictor then encodes and stages each batch itself.
        log.info("the predictor encodes its batches: %g CPU(s) beside the pool leave none to reserve for an "
                 "encode stage", actors.spare_cpus)
        return _predict(ds, config, plan, actors, stager=plan.sink)
    ds = _predict(ds, config, plan, actors)
    return ds.map_batches(
        encode_batch,
        batch_size=config.batch_size,
        batch_format="numpy",
        fn_kwargs={"spec": plan.spec, "stager": plan.sink},  # each batch staged as it finishes
        num_cpus=1,
        udf_modifying_row_count=False,
    )


def run_inference(config: InferenceConfig) -> RunSummary:
    """Run (or resume) one inference job and return its summary.

    Reuses a Ray that is already initialised; otherwise starts one (and stops
    it again at the end) or joins ``config.address``.
    """
    start = time.perf_counter()
    plan = _plan(config)
    # One writer per output: the lease is renewed while the run writes, released at the end.
    with plan.lease.heartbeat():
        try:
            summary = _execute(config, plan, start)
        finally:
            plan.lease.release()
    return summary


def _execute(config: InferenceConfig, plan: _Plan, start: float) -> RunSummary:
    """Run the pending shards on Ray, check the output holds each item once, and finish it."""
    skipped = len(plan.shards) - len(plan.pending)
    pipeline_seconds = 0.0
    actors_text = "none (nothing to do)"
    if plan.pending:
        import ray

        started = ensure_ray(config.address)
        try:
            actors = plan_actors(
                config.actors, config.gpus_per_actor, cluster_resources(), config.threads, joined=not started,
                free=free_resources(),
            )
            actors_text = actors.describe()
            todo = sum(len(s.uris) for s in plan.pending)  # the bar counts staged items as done at once
            kept = todo - plan.todo
            log.info("%d item(s) in %d shard(s) to do%s; %s", plan.todo, len(plan.pending),
                     f" ({kept} finished item(s) of the killed run kept)" if kept else "", actors_text)
            sink = plan.sink
            t0 = time.perf_counter()
            # Items done = rows the sink has written, polled from the output (the writes run in Ray).
            with progress(todo, "infer") as bar, bar.follow(sink.rows_written, PROGRESS_POLL_S):
                ds = _build_dataset(config, plan, actors)  # inside: the dataset copies the bar's Ray Data settings
                # The progress watchdog is Ray Data's own: no stage takes an output or moves a block
                # for stall_timeout s -> ExecutionTimeoutError, turned into one line naming the stages.
                ds.context.execution_no_progress_timeout_s = config.stall_timeout if config.stall_timeout > 0 else -1
                try:
                    ds.write_datasink(sink)
                except Exception as exc:
                    cpus_left = cluster_resources().get("CPU", 0.0) - actors.max_size * actors.num_cpus
                    stalled = describe_stall(exc, config.stall_timeout, cpus_left)
                    if stalled is None:
                        raise
                    raise StalledRunError(stalled) from None
            pipeline_seconds = time.perf_counter() - t0
        finally:
            if started:
                ray.shutdown()
    rows_total, ok, distinct, foreign = plan.root.status_counts(plan.lease.run_id)
    if foreign:
        raise IncompleteOutputError(f"output holds {foreign} row(s) another run committed; rerun with --resume")
    if rows_total != plan.num_items or distinct != plan.num_items:
        raise IncompleteOutputError(
            f"output holds {rows_total} row(s) for {distinct} distinct item(s), expected {plan.num_items}; rerun "
            "with --resume to redo the missing ones"
        )
    summary = RunSummary(
        output=redact(config.output),
        items=plan.num_items,
        ok=ok,
        failed=rows_total - ok,
        rows_written=plan.todo if plan.pending else 0,
        rows_total=rows_total,
        shards_skipped=skipped,
        seconds=time.perf_counter() - start,
        pipeline_seconds=pipeline_seconds,
        actors=actors_text,
    )
    plan.root.finish(summary.as_dict(), plan.lease)
    return summary
