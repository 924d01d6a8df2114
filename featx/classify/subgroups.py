"""Subgroup AUCs: the test AUC per value of a metadata column (sex, view, age band, ...) and the largest gap.

For a binary run and each requested attribute, the test rows are split by the
attribute's value (rows without one are counted, not used). A subgroup with at
least `min_count` positives and `min_count` negatives gets its AUC with a DeLong
CI; smaller ones are named as too small. The largest AUC difference between two
reported subgroups is tested with a two-sample z-test on the independent DeLong
AUCs (evaluate.independent_auc_test); since it is the largest of k(k-1)/2 pairs,
its p-value is also given Bonferroni-adjusted over those pairs, and "significant"
uses the adjusted value. Subgroups split rows, not patients: a patient imaged
in two views sits in both view groups, which makes that test approximate; and, as
for the leaderboard's test CIs, DeLong treats images as independent, so several
images per patient make the intervals too narrow (small subgroups most of all).

`age_band` is derived from the `age` column with --age-bands edges (0,18,40,65 ->
0-17, 18-39, 40-64, 65+).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from featx.classify.evaluate import delong_ci, independent_auc_test
from featx.errors import ClassifyError

AGE_BAND = "age_band"
AGE_COLUMN = "age"
DEFAULT_AGE_BANDS = (0.0, 18.0, 40.0, 65.0)
DEFAULT_MIN_COUNT = 10
ALPHA = 0.05
TEST = "two-sample z-test on independent DeLong AUCs, Bonferroni-adjusted over the subgroup pairs"


def parse_age_bands(text: str) -> tuple[float, ...]:
    """'0,18,40,65' -> (0.0, 18.0, 40.0, 65.0); ClassifyError unless the edges are numbers, >= 0 and increasing."""
    try:
        edges = tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        edges = ()
    if not edges or any(not math.isfinite(e) or e < 0 for e in edges) or list(edges) != sorted(set(edges)):
        raise ClassifyError(
            f"The age bands must be increasing ages in years, separated by commas (e.g. 0,18,40,65). Got {text!r} instead."
        )
    return edges


def _years(value: float) -> str:
    return f"{value:g}"


def band_names(edges: Sequence[float]) -> list[str]:
    """0,18,40,65 -> ['0-17', '18-39', '40-64', '65+'] for whole years; '[a, b)' otherwise."""
    names = []
    for low, high in zip(edges, [*edges[1:], None]):
        if high is None:
            names.append(f"{_years(low)}+")
        elif float(low).is_integer() and float(high).is_integer():
            names.append(f"{_years(low)}-{_years(high - 1)}")
        else:
            names.append(f"[{_years(low)}, {_years(high)})")
    return names


def age_bands(ages: Sequence[str], edges: Sequence[float]) -> np.ndarray:
    """The band name of each age ('' when the age is missing, unreadable or below the first edge)."""
    names = band_names(edges)
    out = np.full(len(ages), "", dtype=object)
    for row, text in enumerate(ages):
        try:
            age = float(text)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(age) or age < edges[0]:
            continue
        out[row] = names[int(np.searchsorted(edges, age, side="right")) - 1]
    return out


def required_columns(attributes: Sequence[str]) -> dict[str, str]:
    """attribute -> the metadata column it is read from (age_band needs age)."""
    return {attribute: AGE_COLUMN if attribute == AGE_BAND else attribute for attribute in attributes}


def check_subgroups(attributes: Sequence[str], meta_columns: Sequence[str], task: str, where) -> None:
    """ClassifyError when a subgroup attribute has no metadata column in `where`, or the task is not binary."""
    for attribute, column in required_columns(attributes).items():
        if column not in meta_columns:
            available = sorted(meta_columns) + ([AGE_BAND] if AGE_COLUMN in meta_columns else [])
            raise ClassifyError(
                f"--subgroups {attribute}: '{where}' has no {column!r} metadata column (it has {available or 'none'}); "
                "add the column to the manifest and re-extract, or choose from those."
            )
    if task != "binary":
        raise ClassifyError(
            f"--subgroups needs a binary task; '{where}' is {task} (pick one label, e.g. `featx manifest chexpert "
            "--labels Edema`)."
        )


def attribute_values(attribute: str, meta: Mapping[str, Sequence[str]], edges: Sequence[float]) -> np.ndarray:
    """Each row's subgroup under `attribute` ('' = no value)."""
    if attribute == AGE_BAND:
        return age_bands(meta[AGE_COLUMN], edges)
    return np.asarray([str(v).strip() for v in meta[attribute]], dtype=object)


def _largest_gap(groups: list[dict], alpha: float) -> dict | None:
    if len(groups) < 2:
        return None
    ranked = sorted(groups, key=lambda group: group["auc"]["value"])
    low, high = ranked[0], ranked[-1]
    n_pairs = len(list(combinations(groups, 2)))
    test = independent_auc_test(high["auc"], low["auc"])
    adjusted = min(1.0, test["p_value"] * n_pairs)
    return {
        "high": high["name"],
        "low": low["name"],
        "difference": test["difference"],
        "z": test["z"],
        "p_value": test["p_value"],
        "p_adjusted": adjusted,
        "n_pairs": n_pairs,
        "significant": adjusted < alpha,
        "test": TEST,
    }


def subgroup_analysis(
    y_true,
    score,
    meta: Mapping[str, Sequence[str]],
    attributes: Sequence[str],
    edges: Sequence[float] = DEFAULT_AGE_BANDS,
    min_count: int = DEFAULT_MIN_COUNT,
    alpha: float = ALPHA,
) -> dict:
    """The run JSON's "subgroups" section for binary test rows (y_true 0/1, score P(positive), meta per row)."""
    y_true = np.asarray(y_true).astype(int).reshape(-1)
    score = np.asarray(score, dtype=float).reshape(-1)
    result: dict = {
        "attributes": {},
        "min_positives": int(min_count),
        "min_negatives": int(min_count),
        "age_bands": [float(e) for e in edges],
        "alpha": alpha,
        "test": TEST,
    }
    for attribute in attributes:
        values = attribute_values(attribute, meta, edges)
        groups, too_small = [], []
        for name in sorted(set(values) - {""}):
            rows = values == name
            n_positive = int(y_true[rows].sum())
            entry = {
                "name": str(name),
                "n": int(rows.sum()),
                "n_positive": n_positive,
                "n_negative": int(rows.sum()) - n_positive,
            }
            if n_positive >= min_count and entry["n_negative"] >= min_count:
                groups.append({**entry, "auc": delong_ci(y_true[rows], score[rows], alpha=alpha)})
            else:
                too_small.append(entry)
        result["attributes"][attribute] = {
            "groups": groups,
            "too_small": too_small,
            "n_missing": int(np.sum(values == "")),
            "largest_gap": _largest_gap(groups, alpha),
        }
    return result
