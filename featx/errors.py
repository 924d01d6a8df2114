"""The exceptions featx raises for a user's mistake.

Every FeatxError is shown by the CLI as one sentence with exit code 2 and no
traceback; anything else is an internal failure (exit code 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeatxError(Exception):
    """A problem with the user's input: one sentence saying what, where and what is allowed."""

    exit_code = 2


class ManifestError(FeatxError):
    """A manifest that is missing, malformed or inconsistent."""


class ImageReadError(FeatxError):
    """One image that cannot be decoded (recorded per image; a run goes on)."""


class BackboneError(FeatxError):
    """An unknown backbone, pooling or image size it cannot take."""


class WeightsError(FeatxError):
    """Weights that cannot be had (no network, missing or foreign file)."""


class CacheError(FeatxError):
    """An embedding cache that is missing, incomplete, truncated or unreadable."""


class StaleCacheError(CacheError):
    """A complete cache whose attributes differ from the request."""


class LockError(CacheError):
    """Another process is writing the same cache."""


class ClassifyError(FeatxError):
    """Stage two cannot run on these features (one class, too few patients, NaNs...)."""


class ResultsError(FeatxError):
    """A results directory that is empty, unwritable or foreign."""


class BundleError(FeatxError):
    """A saved model bundle that is missing, foreign or cannot be rebuilt."""


class FetchError(FeatxError):
    """A dataset download or archive that cannot be used."""


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed name closest to value, or None when nothing is close."""
    matches = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
    return matches[0] if matches else None


def one_of_message(parameter: str, value: object, allowed: Iterable[str]) -> str:
    """scikit-learn style: "The 'x' parameter must be one of [...]. Got 'y' instead." plus a hint."""
    allowed = list(allowed)
    message = f"The {parameter!r} parameter must be one of {allowed}. Got {value!r} instead"
    hint = closest(str(value), allowed)
    if hint is not None and hint != value:
        message += f"; did you mean {hint!r}?"
    else:
        message += "."
    return message


def short_reason(error: object, limit: int = 200) -> str:
    """An exception (or text) as one whitespace-collapsed line of at most `limit` characters, for a message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
