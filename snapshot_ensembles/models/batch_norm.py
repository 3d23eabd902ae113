"""BatchNormalization with Keras 1.1.1's defaults (epsilon 1e-5, also Torch's), shared by the networks,
and its fused variant for fast training (`--no_deterministic`)."""

import keras
from keras import layers

# Keras 1.1.1's default epsilon (Keras 3's: 1e-3): the original's release weights compute its outputs with it.
KERAS1_EPSILON = 1e-5


def batch_normalization(**kwargs):
    """Channels-last BatchNormalization with the original's epsilon (momentum 0.99 is the same in both)."""
    return layers.BatchNormalization(axis=-1, epsilon=KERAS1_EPSILON, **kwargs)


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization whose training step on TensorFlow is one fused kernel (FusedBatchNormV3):
    same variables and statistics, rounded differently, hence `--no_deterministic` only (docs/performance.md).
    Inference, other backends and the options the kernel lacks take Keras's own path."""

    def _fused_applies(self, inputs, training, mask):
        return (training and self.trainable and mask is None and not self.renorm and not self.synchronized
                and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = self.moving_mean.shape[0]
        scale = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        empty = tf.constant([], "float32")
        # oneDNN's bfloat16 kernel (float32 sums inside) beats a float32 one on whole blocks of 16 channels
        # only, and loses elsewhere (docs/performance.md).
        bfloat16_kernel = inputs.dtype == tf.bfloat16 and channels % 16 == 0
        outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs if bfloat16_kernel else tf.cast(inputs, "float32"), scale=scale, offset=offset, mean=empty,
            variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel returns the unbiased batch variance; Keras's moving variance follows the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * ((count - 1.0) / count)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


# Weight files address a layer by its class name: under Keras's, the fused and the plain network load each
# other's snapshots; the registration lets a whole .keras file (and copy.deepcopy) find the class.
FusedBatchNormalization.__name__ = layers.BatchNormalization.__name__
keras.saving.register_keras_serializable(package="snapshot_ensembles",
                                         name="FusedBatchNormalization")(FusedBatchNormalization)


def with_fused_batch_norm(model):
    """A copy of `model` (same layer names, configurations and weights) whose BatchNormalization layers
    are FusedBatchNormalization; its weight files load into the original and the other way round."""

    def clone(layer):
        cls = FusedBatchNormalization if type(layer) is layers.BatchNormalization else layer.__class__
        return cls.from_config(layer.get_config())

    # The copy draws new initial weights and dropout seeds (then takes the original's weights): a
    # --no_deterministic run is not meant to repeat a deterministic one.
    fused = keras.models.clone_model(model, clone_function=clone)
    fused.set_weights(model.get_weights())
    return fused
