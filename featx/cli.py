"""The featx command line: one subcommand per verb, parsing only.

Each handler turns parsed arguments into a frozen config (or plain arguments)
and calls one function of the module that owns the work. Modules are imported
lazily so `featx --help` answers without importing TensorFlow.

Exit codes: 0 success, 2 bad input (one sentence, no traceback), 1 internal failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from featx import __version__
from featx.errors import FeatxError


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _console():
    from rich.console import Console

    return Console()


# ---------------------------------------------------------------- engine options (featx/engines), shared by verbs


def _add_engine_options(p, actors: bool = True) -> None:
    """--engine and the Ray options; `actors` adds the actor-pool options of the verbs that embed images."""
    p.add_argument(
        "--engine",
        default="local",
        help="local (this process, the default) or ray (a Ray cluster; needs pip install 'featx[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster: auto (the one started on this machine with `ray start`), HOST:PORT of its head node, "
        "or local (a Ray for this command only); default: RAY_ADDRESS if set, else local",
    )
    if actors:
        p.add_argument(
            "--ray-actors", type=_positive_int, default=None, help="actors (default: one per GPU, else one per CPU)"
        )
        p.add_argument(
            "--ray-cpus-per-actor",
            type=float,
            default=None,
            help="CPU cores each actor reserves to decode with (default: its node's cores per GPU less one per node for a "
            "GPU actor, 1 for a CPU actor)",
        )
        p.add_argument(
            "--ray-range-rows",
            type=_positive_int,
            default=None,
            help="manifest rows per work item, a multiple of --batch-size (default: 32 batches, 1,024 rows)",
        )


def _engine_config(args):
    from featx.engines import EngineConfig

    return EngineConfig(
        name=args.engine,
        address=args.ray_address,
        actors=getattr(args, "ray_actors", None),
        cpus_per_actor=getattr(args, "ray_cpus_per_actor", None),
        range_rows=getattr(args, "ray_range_rows", None),
    )


# ---------------------------------------------------------------- option groups shared by several verbs


def _add_subcommands(sub, name: str, help: str, metavar: str, builders) -> None:
    """A verb with actions (`featx manifest scan`, `featx bench extract`): each builder adds one; alone it prints help."""
    parser = sub.add_parser(name, help=help)
    actions = parser.add_subparsers(dest=f"{name}_command", metavar=metavar)
    for add_action in builders:
        add_action(actions)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _add_manifest_out(p) -> None:
    p.add_argument("-o", "--out", type=Path, required=True, help="manifest CSV to write")


def _add_holdout_options(p, when: str = "") -> None:
    """--test-fraction and --seed of the patient hold-out (featx.data.holdout)."""
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help=f"share of patients held out as test{when} (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=0, help=f"seed of the patient hold-out{when} (default 0)")


def _add_labeller_options(p) -> None:
    """--labels and --uncertain of the CheXpert labeller's observations (CheXpert, MIMIC-CXR-JPG)."""
    p.add_argument(
        "--labels",
        default="all",
        help="observations to label: all (the 14, default), competition (Atelectasis, Cardiomegaly, Consolidation, "
        "Edema, Pleural Effusion) or a comma list; one label gives a binary manifest (label vs negative)",
    )
    p.add_argument(
        "--uncertain",
        default="zeros",
        help="uncertain (-1) labels: zeros (U-Zeros, default), ones (U-Ones), ignore (U-Ignore: the image is left "
        "out), published (U-Ones for Atelectasis and Edema, U-Zeros for the rest), or per label, e.g. "
        "'Edema=ones,zeros'",
    )


def _add_batch_size(p, default: int = 32) -> None:
    p.add_argument(
        "--batch-size", type=_positive_int, default=default, help=f"images per forward pass (default {default})"
    )


def _add_results_dir(p) -> None:
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default results/)")


def _add_synthetic_embeddings(p) -> None:
    """The classifiers and the Kermany-sized synthetic embeddings of `featx bench classify` and `bench analyses`."""
    p.add_argument("--classifier", default="logreg,xgboost,dense", help="comma-separated classifiers")
    p.add_argument("--n-train", type=_positive_int, default=5216, help="training embeddings (default 5216)")
    p.add_argument("--n-test", type=_positive_int, default=624, help="test embeddings (default 624)")
    p.add_argument("--dim", type=_positive_int, default=2048, help="embedding width (default 2048)")


# ---------------------------------------------------------------- verbs: each parser builder beside its handler


def _add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list the registered backbones, their input sizes and embedding widths")
    p.set_defaults(handler=_cmd_backbones)


def _cmd_backbones(args):
    from featx.extract.backbones import print_backbones

    print_backbones(_console())


def _add_manifest(sub) -> None:
    _add_subcommands(
        sub,
        "manifest",
        "build and check image manifests (CSV); dataset adapters",
        "ACTION",
        (
            _add_manifest_scan,
            _add_manifest_check,
            _add_manifest_nih,
            _add_manifest_rsna,
            _add_manifest_chexpert,
            _add_manifest_mimic,
        ),
    )


def _adapter_parser(msub, name: str):
    """The parser of one dataset adapter, its help from the adapters registry."""
    from featx.data.adapters import ADAPTERS

    adapter = ADAPTERS[name]
    description = (
        f"Write the featx manifest of {adapter.title}, then run `featx manifest check` on it. "
        f"Reads {adapter.release}. Metadata columns: {', '.join(adapter.metadata)}."
    )
    return msub.add_parser(name, help=f"manifest of {adapter.title}", description=description)


def _add_manifest_scan(msub) -> None:
    p = msub.add_parser("scan", help="scan a folder (split/label/file or label/file) into a manifest CSV")
    p.add_argument("root", type=Path, help="data root to scan")
    _add_manifest_out(p)
    p.add_argument("--dataset", default="auto", help="patient-id parser: auto, kermany or generic (default auto)")
    p.add_argument(
        "--split-policy",
        default=None,
        help="for label/file trees: 'all-train' or 'patient-holdout' (patient-grouped stratified test split)",
    )
    _add_holdout_options(p, when=" with --split-policy patient-holdout")
    p.set_defaults(handler=_cmd_manifest_scan)


def _cmd_manifest_scan(args):
    from featx.data.manifest import scan_command

    scan_command(
        root=args.root,
        out=args.out,
        dataset=args.dataset,
        split_policy=args.split_policy,
        test_fraction=args.test_fraction,
        seed=args.seed,
        console=_console(),
    )


def _add_manifest_check(msub) -> None:
    p = msub.add_parser("check", help="validate a manifest: counts, balance, missing files, leakage")
    p.add_argument("manifest", type=Path)
    p.add_argument("--data-root", type=Path, required=True, help="folder the manifest paths are relative to")
    p.add_argument("--sha256", action="store_true", help="also verify sha256 where the manifest has it")
    p.add_argument("--strict", action="store_true", help="exit 2 when any problem is flagged")
    p.set_defaults(handler=_cmd_manifest_check)


def _cmd_manifest_check(args):
    from featx.data.manifest import check_command

    ok = check_command(manifest=args.manifest, data_root=args.data_root, verify_sha256=args.sha256, console=_console())
    return 0 if ok or not args.strict else 2


def _add_manifest_nih(msub) -> None:
    p = _adapter_parser(msub, "nih")
    p.add_argument("--entries", type=Path, required=True, help="Data_Entry_2017.csv")
    p.add_argument("--train-list", type=Path, required=True, help="train_val_list.txt")
    p.add_argument("--test-list", type=Path, required=True, help="test_list.txt")
    p.add_argument("--images", type=Path, required=True, help="folder holding the PNG images (searched recursively)")
    _add_manifest_out(p)
    p.set_defaults(handler=_cmd_manifest_nih)


def _cmd_manifest_nih(args):
    from featx.data.adapters.nih import nih_manifest_command

    nih_manifest_command(
        entries=args.entries,
        train_list=args.train_list,
        test_list=args.test_list,
        images=args.images,
        out=args.out,
        console=_console(),
    )


def _add_manifest_rsna(msub) -> None:
    p = _adapter_parser(msub, "rsna")
    p.add_argument("--root", type=Path, required=True, help="the release folder (also the data root)")
    _add_manifest_out(p)
    p.add_argument(
        "--label", default="any-box", help="any-box (Lung Opacity vs negative, default) or class (the three-way class)"
    )
    _add_holdout_options(p)
    p.set_defaults(handler=_cmd_manifest_rsna)


def _cmd_manifest_rsna(args):
    from featx.data.adapters.rsna import rsna_manifest_command

    rsna_manifest_command(args.root, args.out, args.label, args.test_fraction, args.seed, _console())


def _add_manifest_chexpert(msub) -> None:
    p = _adapter_parser(msub, "chexpert")
    p.add_argument("--root", type=Path, required=True, help="the CheXpert-v1.0(-small) folder (also the data root)")
    _add_manifest_out(p)
    _add_labeller_options(p)
    p.add_argument("--view", default="all", help="frontal, lateral or all (default)")
    p.add_argument("--valid-split", default="test", help="split of valid.csv's images: test (default) or val")
    p.set_defaults(handler=_cmd_manifest_chexpert)


def _cmd_manifest_chexpert(args):
    from featx.data.adapters.chexpert import chexpert_manifest_command

    chexpert_manifest_command(args.root, args.out, args.labels, args.uncertain, args.view, args.valid_split, _console())


def _add_manifest_mimic(msub) -> None:
    p = _adapter_parser(msub, "mimic")
    p.add_argument("--root", type=Path, required=True, help="the mimic-cxr-jpg/2.0.0 folder (also the data root)")
    _add_manifest_out(p)
    _add_labeller_options(p)
    p.add_argument(
        "--view",
        default="all",
        help="ViewPosition filter: all (default), frontal (PA, AP), lateral (LATERAL, LL) "
        "or a comma list such as PA,AP",
    )
    p.add_argument("--labeller", default="chexpert", help="label file: chexpert (default) or negbio")
    p.set_defaults(handler=_cmd_manifest_mimic)


def _cmd_manifest_mimic(args):
    from featx.data.adapters.mimic import mimic_manifest_command

    mimic_manifest_command(args.root, args.out, args.labels, args.uncertain, args.view, args.labeller, _console())


def _add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download or unpack a public dataset and check it against its manifest")
    p.add_argument("dataset", help="dataset name: kermany")
    p.add_argument("--dest", type=Path, required=True, help="folder to unpack into")
    p.add_argument("--from-zip", type=Path, default=None, help="use an archive downloaded by hand instead of kagglehub")
    p.set_defaults(handler=_cmd_fetch)


def _cmd_fetch(args):
    from featx.data.datasets import fetch_command

    fetch_command(dataset=args.dataset, dest=args.dest, from_zip=args.from_zip, console=_console())


def _add_extract(sub) -> None:
    from featx.data.dicom import DEFAULT_WINDOW, DICOM_WINDOWS  # no pydicom import until a DICOM is read
    from featx.data.images import RESIZE_MODES
    from featx.extract.backbones import POOLINGS  # the registry only: no TensorFlow at import time

    p = sub.add_parser("extract", help="stage one: embed every image once per backbone into features/<backbone>.h5")
    p.add_argument(
        "--backbone",
        action="append",
        required=True,
        help="backbone name(s) (featx backbones), hf://org/repo, a keras-hub preset folder or onnx:FILE; repeat or "
        "comma-separate",
    )
    p.add_argument("--manifest", type=Path, required=True, help="manifest CSV")
    p.add_argument(
        "--data-root",
        required=True,
        help="folder the manifest paths are relative to, or an fsspec URL of one (file://, s3://, gs://, ...)",
    )
    p.add_argument("--out", type=Path, default=Path("features"), help="output folder (default features/)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (Keras download/cache; keras-hub and ONNX backbones: their own checkpoint, also called "
        "pretrained), random (seeded init, for tests), auto (imagenet/pretrained if available) or PATH",
    )
    p.add_argument(
        "--pooling",
        default="avg",
        help=f"comma-separated poolings from {list(POOLINGS)} (default avg; each backbone keeps those its output "
        "supports: CNNs avg/max/gem/flatten, ViTs cls/mean/cls+mean/gem, a ViT asked only for CNN poolings cls+mean)",
    )
    p.add_argument(
        "--image-size", type=_positive_int, default=None, help="square input size (default: backbone's native)"
    )
    p.add_argument("--resize-mode", default="stretch", help=f"one of {list(RESIZE_MODES)} (default stretch)")
    p.add_argument(
        "--dicom-window",
        default=DEFAULT_WINDOW,
        help=f"DICOM grey levels: one of {list(DICOM_WINDOWS)} (default {DEFAULT_WINDOW}: the file's VOI LUT or "
        "first WindowCenter/Width, else the stored bit range; minmax: each image's range; percentile: 0.5-99.5%%)",
    )
    _add_batch_size(p)
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    p.add_argument("--force", action="store_true", help="rebuild a cache whose settings differ")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (recorded in the cache)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decode threads (default: one per core)")
    p.add_argument("--limit", type=_positive_int, default=None, help="only the first N manifest rows (smoke runs)")
    p.add_argument(
        "--no-pixels",
        action="store_true",
        help="leave out the raw-pixel floor (the 'pixels' backbone, added by default so every leaderboard has it)",
    )
    _add_engine_options(p)
    p.add_argument(
        "--ray-shards",
        action="store_true",
        help="--engine ray: actors write each range to a shard file beside the caches (the --out folder must be "
        "shared storage they can write), read back in order by this process; for wide poolings such as flatten",
    )
    p.set_defaults(handler=_cmd_extract)


def _cmd_extract(args):
    from featx.api import extract

    extract(
        args.manifest,
        args.data_root,
        [b for group in args.backbone for b in _csv_list(group)],
        out=args.out,
        pixels=not args.no_pixels,
        verbose=_console(),
        weights=args.weights,
        poolings=_csv_list(args.pooling),
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        dicom_window=args.dicom_window,
        batch_size=args.batch_size,
        mixed_precision=args.mixed_precision,
        force=args.force,
        seed=args.seed,
        workers=args.workers,
        limit=args.limit,
        engine=dataclasses.replace(_engine_config(args), shards=args.ray_shards),
    )


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="stage two: grouped-CV grid search on cached embeddings; test AUC with CIs")
    p.add_argument("--features", type=Path, default=Path("features"), help="folder of <backbone>.h5 caches")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="TRACKING_URI",
        help="log each run to MLflow (needs pip install 'featx[mlflow]'): one MLflow run per featx run, an experiment "
        "per dataset; default store ./mlruns (a local folder, no server), or a folder or tracking URI",
    )
    p.add_argument("--backbone", default=None, help="comma-separated backbones (default: every cache found)")
    p.add_argument("--classifier", default="logreg,xgboost,dense", help="comma-separated classifiers")
    p.add_argument("--pooling", default=None, help="comma-separated poolings (default: every pooling cached)")
    p.add_argument("--cv", type=_positive_int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="cores for the fits, split between parallel fits and each library's threads (default: every usable "
        "core; with --engine ray, -1: every CPU of the cluster)",
    )
    p.add_argument(
        "--threshold-rule",
        default="youden",
        help="youden, sens@0.95, spec@0.90 or f1; chosen on out-of-fold predictions",
    )
    p.add_argument(
        "--val-as-test", action="store_true", help="evaluate val rows with test instead of merging them into train"
    )
    p.add_argument("--quick", action="store_true", help="a small grid for smoke runs (not for reporting)")
    p.add_argument(
        "--force",
        action="store_true",
        help="re-fit every run, even those whose inputs are unchanged since they were fitted",
    )
    p.add_argument(
        "--train-fraction",
        default=None,
        help="data-efficiency curve: re-fit each run's chosen configuration on these shares of the training "
        "patients, e.g. 0.01,0.1,0.3,1.0 (no new search; 1.0 is the run itself)",
    )
    p.add_argument(
        "--efficiency-seeds", type=_positive_int, default=3, help="patient subsamples per fraction (default 3)"
    )
    p.add_argument(
        "--no-image-cv",
        action="store_true",
        help="skip the audit that cross-validates each run's configuration on plain image folds (saves cv fits/run)",
    )
    p.add_argument(
        "--image-cv-all",
        action="store_true",
        help="run that audit for every classifier's runs (default: only where fits are cheap, i.e. logreg's)",
    )
    p.add_argument(
        "--near-duplicate-threshold",
        type=float,
        default=None,
        help="cosine similarity (mean-centred embeddings) at which two images count as near duplicates (default 0.99)",
    )
    p.add_argument(
        "--subgroups",
        default=None,
        help="comma-separated metadata columns (e.g. sex,age_band,view; age_band comes from age): the test AUC with "
        "its DeLong CI per subgroup and a test of the largest gap, in the run JSON and the report (binary tasks)",
    )
    p.add_argument(
        "--age-bands", default="0,18,40,65", help="age band edges in years for age_band (default 0,18,40,65)"
    )
    p.add_argument(
        "--subgroup-min",
        type=_positive_int,
        default=10,
        help="positives and negatives a subgroup needs for its AUC; smaller ones are listed as too small (default 10)",
    )
    p.add_argument(
        "--external",
        action="append",
        default=None,
        metavar="NAME=FEATURES_DIR",
        help="score every run, without refitting, on another manifest's caches of the same backbones in "
        "FEATURES_DIR (repeatable): external AUC with CI, difference to the internal test AUC, calibration",
    )
    p.add_argument("--external-split", default="test", help="external rows to score: test (default) or all")
    p.add_argument(
        "--label-map", default=None, help="external class names -> the model's, e.g. Pneumonia=PNEUMONIA,Normal=NORMAL"
    )
    p.add_argument(
        "--no-metadata-floor",
        action="store_true",
        help="leave out the metadata-only floor (backbone 'metadata', built from the manifest's metadata columns)",
    )
    p.add_argument(
        "--null-permutations",
        type=int,
        default=0,
        help="label-permutation null: refit each run's chosen configuration K times on labels permuted between "
        "patients; p-value of the real test AUC (default 0: off)",
    )
    _add_engine_options(p, actors=False)
    p.set_defaults(handler=_cmd_classify)


def _cmd_classify(args):
    from featx.api import classify
    from featx.classify import audit, efficiency, external
    from featx.classify.subgroups import parse_age_bands

    threshold = (
        audit.NEAR_DUPLICATE_THRESHOLD if args.near_duplicate_threshold is None else args.near_duplicate_threshold
    )
    classify(
        features_dir=args.features,
        out=args.out,
        verbose=_console(),
        mlflow=args.mlflow,
        backbones=_csv_list(args.backbone) if args.backbone else None,
        classifiers=_csv_list(args.classifier),
        poolings=_csv_list(args.pooling) if args.pooling else None,
        cv=args.cv,
        seed=args.seed,
        n_jobs=args.n_jobs,  # None: every usable core (with --engine ray, every CPU of the cluster: featx.api)
        threshold_rule=args.threshold_rule,
        val_as_test=args.val_as_test,
        quick=args.quick,
        force=args.force,
        train_fractions=efficiency.check_fractions(_csv_list(args.train_fraction)) if args.train_fraction else (),
        efficiency_seeds=args.efficiency_seeds,
        image_cv=not args.no_image_cv,
        image_cv_all=args.image_cv_all,
        near_duplicate_threshold=audit.check_threshold(threshold),
        subgroups=_csv_list(args.subgroups) if args.subgroups else (),
        age_bands=parse_age_bands(args.age_bands),
        subgroup_min=args.subgroup_min,
        externals=external.externals_of(args.external or ()),
        external_split=external.check_split(args.external_split),
        label_map=external.parse_label_map(args.label_map) if args.label_map else (),
        metadata_floor=not args.no_metadata_floor,
        null_permutations=args.null_permutations,
        engine=_engine_config(args),
    )


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="write one pooling of an embedding cache as Parquet (pandas, polars, DuckDB read it)"
    )
    p.add_argument("features", type=Path, help="a features/<backbone>.h5 cache")
    p.add_argument("--format", default="parquet", help="parquet (default)")
    p.add_argument("--pooling", default="avg", help="the pooling to export (default avg)")
    p.add_argument(
        "-o", "--out", type=Path, default=None, help="file to write (default <cache>.<pooling>.parquet beside it)"
    )
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args):
    from featx.extract.export import export_command

    export_command(args.features, args.out, args.format, args.pooling, console=_console())


def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="print and write the backbone x classifier leaderboard")
    _add_results_dir(p)
    p.set_defaults(handler=_cmd_leaderboard)


def _cmd_leaderboard(args):
    from featx.results.leaderboard import leaderboard_command

    leaderboard_command(results_dir=args.results, console=_console())


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write the self-contained HTML report with plots")
    _add_results_dir(p)
    p.add_argument("-o", "--out", type=Path, default=None, help="HTML file (default results/report.html)")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the images are, for the near-duplicate thumbnails (default: the data root each cache recorded)",
    )
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args):
    from featx.results.report import report_command

    report_command(results_dir=args.results, out=args.out, console=_console(), data_root=args.data_root)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict new images with a saved model bundle",
        description=(
            "Rebuild the run's backbone exactly, embed the images and apply its classifier and threshold. "
            "WARNING: a joblib bundle runs code when loaded; only load bundles from a trusted source."
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="results/models/<run>.joblib (trusted source only)")
    p.add_argument("inputs", nargs="+", help="image files, folders or a manifest CSV")
    p.add_argument(
        "--data-root",
        default=None,
        help="root for manifest paths: a folder, or a URL (file://, s3://, gs://, ...) read through fsspec",
    )
    p.add_argument("-o", "--out", type=Path, default=None, help="CSV (or JSON with --json) to write; default stdout")
    p.add_argument("--json", action="store_true", help="write JSON instead of CSV")
    _add_batch_size(p)
    _add_engine_options(p)
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args):
    from featx.results.predict import predict_command

    predict_command(
        model=args.model,
        inputs=args.inputs,
        data_root=args.data_root,
        out=args.out,
        as_json=args.json,
        batch_size=args.batch_size,
        console=_console(),
        engine=_engine_config(args),
    )


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on a generated phantom chest X-ray dataset")
    p.add_argument(
        "--workdir", type=Path, default=Path("demo"), help="where data, features and results go (default demo/)"
    )
    p.add_argument(
        "--weights", default="auto", help="auto (imagenet if cached, else random with a banner), imagenet, random"
    )
    p.add_argument(
        "--backbones",
        default="pixels,mobilenetv3small,resnet50,tiny-vit",
        help="comma-separated backbones (default: the raw-pixel floor, two CNNs and a tiny random ViT; --quick: "
        "pixels,tiny,tiny-vit)",
    )
    p.add_argument("--classifiers", default="logreg,xgboost,dense")
    p.add_argument("--patients", type=_positive_int, default=120, help="synthetic patients (default 120)")
    p.add_argument("--image-size", type=_positive_int, default=128, help="phantom image size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny run for tests")
    p.add_argument("--data-only", action="store_true", help="only generate the phantom dataset (workdir/data)")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args):
    from featx.demo import DemoConfig, demo_command

    config = DemoConfig(
        workdir=args.workdir,
        weights=args.weights,
        backbones=_csv_list(args.backbones),
        classifiers=_csv_list(args.classifiers),
        n_patients=args.patients,
        image_size=args.image_size,
        seed=args.seed,
        quick=args.quick,
        data_only=args.data_only,
    )
    demo_command(config, console=_console())


def _add_bench(sub) -> None:
    _add_subcommands(
        sub,
        "bench",
        "benchmarks: extract throughput/memory, classify grid time, audits and curves, featx vs training on images",
        "WHAT",
        (_add_bench_extract, _add_bench_classify, _add_bench_analyses, _add_bench_compare, _add_bench_scale),
    )


def _add_bench_extract(bsub) -> None:
    p = bsub.add_parser(
        "extract",
        help="bare forward pass vs full extract on large generated JPEGs, peak RSS; --engine ray: Ray vs local",
    )
    p.add_argument("--backbone", default="resnet50", help="backbone (--engine ray: comma-separated backbones)")
    p.add_argument("--images", default="256,1024", help="comma-separated image counts to compare peak RSS")
    p.add_argument("--source-size", type=_positive_int, default=1500, help="generated JPEG side in pixels")
    _add_batch_size(p)
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument(
        "--models",
        nargs="?",
        const="",
        default=None,
        help="compare forward img/s and peak RSS of NAME[@SIZE] models, each in a fresh process, batch size chosen "
        "per model (default resnet50@224,dinov2-small@224,dinov2-base@224,rad-dino@518; --images: images each)",
    )
    # --engine ray: the Ray engine against the local engine (featx/bench/engines.py)
    _add_engine_options(p)
    p.add_argument("--manifest", type=Path, default=None, help="--engine ray: real images instead of generated JPEGs")
    p.add_argument("--data-root", type=Path, default=None, help="--engine ray: the folder --manifest paths are in")
    p.add_argument("--image-size", type=_positive_int, default=None, help="--engine ray: input size (default native)")
    p.add_argument(
        "--classify", default="", help="--engine ray: also run these classifiers on both caches and compare the runs"
    )
    p.set_defaults(handler=_cmd_bench_extract)


def _cmd_bench_extract(args):
    if args.models is not None:
        from featx.bench.models import bench_models_command

        bench_models_command(
            _csv_list(args.models),
            n_images=max(int(n) for n in _csv_list(args.images)),
            batch_size=None,
            console=_console(),
        )
        return
    if args.engine != "local":
        from featx.bench.engines import bench_engines_command

        bench_engines_command(
            backbones=_csv_list(args.backbone),
            n_images=max(int(n) for n in _csv_list(args.images)),
            source_size=args.source_size,
            batch_size=args.batch_size,
            image_size=args.image_size,
            engine=_engine_config(args),
            workdir=args.workdir,
            console=_console(),
            manifest=args.manifest,
            data_root=args.data_root,
            classify=_csv_list(args.classify),
        )
        return
    from featx.bench.extract import bench_extract_command

    bench_extract_command(
        backbone=args.backbone,
        image_counts=tuple(int(n) for n in _csv_list(args.images)),
        source_size=args.source_size,
        batch_size=args.batch_size,
        workdir=args.workdir,
        console=_console(),
    )


def _add_bench_classify(bsub) -> None:
    p = bsub.add_parser("classify", help="time the default grids on Kermany-sized synthetic embeddings")
    _add_synthetic_embeddings(p)
    p.add_argument("--cv", type=_positive_int, default=5, help="patient-grouped folds (default 5)")
    p.add_argument(
        "--n-jobs",
        type=_positive_int,
        default=None,
        help="cores, split as featx classify splits them (default: all usable)",
    )
    p.add_argument("--repeat", type=_positive_int, default=1, help="time each search N times, report the fastest")
    p.set_defaults(handler=_cmd_bench_classify)


def _cmd_bench_classify(args):
    from featx.bench.classify import bench_classify_command

    bench_classify_command(
        classifiers=_csv_list(args.classifier),
        n_train=args.n_train,
        n_test=args.n_test,
        dim=args.dim,
        n_jobs=args.n_jobs,
        console=_console(),
        cv=args.cv,
        repeat=args.repeat,
    )


def _add_bench_analyses(bsub) -> None:
    p = bsub.add_parser(
        "analyses", help="time the duplicate audits and the data-efficiency curve on Kermany-sized embeddings"
    )
    _add_synthetic_embeddings(p)
    p.add_argument("--train-fraction", default="0.01,0.1,0.3,1.0", help="fractions of the curve")
    p.add_argument("--efficiency-seeds", type=_positive_int, default=3)
    p.add_argument("--n-jobs", type=int, default=2)
    p.set_defaults(handler=_cmd_bench_analyses)


def _cmd_bench_analyses(args):
    from featx.bench.analyses import bench_analyses_command

    bench_analyses_command(
        classifiers=_csv_list(args.classifier),
        fractions=_csv_list(args.train_fraction),
        seeds=args.efficiency_seeds,
        n_train=args.n_train,
        n_test=args.n_test,
        dim=args.dim,
        n_jobs=args.n_jobs,
        console=_console(),
    )


def _add_bench_scale(bsub) -> None:
    p = bsub.add_parser(
        "scale",
        help="stage two at the field's scale: synthetic caches of these row counts, seconds per phase and peak RSS",
    )
    p.add_argument("--rows", default="20000,100000", help="comma-separated row counts (e.g. 20000,100000,377000)")
    p.add_argument("--dim", type=_positive_int, default=1024, help="embedding width (default 1024)")
    p.add_argument("--labels", type=_positive_int, default=1, help="1: binary (default); K: a K-label task (NIH: 14)")
    p.add_argument("--classifier", default="logreg", help="comma-separated classifiers (default logreg)")
    p.add_argument("--n-jobs", type=_positive_int, default=None, help="cores for the fits (default: all usable)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder, kept (default: a temp dir, removed)")
    p.set_defaults(handler=_cmd_bench_scale)


def _cmd_bench_scale(args):
    from featx.bench.scale import bench_scale_command
    from featx.errors import FeatxError

    try:
        rows = tuple(_positive_int(n) for n in _csv_list(args.rows))
    except argparse.ArgumentTypeError:
        raise FeatxError(
            f"--rows must be comma-separated positive row counts, e.g. 20000,100000. Got {args.rows!r}."
        ) from None
    bench_scale_command(
        rows=rows,
        dim=args.dim,
        labels=args.labels,
        classifiers=tuple(_csv_list(args.classifier)),
        console=_console(),
        workdir=args.workdir,
        n_jobs=args.n_jobs,
    )


def _add_bench_compare(bsub) -> None:
    from featx.bench.compare import CompareConfig

    defaults = CompareConfig()
    p = bsub.add_parser(
        "compare",
        help="the seeds' way (backbone inside a Keras model, head trained N epochs on images) vs featx extract + "
        "classify dense, on the same real images: forward passes, wall time, test AUC",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=defaults.data_root,
        help="label/file folder of real images (default ../shared/data/kermany224/train)",
    )
    p.add_argument("--images", type=_positive_int, default=defaults.images, help="images drawn from it (default 1000)")
    p.add_argument("--image-size", type=_positive_int, default=defaults.image_size, help="input size (default 128)")
    p.add_argument("--backbone", default=defaults.backbone, help="backbone (default resnet50)")
    p.add_argument("--weights", default=defaults.weights, help="random (default), imagenet, auto or PATH")
    p.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help="seeds' way epochs (default 10)")
    _add_batch_size(p, defaults.batch_size)
    p.add_argument("--seed", type=int, default=defaults.seed, help="image draw, patient split and weights seed")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder to keep (default: a temp dir)")
    p.set_defaults(handler=_cmd_bench_compare)


def _cmd_bench_compare(args):
    from featx.bench.compare import CompareConfig, bench_compare_command

    config = CompareConfig(
        data_root=args.data_root,
        images=args.images,
        image_size=args.image_size,
        backbone=args.backbone,
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        workdir=args.workdir,
    )
    bench_compare_command(config, console=_console())


# ---------------------------------------------------------------- errors under make

# The Makefile variable for each CLI flag (the Makefile's "#:" lines list them). Under make an error that
# suggests a flag also names the variable the user types there. Per command first, then the common ones.
MAKE_VARIABLES: dict[str, dict[str, str]] = {
    "": {
        "--force": "force=1",
        "--weights": "weights=...",
        "--manifest": "manifest=CSV",
        "--data-root": "data=DIR",
        "--image-size": "image_size=N",
        "--resize-mode": "resize_mode=...",
        "--dicom-window": "dicom_window=...",
        "--batch-size": "batch_size=N",
        "--mixed-precision": "mixed_precision=1",
        "--workers": "workers=N",
        "--limit": "limit=N",
        "--seed": "seed=N",
        "--features": "features=DIR",
        "--classifier": "classifiers=...",
        "--cv": "cv=N",
        "--n-jobs": "n_jobs=N",
        "--threshold-rule": "threshold=RULE",
        "--val-as-test": "val_as_test=1",
        "--quick": "quick=1",
        "--subgroups": "subgroups=...",
        "--age-bands": "age_bands=...",
        "--subgroup-min": "subgroup_min=N",
        "--no-pixels": "no_pixels=1",
        "--train-fraction": "train_fraction=...",
        "--efficiency-seeds": "efficiency_seeds=N",
        "--no-image-cv": "no_image_cv=1",
        "--image-cv-all": "image_cv_all=1",
        "--near-duplicate-threshold": "near_duplicate_threshold=...",
        "--external": "external=NAME=DIR",
        "--external-split": "external_split=...",
        "--label-map": "label_map=...",
        "--no-metadata-floor": "no_metadata_floor=1",
        "--null-permutations": "null_permutations=K",
        "--results": "results=DIR",
        "--model": "model=PATH",
        "--engine": "engine=ray",
        "--ray-address": "ray_address=...",
        "--ray-actors": "ray_actors=N",
        "--ray-cpus-per-actor": "ray_cpus_per_actor=N",
        "--ray-range-rows": "ray_range_rows=N",
        "--ray-shards": "ray_shards=1",
        "--mlflow": "mlflow=...",
    },
    "extract": {"--backbone": "backbone=NAME", "--out": "features=DIR", "--pooling": "pooling=..."},
    "classify": {"--backbone": "backbones=...", "--out": "results=DIR", "--pooling": "poolings=..."},
    "predict": {"--out": "out=FILE"},
}


def make_hint(message: str, command: str | None) -> str:
    """The message with ' (make: force=1, ...)' before its final period for the flags it names; else unchanged.

    Flags inside a quoted command (`featx extract ... --force`) map with that command's variables, the others
    with `command`'s.
    """

    def variables(text: str, verb: str | None) -> list[str]:
        table = {**MAKE_VARIABLES[""], **MAKE_VARIABLES.get(verb or "", {})}
        return [table[flag] for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text) if flag in table]

    found = []
    for verb, text in re.findall(r"`featx (\w+)([^`]*)`", message):
        found += variables(text, verb)
    found += variables(re.sub(r"`featx \w+[^`]*`", "", message), command)
    if not found:
        return message
    hint = f" (make: {', '.join(dict.fromkeys(found))})"
    return f"{message[:-1]}{hint}." if message.endswith(".") else message + hint


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The featx argument parser: one subcommand per verb, each built beside its handler."""
    parser = argparse.ArgumentParser(
        prog="featx",
        description="Frozen ImageNet backbones -> cached embeddings (HDF5) -> grouped-CV classifiers -> leaderboard.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_verb in (
        _add_backbones,
        _add_manifest,
        _add_fetch,
        _add_extract,
        _add_classify,
        _add_export,
        _add_leaderboard,
        _add_report,
        _add_predict,
        _add_demo,
        _add_bench,
    ):
        add_verb(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one featx command and return its exit code (0 success, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        code = args.handler(args)
    except FeatxError as error:
        from featx.config import via_make

        message = make_hint(str(error), args.command) if via_make() else str(error)
        print(f"featx: error: {message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
