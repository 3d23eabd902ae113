"""The input pipelines, by Keras backend: tf.data on TensorFlow (the default), NumPy on JAX and PyTorch.

Both give the same batches, shuffled per epoch and augmented per step with stateless draws, so that a
resumed run sees the batches an uninterrupted one would (docs/design.md). Only the TensorFlow backend
imports TensorFlow.
"""

import math


def steps_per_epoch(nb_samples, batch_size):
    # The original's fit_generator used samples_per_epoch=len(X_train): the last batch may be partial.
    return math.ceil(nb_samples / batch_size)


def _pipeline():
    import keras

    if keras.backend.backend() == "tensorflow":
        from snapshot_ensembles.data import tf_pipeline

        return tf_pipeline
    from snapshot_ensembles.data import numpy_pipeline

    return numpy_pipeline


def training_dataset(x, y, batch_size, seed, initial_epoch, nb_epoch, augment="original", standardization=None):
    """Batches (float32 images, int32 labels) for epochs initial_epoch..nb_epoch-1, steps_per_epoch(len(x),
    batch_size) of them per epoch, as Keras's fit takes them; `augment` is "original", "paper" or "none";
    `standardization`, per-channel (mean, std) in pixel units, or None for pixels in [0, 1]."""
    return _pipeline().training_dataset(x, y, batch_size, seed, initial_epoch, nb_epoch, augment=augment,
                                        standardization=standardization)


def evaluation_dataset(x, y, batch_size, standardization=None):
    """Unaugmented (images, labels) batches, in order: for validation."""
    return _pipeline().evaluation_dataset(x, y, batch_size, standardization)


def images_dataset(x, batch_size, standardization=None):
    """Unaugmented image batches, in order: for prediction."""
    return _pipeline().evaluation_dataset(x, None, batch_size, standardization)
