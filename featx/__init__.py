"""featx: frozen-backbone feature extraction and classical classifiers for medical images.

The public API (numpydoc in each function; docs/python-api.md)::

    import featx
    features = featx.extract("data/manifest.csv", "data", backbone="resnet50")  # stage one -> features/
    board = featx.classify(features, out="results")                             # stage two -> Leaderboard
    board.to_pandas()                                                            # leaderboard.csv as a DataFrame
    featx.leaderboard("results")                                                 # the same, from disk
    featx.load_features("features/resnet50.h5").X                                # embeddings with labels, ids...
    featx.load_model(board.bundle()).predict(["xray.png"])                       # new images

`__all__` lists exactly the public API (tests/test_api.py fails when a name disappears). Importing featx
imports no stage's heavy dependencies (TensorFlow, scikit-learn, pandas): they load on first use.
"""

__version__ = "0.1.0"

from featx.api import (
    Features,
    Leaderboard,
    Model,
    classify,
    export,
    extract,
    leaderboard,
    load_features,
    load_model,
)
from featx.errors import FeatxError

__all__ = [
    "Features",
    "FeatxError",
    "Leaderboard",
    "Model",
    "__version__",
    "classify",
    "export",
    "extract",
    "leaderboard",
    "load_features",
    "load_model",
]
