"""The compiled forward step every embedding goes through: stage one, `featx predict` and `featx bench extract`.

It lives beside the backbones, not in stage one's driver, so that predict and the
benchmark reproduce stage one's embeddings without importing the extract run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def forward_step(
    model, image_size: tuple[int, int], poolings: Sequence[str], max_batch: int | None = None
) -> Callable[[np.ndarray], dict]:
    """A compiled forward pass: (b, h, w, 3) float32 -> {pooling: (b, width) float32 numpy}.

    One trace serves every batch size (the leading dimension is left open), so the
    short last batch does not recompile. `max_batch` cuts a batch into calls of at most that many
    images, always from the batch's first row (so a batch gives the same bits wherever it runs).
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, int(image_size[0]), int(image_size[1]), 3), tf.float32)]

    @tf.function(input_signature=signature, reduce_retracing=True)
    def step(batch):
        return model(batch, training=False)

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        if max_batch is not None and len(images) > max_batch:
            parts = [predict(images[start : start + max_batch]) for start in range(0, len(images), max_batch)]
            return {pooling: np.concatenate([part[pooling] for part in parts]) for pooling in poolings}
        outputs = step(tf.convert_to_tensor(images, dtype=tf.float32))
        if not isinstance(outputs, dict):
            outputs = {poolings[0]: outputs}
        return {pooling: np.asarray(outputs[pooling], dtype=np.float32) for pooling in poolings}

    return predict
