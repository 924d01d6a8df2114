"""The one patient hold-out: which whole patients form a test split, for `manifest scan` and stage two's fallback."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping

from featx.errors import FeatxError


def patient_draw(patient: str, seed: int) -> float:
    """A patient's fixed draw in [0, 1): a seeded hash of its id alone, so other patients never change it."""
    digest = hashlib.sha256(f"featx-holdout\0{seed}\0{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_patients(patient_strata: Mapping[str, str], test_fraction: float, seed: int) -> set[str]:
    """Test patients: those whose seeded hash draw falls below the fraction.

    Each patient's side depends on its own id and the seed only, so re-scanning a folder after
    adding patients never moves an existing one, and the expected test share is `test_fraction`
    in every stratum. The one exception keeps each stratum usable: a stratum of at least two
    patients whose draws left one side empty sends its borderline patient (the lowest draw to
    test, or the highest to train) across; that patient may return once the stratum grows.

    Parameters
    ----------
    patient_strata : mapping of str to str
        Each patient id and the stratum it belongs to (its label, or its rarest positive label).
    test_fraction : float
        Expected share of each stratum's patients to hold out, strictly between 0 and 1.
    seed : int
        The same seed and patient id always give the same side.

    Returns
    -------
    set of str
        The held-out patient ids.
    """
    if not 0.0 < test_fraction < 1.0:
        raise FeatxError(f"The test fraction must lie strictly between 0 and 1. Got {test_fraction} instead.")
    strata: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for patient, stratum in patient_strata.items():
        strata[stratum].append((patient_draw(patient, seed), patient))
    test: set[str] = set()
    for draws in strata.values():
        draws.sort()
        chosen = [patient for draw, patient in draws if draw < test_fraction]
        if len(draws) >= 2 and not chosen:
            chosen = [draws[0][1]]
        elif len(draws) >= 2 and len(chosen) == len(draws):
            chosen = chosen[:-1]
        test.update(chosen)
    return test
