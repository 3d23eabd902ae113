"""BatchNormalization with Keras 1.1.1's defaults (epsilon 1e-5, also Torch's), shared by the networks."""

from keras import layers

# Keras 1.1.1's default epsilon (keras/layers/normalization.py); Keras 3's is 1e-3. The original
# networks trained with it, so their release weights compute the original outputs only with it.
KERAS1_EPSILON = 1e-5


def batch_normalization(**kwargs):
    """Channels-last BatchNormalization with the original's epsilon (momentum 0.99 is the same in both)."""
    return layers.BatchNormalization(axis=-1, epsilon=KERAS1_EPSILON, **kwargs)
