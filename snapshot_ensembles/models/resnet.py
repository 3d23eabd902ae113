"""The CIFAR ResNet of He et al. (2016) as the Snapshot Ensembles paper trained it (ResNet-110), built as the
paper's Torch code (fb.resnet.torch, CIFAR branch) builds it, with its default type A shortcuts, which add no
weights (docs/paper.md).
"""

import keras
from keras import layers

from snapshot_ensembles.config import RESNET_DEPTH, check_value
from snapshot_ensembles.models.batch_norm import batch_normalization
from snapshot_ensembles.models.layers import bn_relu, channels_last, linear_kernel, softmax_model, torch_conv


def downsampling_shortcut(x):
    """Type A: keep every second pixel, then append as many all-zero channels."""
    x = layers.AveragePooling2D(pool_size=1, strides=2)(x)
    return layers.Concatenate(axis=-1)([x, layers.Rescaling(0.0)(x)])


def basic_block(x, filters, strides=1):
    shortcut = downsampling_shortcut(x) if strides != 1 else x
    y = bn_relu(torch_conv(x, filters, 3, strides))
    y = batch_normalization()(torch_conv(y, filters))
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


@channels_last
def create_resnet(input_dim, nb_classes=10, depth=110, verbose=1):
    """ResNet-`depth` (6n+2: 20, 32, 44, 56, 110, ...) for `input_dim` images, softmax over `nb_classes`."""
    check_value("depth", depth, RESNET_DEPTH)  # a ValueError, worded as the configuration's
    inputs = keras.Input(shape=tuple(input_dim))
    x = bn_relu(torch_conv(inputs, 16))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range((depth - 2) // 6):
            x = basic_block(x, filters, strides=2 if stage > 0 and block == 0 else 1)
    x = layers.GlobalAveragePooling2D()(x)
    return softmax_model(inputs, x, nb_classes, f"resnet_{depth}", f"ResNet-{depth}", verbose,
                         kernel_initializer=linear_kernel())
