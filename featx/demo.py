"""`featx demo`: the offline end-to-end run on a generated phantom chest X-ray dataset.

workdir/data (phantom images + manifest.csv) -> workdir/features (stage one, two
backbones) -> workdir/results (stage two, three classifiers: runs, models,
leaderboard, report.html). Nothing is downloaded: `--weights auto` uses ImageNet
weights only where Keras has them cached, else random-init weights, said loudly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from featx.config import featx_command
from featx.data.synthetic import PhantomParams, existing_phantoms, generate_phantoms
from featx.errors import CacheError, FeatxError, LockError
from featx.extract.backbones import RANDOM_BANNER

# pixels: the raw-pixel floor, so the demo's leaderboard shows what the CNN backbones add over it; tiny-vit: a
# two-layer random ViT (keras-hub), so the token path (cls+mean pooling, the foundation-model sentence) runs offline
DEFAULT_BACKBONES = ("pixels", "mobilenetv3small", "resnet50", "tiny-vit")
TOKEN_BACKBONES = ("tiny-vit",)  # left out where keras-hub (the featx[hub] extra) is not installed
DEFAULT_PATIENTS = 120
DEFAULT_IMAGE_SIZE = 128
# --quick shrinks whatever was left at its default to a seconds-long smoke run
QUICK_BACKBONES = ("pixels", "tiny", "tiny-vit")
QUICK_PATIENTS = 16
QUICK_IMAGE_SIZE = 32
QUICK_CV = 3
DEMO_CV = 5
# the data-efficiency curve the demo draws: shares of its training patients (1.0 is each run itself)
DEMO_TRAIN_FRACTIONS = (0.1, 0.3, 1.0)
# The phantoms carry sex, age and view; 120 patients leave about 17 normal test images, so two age bands
# (the built-in difference sits at 65, see data/synthetic.py) and 5 positives and negatives a subgroup.
DEMO_SUBGROUPS = ("sex", "age_band", "view")
DEMO_AGE_BANDS = (0.0, 65.0)
DEMO_SUBGROUP_MIN = 5
# Issue 17: a second phantom "site" (data/synthetic.py site B: lower contrast, more noise, a burned-in marker) on
# half as many other patients is the external set every run is scored on (all its rows); a small label-permutation
# null per run (a normal approximation decides with so few refits; the report says so).
EXTERNAL_NAME = "site-B"
EXTERNAL_SPLIT = "all"
DEMO_NULL_PERMUTATIONS = 5
QUICK_NULL_PERMUTATIONS = 2


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("demo")
    weights: str = "auto"
    backbones: tuple[str, ...] = DEFAULT_BACKBONES
    classifiers: tuple[str, ...] = ("logreg", "xgboost", "dense")
    n_patients: int = DEFAULT_PATIENTS
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    quick: bool = False
    data_only: bool = False
    external: bool = True  # the site-B external set


def effective_config(config: DemoConfig) -> DemoConfig:
    """--quick replaces the values still at their defaults with tiny ones; explicit values are kept.

    The token backbones (tiny-vit) are left out where keras-hub is not installed.
    """
    config = replace(
        config, workdir=Path(config.workdir), backbones=tuple(config.backbones), classifiers=tuple(config.classifiers)
    )
    if config.quick:
        config = replace(
            config,
            backbones=QUICK_BACKBONES if config.backbones == DEFAULT_BACKBONES else config.backbones,
            n_patients=QUICK_PATIENTS if config.n_patients == DEFAULT_PATIENTS else config.n_patients,
            image_size=QUICK_IMAGE_SIZE if config.image_size == DEFAULT_IMAGE_SIZE else config.image_size,
        )
    if not _keras_hub_installed():
        config = replace(config, backbones=tuple(b for b in config.backbones if b not in TOKEN_BACKBONES))
    return config


def _keras_hub_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("keras_hub") is not None


def phantom_params(config: DemoConfig) -> PhantomParams:
    return PhantomParams(
        n_patients=config.n_patients,
        images_per_patient=(2, 5),
        image_size=config.image_size,
        positive_fraction=0.74,
        test_fraction=0.2,
        seed=config.seed,
    )


def external_params(config: DemoConfig) -> PhantomParams:
    """Site B: other patients (seed + 1), half as many (at least 8), the same image size and class share."""
    return replace(phantom_params(config), n_patients=max(8, config.n_patients // 2), seed=config.seed + 1, site="B")


def prepare_data(config: DemoConfig, console, site: str = "A") -> Path:
    """The phantom dataset in workdir/data (site B: workdir/data_site_b), generated only when absent or made with
    other parameters."""
    params = phantom_params(config) if site == "A" else external_params(config)
    data_dir = config.workdir / ("data" if site == "A" else f"data_site_{site.lower()}")
    manifest = existing_phantoms(data_dir, params)
    if manifest is not None:
        console.print(f"Phantom dataset already in {data_dir} (same parameters): reused.")
        return manifest
    started = time.perf_counter()
    with console.status(f"Generating {params.n_patients} phantom patients at {params.image_size} px in {data_dir} ..."):
        manifest = generate_phantoms(
            data_dir,
            n_patients=params.n_patients,
            images_per_patient=params.images_per_patient,
            image_size=params.image_size,
            positive_fraction=params.positive_fraction,
            test_fraction=params.test_fraction,
            seed=params.seed,
            site=params.site,
        )
    n_images = sum(1 for _ in manifest.open()) - 1
    seconds = time.perf_counter() - started
    console.print(
        f"Generated {n_images} phantom images of {params.n_patients} patients (site {params.site}) in {seconds:.1f} s "
        f"-> {manifest}"
    )
    return manifest


def _weights_plan(config: DemoConfig) -> dict[str, str]:
    """backbone -> "imagenet" | "random" | file name, as stage one will resolve `config.weights`."""
    from featx.extract.backbones import get_backbone, resolve_weights

    plan = {}
    for name in config.backbones:
        spec = get_backbone(name)
        plan[name] = resolve_weights(config.weights, config.seed, spec, (config.image_size, config.image_size)).label
    return plan


def random_banner(backbones: list[str]) -> str:
    """The random-weights banner, naming the demo backbones that have no ImageNet weights cached."""
    return f"{RANDOM_BANNER} (no ImageNet weights cached for {', '.join(backbones)})"


def demo_command(config: DemoConfig, console) -> None:
    """Phantoms -> stage one -> stage two -> leaderboard + report, then where everything is and what to run next."""
    started = time.perf_counter()
    config = effective_config(config)
    if not config.backbones:
        raise FeatxError("The demo needs at least one backbone; pass e.g. --backbones mobilenetv3small,resnet50.")
    if not config.classifiers:
        raise FeatxError("The demo needs at least one classifier; pass e.g. --classifiers logreg,xgboost,dense.")
    manifest = prepare_data(config, console)
    external_manifest = prepare_data(config, console, site="B") if config.external else None
    if config.data_only:
        console.print(
            f"Data only: next, `{featx_command()} extract --backbone vgg16 --weights auto --manifest {manifest} "
            f"--data-root {manifest.parent}` (or `make extract manifest={manifest} data={manifest.parent}`)."
        )
        return

    weights = _weights_plan(config)
    random_backbones = [name for name, label in weights.items() if label == "random"]
    if random_backbones:
        console.print(f"[bold white on red] {random_banner(random_backbones)} [/]")
    timings = {"data": time.perf_counter() - started}
    stage_one(config, manifest, weights, console)
    if external_manifest is not None:
        stage_one(config, external_manifest, weights, console, out_dir=external_features(config))
    timings["stage one"] = time.perf_counter() - started - sum(timings.values())
    stage_two(config, console)
    timings["stage two"] = time.perf_counter() - started - sum(timings.values())

    from featx.results.finish import finish_results

    results_dir = config.workdir / "results"
    finished = finish_results(results_dir, console, manifest=manifest, data_root=manifest.parent, announce=False)
    if random_backbones:
        console.print(f"[bold white on red] {random_banner(random_backbones)} [/]")
    _print_where_and_next(finished, manifest.parent, results_dir, time.perf_counter() - started, timings, console)


def external_features(config: DemoConfig) -> Path:
    """Where the demo's site-B caches go."""
    return config.workdir / "features_site_b"


def stage_one(
    config: DemoConfig, manifest: Path, weights: dict[str, str], console, out_dir: Path | None = None
) -> None:
    """Extract every demo backbone into workdir/features (or out_dir: the site-B caches); a cache from other
    phantom parameters is rebuilt."""
    from featx.extract.stage import ExtractConfig, run_extract

    where = "" if out_dir is None else f" -> {out_dir} (external set {EXTERNAL_NAME})"
    console.rule(
        f"Stage one: {', '.join(config.backbones)} ({', '.join(f'{k}: {v}' for k, v in weights.items())}){where}"
    )
    extract_config = ExtractConfig(
        backbones=config.backbones,
        manifest=manifest,
        data_root=manifest.parent,
        out_dir=out_dir or config.workdir / "features",
        weights=config.weights,
        poolings=("avg",),
        image_size=config.image_size,
        seed=config.seed,
    )
    try:
        run_extract(extract_config, console)
    except CacheError as error:  # the demo owns its caches
        if isinstance(error, LockError):
            raise
        console.print(f"[yellow]{error} Rebuilding the demo caches.[/yellow]")
        run_extract(replace(extract_config, force=True), console)


def stage_two(config: DemoConfig, console) -> None:
    """Classify the demo caches into workdir/results (an earlier demo's runs with the same inputs are reused),
    then drop every other run there."""
    from featx.classify.stage import ClassifyConfig
    from featx.results import records
    from featx.results.finish import classify_runs

    console.rule(f"Stage two: {', '.join(config.classifiers)}")
    results_dir = config.workdir / "results"
    paths = classify_runs(
        ClassifyConfig(
            features_dir=config.workdir / "features",
            out_dir=results_dir,
            backbones=config.backbones,
            classifiers=config.classifiers,
            cv=QUICK_CV if config.quick else DEMO_CV,
            seed=config.seed,
            quick=config.quick,
            train_fractions=DEMO_TRAIN_FRACTIONS,
            subgroups=DEMO_SUBGROUPS,
            age_bands=DEMO_AGE_BANDS,
            subgroup_min=DEMO_SUBGROUP_MIN,
            externals=((EXTERNAL_NAME, external_features(config)),) if config.external else (),
            external_split=EXTERNAL_SPLIT,
            null_permutations=QUICK_NULL_PERMUTATIONS if config.quick else DEMO_NULL_PERMUTATIONS,
        ),
        console,
    )
    records.clear_runs(results_dir, keep=paths)  # an earlier demo's other runs must not join this leaderboard


def _print_where_and_next(finished, data_dir: Path, results_dir: Path, total: float, timings: dict, console) -> None:
    from featx.results import records

    # the best run that reads images (the metadata floor's model predicts from manifest columns, not pixels)
    image_runs = [run for run in finished.runs if run.get("backbone") != "metadata"]
    best_image = finished.best_run_id
    if image_runs and all(run["run_id"] != best_image for run in image_runs):
        from featx.results.leaderboard import leaderboard_rows

        best_image = next(row["run_id"] for row in leaderboard_rows(image_runs))
    bundle = records.bundle_path(results_dir, best_image)
    example = sorted((data_dir / "test").rglob("*.png"))[:1]
    example_text = str(example[0]) if example else str(data_dir / "test")
    report = finished.report if finished.report is not None else "(not written; see the message above)"
    featx = featx_command()
    console.print(
        f"\n[bold]Demo finished in {total:.0f} s[/] "
        f"({', '.join(f'{step} {seconds:.0f} s' for step, seconds in timings.items())}).\n"
        f"  leaderboard  {finished.leaderboard_csv}  ({finished.leaderboard_md.name})\n"
        f"  report       {report}\n"
        f"  best model   {bundle}\n"
        "\nNext:\n"
        f"  {featx} predict --model {bundle} {example_text}\n"
        f"  {featx} predict --model {bundle} {data_dir / 'test'} --out predictions.csv\n"
        f"  real data: {featx} fetch kermany --dest data/kermany, then {featx} extract / classify (see docs/datasets.md)\n"
        "  ImageNet weights: put Keras's *_notop.h5 files in ~/.keras/models (or run once with network) and "
        "re-run `featx demo`.",
        soft_wrap=True,  # commands stay whole lines at any terminal width, so they can be pasted
    )
