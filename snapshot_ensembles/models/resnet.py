"""The CIFAR ResNet of He et al. (2016) as the Snapshot Ensembles paper trained it (ResNet-110).

Built as in the paper's Torch code (fb.resnet.torch, models/resnet.lua, CIFAR branch): a 3x3
convolution to 16 channels, then three stages of n basic blocks (conv3x3-BN-ReLU-conv3x3-BN, added
to the shortcut, then ReLU) at 16, 32 and 64 channels, the first block of stages 2 and 3 with stride
2, global average pooling and a linear softmax layer; depth = 6n + 2.

Shortcuts are fb.resnet.torch's type A, its default for CIFAR: the identity where the shape is
unchanged, and on downsampling a stride-2 subsampling whose channels are doubled with zeros
(Torch: SpatialAveragePooling(1, 1, 2, 2) then Concat(Identity, MulConstant(0))), so shortcuts add
no weights. Convolutions have no bias and He-normal weights over the fan-out; BatchNormalization's
epsilon is 1e-5, Torch's as well as Keras 1's (models.batch_norm).
"""

import keras
from keras import layers

from snapshot_ensembles.config import RESNET_DEPTH, check_value
from snapshot_ensembles.models import torch_init
from snapshot_ensembles.models.batch_norm import batch_normalization


def _conv(x, filters, strides=1):
    """A bias-free 3x3 convolution padded by one pixel on every side, as Torch pads it: with stride 2 its
    outputs sit on the even pixels, which the shortcut keeps (Keras's "same" pads only the bottom and right)."""
    if strides != 1:
        x = layers.ZeroPadding2D(1)(x)
    return layers.Conv2D(filters, 3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False,
                         kernel_initializer=torch_init.conv_kernel())(x)


def downsampling_shortcut(x):
    """Type A: keep every second pixel, then append as many all-zero channels."""
    x = layers.AveragePooling2D(pool_size=1, strides=2)(x)
    return layers.Concatenate(axis=-1)([x, layers.Rescaling(0.0)(x)])


def basic_block(x, filters, strides=1):
    shortcut = downsampling_shortcut(x) if strides != 1 else x
    y = layers.Activation("relu")(batch_normalization()(_conv(x, filters, strides)))
    y = batch_normalization()(_conv(y, filters))
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


def create_resnet(input_dim, nb_classes=10, depth=110, verbose=1):
    """ResNet-`depth` (6n+2: 20, 32, 44, 56, 110, ...) for `input_dim` images, softmax over `nb_classes`."""
    check_value("depth", depth, RESNET_DEPTH)  # a ValueError, worded as the configuration's
    n = (depth - 2) // 6
    inputs = keras.Input(shape=tuple(input_dim))
    x = layers.Activation("relu")(batch_normalization()(_conv(inputs, 16)))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            x = basic_block(x, filters, strides=2 if stage > 0 and block == 0 else 1)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(nb_classes, activation="softmax", dtype="float32",
                           kernel_initializer=torch_init.linear_kernel())(x)
    model = keras.Model(inputs, outputs, name=f"resnet_{depth}")
    if verbose:
        print(f"ResNet-{depth} created.")
    return model
