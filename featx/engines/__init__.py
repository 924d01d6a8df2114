"""Engines: where the same work units run, in this process (local, the default) or on a Ray cluster.

Stage one and predict hand an engine a unit of work (`engines.work.Work`: stage one's
`featx.extract.work.EmbedRequest` of rows, decode settings and backbone recipes) and get back
`Rows` in row order; the featx process keeps writing the cache
through featx.extract.store, so the lock, n_done, resume and the bit-identical rule do not
depend on the engine. Stage two runs its independent fits through joblib; the Ray engine
swaps joblib's backend (`fit_backend`), and the fits of classifiers that can use a GPU
reserve a share of one where the cluster has GPUs (`FitCluster`).

Engines import no stage: they run whatever unit they are handed.
Ray is an optional extra: nothing imports it until the Ray engine is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from featx.errors import FeatxError, one_of_message

ENGINES = ("local", "ray")
RAY_EXTRA = "pip install 'featx[ray]'"


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs the work, and for Ray, where and with how many actors."""

    name: str = "local"  # "local" | "ray"
    address: str | None = None  # Ray: None = RAY_ADDRESS if set, else a Ray started for this command;
    #                             "auto" = the cluster running on this machine; "HOST:PORT"; "local"
    actors: int | None = None  # Ray: None = one per GPU, or as many as the cluster's CPUs allow
    cpus_per_actor: float | None = None  # Ray: None = a GPU node's CPUs per GPU (less one per node), else 1
    range_rows: int | None = None  # Ray: rows per work item (a multiple of the batch size); None = 32 batches
    shards: bool = False  # Ray, stage one: actors write range shards beside the caches (engines/shards.py)


LOCAL = EngineConfig()


def check_engine(config: EngineConfig, batch_size: int | None = None) -> EngineConfig:
    """The config unchanged; FeatxError for an unknown engine, a Ray engine without Ray installed, or Ray
    settings that cannot work (with `batch_size`, a range that is not a whole number of batches)."""
    if config.name not in ENGINES:
        raise FeatxError(one_of_message("engine", config.name, ENGINES))
    if config.shards and config.name != "ray":
        raise FeatxError("--ray-shards needs --engine ray: only Ray actors write range shards.")
    if config.name == "ray":
        import_ray()
        for what, value in (("--ray-actors", config.actors), ("--ray-cpus-per-actor", config.cpus_per_actor)):
            if value is not None and value <= 0:
                raise FeatxError(f"{what} must be positive. Got {value!r} instead.")
        if batch_size is not None:
            range_rows(config, batch_size)
    return config


def range_rows(config: EngineConfig, batch_size: int) -> int:
    """Rows per Ray work item: config.range_rows, which must be a whole number of batches, else 32 batches."""
    from featx.engines.work import default_range_rows

    rows = config.range_rows
    if rows is None:
        return default_range_rows(batch_size)
    if rows < 1 or rows % batch_size:
        raise FeatxError(
            f"--ray-range-rows must be a positive multiple of the batch size ({batch_size}), so that ranges cut "
            f"batches where the local engine does. Got {rows} instead."
        )
    return int(rows)


def import_ray():
    """The ray module (with Ray Data); FeatxError naming the extra to install when it is missing."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise FeatxError(
            f"The Ray engine needs Ray, which is not installed; install it with {RAY_EXTRA} or use --engine local."
        ) from None
    return ray


def get_engine(config: EngineConfig):
    """The engine object for a checked config: LocalEngine or RayEngine."""
    check_engine(config)
    if config.name == "ray":
        from featx.engines.ray_engine import RayEngine

        return RayEngine(config)
    from featx.engines.local import LocalEngine

    return LocalEngine()


# Several processes share one GPU only if TensorFlow does not take all of its memory at start-up.
GPU_TASK_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


@dataclass(frozen=True)
class FitCluster:
    """Where stage two's parallel fits run: this machine (`cpus` and `gpus` 0), or a Ray cluster's CPUs and whole GPUs.

    A classifier that can use a GPU (ClassifierSpec.uses_gpu) has each of its parallel fits reserve
    `gpu_share` of one: every fit of a round in flight at once, ceil(fits / GPUs) of them on a GPU.
    A round's fits are few (one per fold) and small (XGBoost hist or a dense head on a few thousand
    pooled vectors use a fraction of a GPU), so sharing beats queueing; and a pool whose actors ask
    for more GPUs than the cluster has would wait for them forever.
    """

    engine: str = "local"
    cpus: int = 0
    gpus: int = 0

    def gpu_share(self, uses_gpu: bool, parallel_fits: int) -> float:
        """The GPU fraction each of `parallel_fits` concurrent fits reserves (0: none, they run on CPUs)."""
        if not (uses_gpu and self.gpus):
            return 0.0
        return 1.0 / math.ceil(max(1, int(parallel_fits)) / self.gpus)

    def remote_args(self, uses_gpu: bool, parallel_fits: int) -> dict | None:
        """Ray's options for the actors that run these fits; None: as for any fit (no GPU)."""
        share = self.gpu_share(uses_gpu, parallel_fits)
        if not share:
            return None
        return {"num_gpus": share, "runtime_env": {"env_vars": dict(GPU_TASK_ENV)}}

    def describe(self, name: str, uses_gpu: bool, parallel_fits: int) -> str:
        share = self.gpu_share(uses_gpu, parallel_fits)
        if not share:
            return f"{name} no GPU"
        return f"{name} {share:.3g} GPU per fit ({parallel_fits} in flight on {self.gpus} GPU(s))"

    @contextmanager
    def tasks(self, uses_gpu: bool, parallel_fits: int) -> Iterator[None]:
        """For the block, joblib's Ray tasks reserve what `remote_args` says (nothing changes without a GPU)."""
        args = self.remote_args(uses_gpu, parallel_fits)
        if args is None:
            yield
            return
        import joblib

        with joblib.parallel_config(backend="ray", ray_remote_args=args):
            yield


LOCAL_FITS = FitCluster()


@contextmanager
def fit_backend(config: EngineConfig, console=None) -> Iterator[FitCluster]:
    """Stage two's parallel fits: joblib's default backend locally, Ray's joblib backend on a cluster.

    Yields the FitCluster the fits run on (its GPUs, counted when the block starts).
    """
    if config.name == "local":
        yield LOCAL_FITS
        return
    from featx.engines.ray_engine import joblib_on_ray

    with joblib_on_ray(config, console) as cluster:
        yield cluster
