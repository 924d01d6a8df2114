"""The one patient hold-out: which whole patients form a test split, for `manifest scan` and stage two's fallback."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping

from featx.errors import FeatxError


def holdout_patients(patient_strata: Mapping[str, str], test_fraction: float, seed: int) -> set[str]:
    """Test patients: within each stratum, a seeded shuffle of its sorted patients, then the first round(fraction * n).

    Every stratum with at least two patients keeps at least one patient on each side.

    Parameters
    ----------
    patient_strata : mapping of str to str
        Each patient id and the stratum it belongs to (its label, or its rarest positive label).
    test_fraction : float
        Share of each stratum's patients to hold out, strictly between 0 and 1.
    seed : int
        The same seed and patients always give the same test patients.

    Returns
    -------
    set of str
        The held-out patient ids.
    """
    if not 0.0 < test_fraction < 1.0:
        raise FeatxError(f"The test fraction must lie strictly between 0 and 1. Got {test_fraction} instead.")
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, stratum in patient_strata.items():
        strata[stratum].append(patient)
    rng = random.Random(seed)
    test: set[str] = set()
    for stratum in sorted(strata):
        patients = sorted(strata[stratum])
        rng.shuffle(patients)
        n_test = round(test_fraction * len(patients))
        if len(patients) >= 2:
            n_test = min(max(n_test, 1), len(patients) - 1)
        test.update(patients[:n_test])
    return test
