"""The report's CLAIM checklist: what featx knows of the items radiology journals ask for, from provenance.

CLAIM (Checklist for Artificial Intelligence in Medical Imaging, 2024 update) lists what a paper
on an imaging AI model must report. featx fills the items its own records answer (data source
and manifest hash, counts and failures, split method, preprocessing, backbone and weights,
classifier and grid, cross-validation, metrics with CIs, thresholds, subgroups, audits, external
validation, software versions) and lists the others as "for the author": featx cannot know them
(ethics approval, inclusion criteria of the source, reference standard, intended use, ...).
Item names follow CLAIM's topics; numbers are not quoted, so a checklist revision does not
mislead.
"""

from __future__ import annotations

import html
from collections import Counter

AUTHOR = "for the author"
AUTHOR_CSS = " class='author'"
# What featx cannot know from its files: listed so the author fills them in.
AUTHOR_ITEMS = (
    ("Study design and intended use", "clinical question, intended users and setting, prospective or retrospective"),
    ("Ethics", "approval and consent or waiver for the source data"),
    ("Data source and eligibility", "where and when the images were acquired, inclusion and exclusion criteria"),
    ("Reference standard", "how the labels were established, by whom, their known error rate"),
    ("Annotation", "annotators, their expertise, inter-reader agreement"),
    ("Sample size", "why this many patients (featx's data-efficiency curve can inform it)"),
    ("Missing data", "beyond unreadable images: how missing labels or metadata were handled upstream"),
    ("Clinical comparison", "readers or the current standard of care the model is compared with"),
    ("Limitations and generalisability", "populations, devices and sites the results may not carry to"),
    ("Availability", "where the code, model and data can be obtained"),
)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _join(values) -> str:
    values = [str(v) for v in dict.fromkeys(v for v in values if v not in (None, ""))]
    return ", ".join(values) if values else "–"


def _counts(counts) -> str:
    if isinstance(counts, dict):
        return ", ".join(f"{name} {n}" for name, n in counts.items()) or "–"
    return "–" if counts in (None, "", []) else str(counts)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def checklist(ranked: list[dict]) -> list[tuple[str, str, str]]:
    """(item, what featx recorded, source) for the runs of a results folder, best run first."""
    from featx.results.leaderboard import format_auc, format_params

    if not ranked:
        return []
    best = ranked[0]
    data = _dict(best.get("data"))
    config = _dict(best.get("config"))
    versions = _dict(best.get("versions"))
    classes = best.get("classes") or []
    counts = _dict(data.get("class_counts"))
    failures = sum(int((run.get("data") or {}).get("n_failed_images_dropped") or 0) for run in ranked[:1])
    backbones = Counter(run.get("backbone") for run in ranked)
    weights = _join(f"{run.get('backbone')}: {run.get('weights')}" for run in ranked)
    subgroups = [run for run in ranked if run.get("subgroups")]
    audited = [run for run in ranked if (run.get("audit") or {}).get("exact_duplicates")]
    near_audited = [run for run in audited if run["audit"].get("near_duplicates")]
    level_audited = [run for run in audited if run["audit"].get("split_levels")]
    external = sorted({name for run in ranked for name in (run.get("external") or {})})
    nulls = [run for run in ranked if run.get("null")]
    threshold = _dict(best.get("threshold"))
    auc = _dict(_dict(best.get("test")).get("auc"))
    split_text = (
        "manifest split column (train/val/test), patients kept on one side"
        if data.get("test_source") == "manifest"
        else "no test rows in the manifest: 20% of patients held out by a seeded hash of the patient id"
    )
    rows = [
        ("Data: manifest", f"sha256 {best.get('manifest_sha256')}", "run record manifest_sha256"),
        (
            "Data: images and classes",
            f"task {best.get('task')}; classes {_join(classes)}; training {_counts(counts.get('train'))}; test "
            f"{_counts(counts.get('test'))}",
            "run record data.class_counts",
        ),
        (
            "Data: patients",
            f"{data.get('n_train_patients')} training and {data.get('n_test_patients')} test patients "
            f"({data.get('n_train')} / {data.get('n_test')} images)",
            "run record data",
        ),
        (
            "Data: exclusions",
            f"{failures} unreadable image(s) dropped (listed in features/<backbone>.errors.csv)",
            "cache /errors",
        ),
        ("Partitions", split_text, "run record data.test_source"),
        (
            "Preprocessing",
            f"image size {best.get('image_size')}, resize {best.get('resize_mode')}, DICOM window "
            f"{best.get('dicom_window')}; each backbone's own input scaling",
            "cache attributes",
        ),
        (
            "Model: feature extractors (frozen)",
            _join(f"{name} ({n} runs)" for name, n in backbones.items()),
            "run records",
        ),
        ("Model: weights", weights, "cache attr weights (+ sha256 for files)"),
        (
            "Model: classifiers and grids",
            _join(run.get("classifier") for run in ranked)
            + f"; best {best.get('run_id')}: {format_params(best.get('best_params') or {})}",
            "run record grid, best_params",
        ),
        (
            "Training: model selection",
            f"{config.get('cv')}-fold patient-grouped stratified CV on training rows, seed {config.get('seed')}; "
            "refit on every training row; test rows used once",
            "run record config",
        ),
        (
            "Evaluation: metrics",
            f"best test ROC AUC {format_auc(auc.get('value'), auc.get('ci_low'), auc.get('ci_high'))} "
            f"({auc.get('method')} 95% CI); "
            "sensitivity, specificity, PPV, NPV, PR AUC, Brier in the run records",
            "run record test",
        ),
        (
            "Evaluation: threshold",
            f"{threshold.get('rule')} on out-of-fold predictions: {_number(threshold.get('value'))}",
            "run record threshold",
        ),
        (
            "Evaluation: subgroups",
            f"{len(subgroups)} run(s) with subgroup AUCs" if subgroups else "not run (featx classify --subgroups)",
            "run record subgroups",
        ),
        (
            "Evaluation: audits",
            (
                f"exact-duplicate audit in {len(audited)} run(s), near-duplicate audit in {len(near_audited)}, "
                f"patient- vs image-level CV in {len(level_audited)}"
            )
            if audited
            else "not recorded",
            "run record audit",
        ),
        (
            "Evaluation: external validation",
            f"yes: {_join(external)}" if external else "no (featx classify --external NAME=DIR)",
            "run record external",
        ),
        (
            "Evaluation: chance level",
            f"label-permutation null in {len(nulls)} run(s)"
            if nulls
            else "not run (featx classify --null-permutations K)",
            "run record null",
        ),
        (
            "Evaluation: shortcut floors",
            _join(
                label for label, name in (("raw pixels", "pixels"), ("metadata only", "metadata")) if name in backbones
            )
            or "none",
            "runs of the pixels / metadata backbones",
        ),
        ("Software", _join(f"{k} {v}" for k, v in versions.items() if v), "run record versions"),
    ]
    rows += [(item, f"{AUTHOR}: {hint}", "—") for item, hint in AUTHOR_ITEMS]
    return rows


def claim_section(ranked: list[dict]) -> str:
    """The report's CLAIM checklist section (HTML)."""
    rows = checklist(ranked)
    if not rows:
        return "<p class='note'>No runs.</p>"
    body = "".join(
        f"<tr{AUTHOR_CSS if text.startswith(AUTHOR) else ''}><td>{_e(item)}</td><td>{_e(text)}</td>"
        f"<td>{_e(source)}</td></tr>"
        for item, text, source in rows
    )
    n_author = sum(1 for _, text, _ in rows if text.startswith(AUTHOR))
    return (
        "<p class='note'>CLAIM (Checklist for Artificial Intelligence in Medical Imaging, 2024 update): the items "
        f"featx can answer from its own provenance, and {n_author} it cannot (marked <i>{AUTHOR}</i>).</p>"
        "<table><tr><th>item</th><th>what featx recorded</th><th>source</th></tr>" + body + "</table>"
    )
