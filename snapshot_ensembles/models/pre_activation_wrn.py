"""The pre-activation Wide Residual Network the Snapshot Ensembles paper trained (Zagoruyko & Komodakis,
2016), built as their Torch code (wide-resnet.lua) builds it; docs/paper.md compares the two, and says why
the paper's "Wide-ResNet-32" is N=5, k=4 here.
"""

import keras
from keras import layers

from snapshot_ensembles.models.layers import bn_relu, channels_last, linear_kernel, softmax_model, torch_conv


def wide_basic_block(x, filters, strides=1, dropout=0.0):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut: where the shape changes, a 1x1 projection
    of the block's first BN-ReLU (wide-resnet.lua's `nInputPlane == nOutputPlane and convs or block`)."""
    projected = x.shape[-1] != filters or strides != 1
    activated = bn_relu(x)
    shortcut = torch_conv(activated, filters, 1, strides) if projected else x
    y = bn_relu(torch_conv(activated, filters, 3, strides))
    if dropout > 0.0:
        y = layers.Dropout(dropout)(y)
    y = torch_conv(y, filters, 3)
    return layers.Add()([y, shortcut])


@channels_last
def create_pre_activation_wrn(input_dim, nb_classes=10, N=5, k=4, dropout=0.0, verbose=1):
    """Pre-activation WRN with N blocks per group and width factor k (Zagoruyko's WRN-(6N+4)-k; the paper's
    Wide-ResNet-(6N+2)) for `input_dim` (rows, cols, channels) images, softmax over `nb_classes`."""
    inputs = keras.Input(shape=tuple(input_dim))
    x = torch_conv(inputs, 16, 3)
    for group, width in enumerate((16 * k, 32 * k, 64 * k)):
        for block in range(N):
            x = wide_basic_block(x, width, strides=2 if group > 0 and block == 0 else 1, dropout=dropout)
    x = layers.GlobalAveragePooling2D()(bn_relu(x))
    depth = 6 * N + 4
    name, title = f"preact_wrn_{depth}_{k}", f"Pre-activation Wide Residual Network-{depth}-{k}"
    return softmax_model(inputs, x, nb_classes, name, title, verbose, kernel_initializer=linear_kernel())
