"""The layers the networks share: the paper's Torch initialisation, Torch's convolution and the softmax head.

Initialisers are made per layer: an unseeded Keras initialiser shared by several layers would give them
all the same values, and one made at import would draw its seed before the run seeds Python.
"""

import functools

import keras
from keras import layers

from snapshot_ensembles.models.batch_norm import batch_normalization


def channels_last(builder):
    """The builder's layers take (height, width, channels) images whatever keras.json's image_data_format says:
    Keras reads it when each layer is made, and CIFAR arrays are channels-last."""
    @functools.wraps(builder)
    def build(*args, **kwargs):
        saved = keras.config.image_data_format()
        keras.config.set_image_data_format("channels_last")
        try:
            return builder(*args, **kwargs)
        finally:
            keras.config.set_image_data_format(saved)

    return build


def conv_kernel():
    """MSRinit: normal(0, sqrt(2 / (kernel height x width x output channels))), He over the fan-out."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def linear_kernel():
    """Torch's nn.Linear weights: uniform in +-1/sqrt(fan_in) (and a zero bias, Keras's default)."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_conv(x, filters, size=3, strides=1):
    """A bias-free convolution with Torch's initialisation; a strided 3x3 one pads a pixel on every side, as
    Torch does, so its outputs sit on the even pixels a shortcut keeps (Keras's "same": bottom and right)."""
    padding = "same"
    if strides != 1 and size > 1:
        x = layers.ZeroPadding2D(size // 2)(x)
        padding = "valid"
    return layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False,
                         kernel_initializer=conv_kernel())(x)


def bn_relu(x, **batch_norm_options):
    return layers.Activation("relu")(batch_normalization(**batch_norm_options)(x))


def softmax_model(inputs, x, nb_classes, name, title, verbose, **dense_options):
    """The network ending in a float32 softmax layer (mixed precision computes the rest)."""
    outputs = layers.Dense(nb_classes, activation="softmax", dtype="float32", **dense_options)(x)
    model = keras.Model(inputs, outputs, name=name)
    if verbose:
        print(f"{title} created.")
    return model
