"""The pre-activation Wide Residual Network the Snapshot Ensembles paper trained (Zagoruyko & Komodakis, 2016).

Built as in their Torch code (szagoruyko/wide-residual-networks, models/wide-resnet.lua, itself on
fb.resnet.torch): a 3x3 convolution to 16 channels, then three groups of N blocks at 16k, 32k and
64k channels, the first block of groups 2 and 3 with stride 2, then BatchNormalization-ReLU, global
average pooling and a linear softmax layer. A block is BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3,
added to its shortcut: the identity where the width is unchanged; where it changes, a 1x1 (strided)
convolution, and then the block's first BN-ReLU is applied before the split, so that the projection
reads the normalised input too (wide-resnet.lua's `nInputPlane == nOutputPlane and convs or block`).

Convolutions have no bias and He-normal weights over the fan-out (MSRinit); the linear layer has
Torch's uniform weights and a zero bias; BatchNormalization starts at scale 1, offset 0, epsilon 1e-5.
A strided 3x3 convolution pads one pixel on every side, as Torch does, so that its outputs sit on the
even pixels that the 1x1 projection reads (Keras's "same" would pad only the bottom and right).

Depth: Zagoruyko counts 6N+4 layers (the first convolution, 6N in the blocks, three projections); the
paper's "Wide-ResNet-32" counts as fb.resnet.torch counts a CIFAR ResNet, 6N+2 (the first convolution,
6N, the classifier), so it is N=5, k=4 (docs/paper.md).
"""

import keras
from keras import layers

from snapshot_ensembles.models import torch_init
from snapshot_ensembles.models.batch_norm import batch_normalization


def _conv(x, filters, size, strides=1):
    if strides != 1 and size > 1:
        x = layers.ZeroPadding2D(size // 2)(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False,
                         kernel_initializer=torch_init.conv_kernel())(x)


def _bn_relu(x):
    return layers.Activation("relu")(batch_normalization()(x))


def wide_basic_block(x, filters, strides=1, dropout=0.0):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut (a 1x1 projection where the shape changes)."""
    projected = x.shape[-1] != filters or strides != 1
    activated = _bn_relu(x)
    shortcut = _conv(activated, filters, 1, strides) if projected else x
    y = _conv(activated, filters, 3, strides)
    y = _bn_relu(y)
    if dropout > 0.0:
        y = layers.Dropout(dropout)(y)
    y = _conv(y, filters, 3)
    return layers.Add()([y, shortcut])


def create_pre_activation_wrn(input_dim, nb_classes=10, N=5, k=4, dropout=0.0, verbose=1):
    """Pre-activation WRN with N blocks per group and width factor k (Zagoruyko's WRN-(6N+4)-k; the paper's
    Wide-ResNet-(6N+2)) for `input_dim` (rows, cols, channels) images, softmax over `nb_classes`."""
    inputs = keras.Input(shape=tuple(input_dim))
    x = _conv(inputs, 16, 3)
    for group, width in enumerate((16 * k, 32 * k, 64 * k)):
        for block in range(N):
            x = wide_basic_block(x, width, strides=2 if group > 0 and block == 0 else 1, dropout=dropout)
    x = _bn_relu(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(nb_classes, activation="softmax", dtype="float32",
                           kernel_initializer=torch_init.linear_kernel())(x)
    depth = 6 * N + 4
    model = keras.Model(inputs, outputs, name=f"preact_wrn_{depth}_{k}")
    if verbose:
        print(f"Pre-activation Wide Residual Network-{depth}-{k} created.")
    return model
