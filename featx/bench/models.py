"""`featx bench extract --models`: ViTs against a CNN on one machine: forward img/s and peak RSS per model.

Each model runs in a fresh process (so its peak RSS is its own): random weights of the real
architecture (nothing is downloaded), pre-decoded float32 images at the model's size, the batch
size chosen for the model (`batch_for`), a warm-up batch, then whole batches for at least
`--images` images. The default list is the issue's comparison: ViT-S/14 and ViT-B/14 at 224 px,
RAD-DINO at its native 518 px, ResNet50 at 224 px.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

RESULT_TAG = "FEATX_BENCH_MODEL "
DEFAULT_MODELS = ("resnet50@224", "dinov2-small@224", "dinov2-base@224", "rad-dino@518")
MAX_BATCH = 32


def parse_models(text) -> list[tuple[str, int | None]]:
    """'rad-dino@518,resnet50' -> [('rad-dino', 518), ('resnet50', None)] (None: the native size)."""
    from featx.errors import FeatxError

    models = []
    for item in text:
        name, _, size = str(item).partition("@")
        if size and not size.isdigit():
            raise FeatxError(f"--models takes NAME or NAME@SIZE items, e.g. rad-dino@518. Got {item!r} instead.")
        models.append((name, int(size) if size else None))
    return models


def batch_for(spec, size: int) -> int:
    """The batch size for a model: MAX_BATCH for CNNs; for token models, extract's own limit (the attention
    maps within budget: backbones.forward_batch_limit)."""
    from featx.extract.backbones import forward_batch_limit

    return forward_batch_limit(spec, (size, size)) or MAX_BATCH


def measure(name: str, size: int | None, n_images: int, batch_size: int | None = None) -> dict:
    """Build `name` (random weights) at `size`, warm up, time whole batches: rate, seconds, batch, peak RSS."""
    from featx.bench.extract import peak_rss_mib
    from featx.extract import backbones
    from featx.extract.work import ModelRecipe

    spec = backbones.get_backbone(name)
    side = int(size or spec.native_size)
    batch = int(batch_size or batch_for(spec, side))
    pooling = backbones.poolings_for(spec, ("avg",))
    started = time.perf_counter()
    forward = ModelRecipe(spec.name, backbones.resolve_weights("random", 0, spec), (side, side), pooling).build()
    build_s = time.perf_counter() - started
    images = np.random.default_rng(0).uniform(0, 255, (batch, side, side, 3)).astype(np.float32)
    forward(images)
    n_batches = max(1, -(-n_images // batch))
    started = time.perf_counter()
    for _ in range(n_batches):
        forward(images)
    seconds = time.perf_counter() - started
    return {
        "model": name,
        "size": side,
        "batch": batch,
        "pooling": pooling[0],
        "images": n_batches * batch,
        "seconds": seconds,
        "rate": n_batches * batch / seconds,
        "build_s": build_s,
        "peak_rss_mib": peak_rss_mib(),
    }


def measure_in_child(name: str, size: int | None, n_images: int, batch_size: int | None = None) -> dict:
    command = [sys.executable, "-m", "featx.bench.models", name, str(size or 0), str(n_images), str(batch_size or 0)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"benchmark child for {name} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def bench_models_command(models, n_images: int, batch_size: int | None, console) -> list[dict]:
    """Each model in a fresh process; one table: model, size, batch, img/s, peak RSS, and the ratio to the first."""
    from rich.table import Table

    from featx.extract import backbones

    chosen = parse_models(models or DEFAULT_MODELS)
    for name, _ in chosen:
        backbones.get_backbone(name)
    results = []
    for name, size in chosen:
        console.print(f"{name} at {size or 'native'} px, random weights, in a fresh process ...")
        results.append(measure_in_child(name, size, n_images, batch_size))
        last = results[-1]
        console.print(f"    {last['rate']:.2f} img/s (batch {last['batch']}), peak RSS {last['peak_rss_mib']:.0f} MiB")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"featx bench extract --models: forward pass, {os.cpu_count()} CPU cores, load {load:.2f}")
    for column in ("model", "size", "batch", "pooling", "images", "img/s", f"vs {results[0]['model']}", "peak RSS MiB"):
        table.add_column(column, justify="left" if column in ("model", "pooling") else "right")
    for result in results:
        table.add_row(
            result["model"],
            str(result["size"]),
            str(result["batch"]),
            result["pooling"],
            str(result["images"]),
            f"{result['rate']:.2f}",
            f"{result['rate'] / results[0]['rate']:.2f}x",
            f"{result['peak_rss_mib']:.0f}",
        )
    console.print(table)
    return results


if __name__ == "__main__":
    _name, _size, _n, _batch = sys.argv[1:]
    _result = measure(_name, int(_size) or None, int(_n), int(_batch) or None)
    print(RESULT_TAG + json.dumps(_result), flush=True)
