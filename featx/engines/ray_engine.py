"""The Ray engine: fixed row ranges embedded by a Ray Data actor pool, streamed back in row order.

Each actor (one per GPU with num_gpus=1, or CPU actors sized to the cluster) builds the unit
of work it is handed once (stage one's featx.extract.work.EmbedRequest: every backbone), then
embeds whole row ranges with it, batches cut on the local engine's grid (featx.engines.work). Ranges come back
to the featx process in row order (Ray Data's preserve_order), which writes them through the
one cache writer; a killed actor is restarted by Ray and its range retried, and since a
range always holds the same rows in the same batches the retry gives the same bits.

With `--ray-shards` the actors write each range to a shard file on storage the featx process
shares (engines/shards.py) and send back only that it is written; the featx process reads the
shards in row order into the same writer, and a resumed run submits only ranges without a shard.

Ray's own output (start-up lines, C++ warnings, Ray Data's progress bars) is kept off the
terminal; featx's progress bar is the only one. What Ray printed is shown if the run fails.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from featx.engines import EngineConfig, FitCluster, import_ray
from featx.engines import range_rows as engine_range_rows
from featx.engines.shards import ShardStore, fingerprint, trimmed
from featx.engines.work import Rows, Work, merge_rows, row_ranges
from featx.errors import FeatxError, short_reason

# Decode is what a GPU actor waits on. Measured here (docs/internals.md, "engines"): one core decodes and
# resizes ~190 images/s of 1500x1500 chest-X-ray JPEGs (~340 KiB) and ~66 images/s of 2800x2800 ones
# (~1.1 MiB, MIMIC-CXR-JPG's size), against a ResNet50 fp16 forward pass of a few thousand images/s on one
# H100. So a GPU actor takes every core its node has per GPU (one core per node is left to Ray, the featx
# process and the writer), and full-resolution archives are still decode-bound (docs/cluster.md).
SPARE_CPUS_PER_NODE = 1


@dataclass(frozen=True)
class ActorLayout:
    """How many actors, and what each one reserves."""

    actors: int
    cpus: float
    gpus: float
    cluster_cpus: float
    cluster_gpus: float

    @property
    def decode_threads(self) -> int:
        return max(1, int(self.cpus))

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return (
            f"{self.actors} Ray actor(s) of {each} each "
            f"(cluster: {self.cluster_cpus:g} CPUs, {self.cluster_gpus:g} GPUs)"
        )


def actor_layout(nodes: list[dict], config: EngineConfig) -> ActorLayout:
    """One actor per GPU with its node's CPUs per GPU, or (no GPU anywhere) one-core actors on every CPU.

    `nodes`: each alive node's resources ({"CPU": 96, "GPU": 8, ...}). FeatxError when the actors asked for
    do not fit the cluster as it is now (Ray would wait for them forever).
    """
    cluster_cpus = float(sum(node.get("CPU", 0) for node in nodes))
    cluster_gpus = float(sum(node.get("GPU", 0) for node in nodes))
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) >= 1]
    if gpu_nodes:
        gpus = 1.0
        per_gpu = min(
            math.floor((node.get("CPU", 0) - SPARE_CPUS_PER_NODE) / math.floor(node["GPU"])) for node in gpu_nodes
        )
        cpus = float(config.cpus_per_actor or max(1, per_gpu))
        actors = int(config.actors or sum(math.floor(node["GPU"]) for node in gpu_nodes))
        fits = sum(
            min(math.floor(node["GPU"]), math.floor(node.get("CPU", 0) / cpus)) for node in gpu_nodes
        )  # an actor needs its CPUs and its GPU on one node
    else:
        gpus = 0.0
        cpus = float(config.cpus_per_actor or 1)
        actors = int(config.actors or max(1, math.floor(cluster_cpus / cpus)))
        fits = sum(math.floor(node.get("CPU", 0) / cpus) for node in nodes)
    layout = ActorLayout(actors, cpus, gpus, cluster_cpus, cluster_gpus)
    if actors > fits:
        raise FeatxError(
            f"{layout.describe()} do not fit: the cluster's nodes hold {fits} such actor(s) now; "
            "lower --ray-actors or --ray-cpus-per-actor, or add nodes to the cluster."
        )
    return layout


def _alive_nodes(ray) -> list[dict]:
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


# ---------------------------------------------------------------- the cluster


def _quiet_ray_loggers() -> None:
    for name in ("ray", "ray.data", "ray.util", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def ray_session(address: str | None):
    """Ray connected for the block: the running instance if this process has one (left running), else
    ray.init(address) (shut down after). FeatxError with the address when no cluster answers."""
    ray = import_ray()
    if ray.is_initialized():
        _quiet_ray_loggers()
        yield ray
        return
    options: dict = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address in (None, "local"):
        options["include_dashboard"] = False  # a Ray started for one command needs no web UI
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"at {address!r}" if address else "named by RAY_ADDRESS"
        raise FeatxError(
            f"Cannot connect to the Ray cluster {where} ({short_reason(error, 160)}); start one with "
            "`ray start --head` or pass --ray-address HOST:PORT of its head node."
        ) from None
    _quiet_ray_loggers()
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # ranges come back in row order: the writer needs that
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    _quiet_ray_loggers()


# ---------------------------------------------------------------- the actors


@dataclass(frozen=True)
class ActorSetup:
    """What every actor needs besides its ranges (sent once per actor)."""

    work: Work  # the unit: built once per actor, then asked for the Rows of each range
    threads: int  # decode threads and TensorFlow threads: the CPUs the actor reserved
    shards: ShardStore | None = None  # where ranges are written (None: they go back through Ray)


def _limit_tensorflow_threads(threads: int) -> None:
    """TensorFlow uses every core of the node by default; an actor owns `threads` of them."""
    from featx.runtime import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: its pools stay as they are
        pass


class RangeEmbedder:
    """A Ray Data actor: builds each backbone once, then embeds one whole row range per call."""

    def __init__(self, setup: ActorSetup):
        _limit_tensorflow_threads(setup.threads)
        self.setup = setup
        self.embedder = setup.work.build()
        self.worker = f"{os.getpid()}@{socket.gethostname()}"

    def embed_range(self, start: int, stop: int) -> Rows:
        return merge_rows(list(self.embedder.rows(start, stop, workers=self.setup.threads)), self.worker)

    def __call__(self, batch: dict) -> dict:
        starts = np.asarray(batch["start"], dtype=np.int64)
        out = np.empty(len(starts), dtype=object)
        stops = np.empty(len(starts), dtype=np.int64)
        for index, (start, stop) in enumerate(zip(starts.tolist(), np.asarray(batch["stop"]).tolist())):
            rows = self.embed_range(start, stop)
            stops[index] = rows.stop
            if self.setup.shards is None:
                out[index] = rows
            else:
                self.setup.shards.write(rows)
        if self.setup.shards is not None:  # only that the range is on disk comes back
            return {"start": starts, "stop": stops}
        return {"start": starts, "rows": out}


# ---------------------------------------------------------------- the engine


class RayEngine:
    """Embeds on a Ray cluster; `open` connects and plans, the rows stream from the iterator it yields."""

    name = "ray"

    def __init__(self, config: EngineConfig):
        self.config = config

    @contextmanager
    def open(self, request: Work, console) -> Iterator[Iterator[Rows]]:
        from featx.runtime import captured_stderr

        range_rows = engine_range_rows(self.config, request.batch_size)
        with captured_stderr(console), ray_session(self.config.address) as ray:
            _quiet_ray_data()
            layout = actor_layout(_alive_nodes(ray), self.config)
            ranges = row_ranges(request.start, request.n_rows, range_rows)
            shards, submit, note = None, ranges, ""
            if request.shards is not None:
                shards = ShardStore(request.shards, fingerprint(request, range_rows))
                shards.prepare()
                submit = [(lo, hi) for lo, hi in ranges if not shards.covers(lo, hi, request.first_rows)]
                note = f"; shards in {shards.folder} ({len(ranges) - len(submit)} already written)"
            console.print(
                f"Ray: {len(ranges)} range(s) of up to {range_rows} rows on {layout.describe()}{note}; "
                f"building {', '.join(request.first_rows)} on each actor ..."
            )
            dataset = _dataset(request, submit, layout, shards) if submit else None
            if shards is None:
                rows = _ordered_rows(dataset, ranges)
            else:
                rows = _rows_from_shards(dataset, ranges, submit, shards, request.first_rows)
            try:
                yield rows
            finally:
                rows.close()


def _dataset(request: Work, ranges: list[tuple[int, int]], layout: ActorLayout, shards=None):
    """The Ray Data pipeline: one item per range, mapped by a fixed-size pool of RangeEmbedder actors."""
    import ray.data

    setup = ActorSetup(work=request, threads=layout.decode_threads, shards=shards)
    items = [{"start": lo, "stop": hi} for lo, hi in ranges]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        RangeEmbedder,
        fn_constructor_args=(setup,),
        batch_size=1,  # one range per call: the range, not Ray's batch size, decides the batches
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=layout.actors),
        num_cpus=layout.cpus,
        num_gpus=layout.gpus,
    )


def _ordered_rows(dataset, ranges: list[tuple[int, int]]) -> Generator[Rows, None, None]:
    expected = iter(ranges)
    for item in dataset.iter_rows():
        rows = item["rows"]
        lo, hi = next(expected)
        if (rows.start, rows.stop) != (lo, hi):  # preserve_order is what the writer relies on: check it
            raise RuntimeError(f"Ray returned rows {rows.start}..{rows.stop} where {lo}..{hi} were due")
        yield rows


def _rows_from_shards(
    dataset, ranges: list[tuple[int, int]], submitted: list[tuple[int, int]], shards: ShardStore, first_rows
) -> Generator[Rows, None, None]:
    """Every range's Rows read from its shard in row order, once written (now, or by an earlier run).

    A shard is deleted once its rows are taken (the caller has written them: it asks for the next only
    then), and the folder once every range is taken.
    """
    written = iter(dataset.iter_rows()) if dataset is not None else iter(())
    pending = set(submitted)
    for lo, hi in ranges:
        if (lo, hi) in pending:
            item = next(written)
            if (int(item["start"]), int(item["stop"])) != (lo, hi):
                raise RuntimeError(f"Ray wrote rows {item['start']}..{item['stop']} where {lo}..{hi} were due")
        yield trimmed(shards.read(lo, hi), first_rows)
        shards.remove(lo, hi)
    shards.remove_all()


# ---------------------------------------------------------------- stage two


@contextmanager
def joblib_on_ray(config: EngineConfig, console=None) -> Iterator[FitCluster]:
    """joblib's Parallel (scikit-learn's searches, featx's out-of-fold fits) runs its tasks on Ray for the block.

    Yields the cluster's FitCluster: its whole GPUs (a fractional GPU share must fit on one GPU).
    """
    import joblib

    from featx.runtime import captured_stderr

    with captured_stderr(console), ray_session(config.address) as ray:
        from ray.util.joblib import register_ray

        register_ray()
        nodes = _alive_nodes(ray)
        cpus = int(sum(node.get("CPU", 0) for node in nodes))
        gpus = sum(math.floor(node.get("GPU", 0)) for node in nodes)  # whole GPUs: a fit's share lies on one
        with joblib.parallel_config(backend="ray"):
            yield FitCluster("ray", cpus, gpus)
