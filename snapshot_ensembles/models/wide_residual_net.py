"""Wide Residual Network exactly as in the original Snapshot Ensembles suite (post-activation blocks).

Layer order, bias use and default initialisers follow the Keras 1 original so that its release
weights convert layer by layer (see convert_weights.py).
"""

import keras
from keras import layers

from snapshot_ensembles.models.layers import bn_relu, channels_last, softmax_model


def initial_conv(inputs):
    return bn_relu(layers.Conv2D(16, 3, padding="same")(inputs))


def residual_block(inputs, filters, dropout=0.0):
    """conv3x3-BN-ReLU-(dropout)-conv3x3-BN-ReLU, added to the input (1x1 projection if widths differ)."""
    shortcut = inputs
    if inputs.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, padding="same")(inputs)
    x = bn_relu(layers.Conv2D(filters, 3, padding="same")(inputs))
    if dropout > 0.0:
        x = layers.Dropout(dropout)(x)
    x = bn_relu(layers.Conv2D(filters, 3, padding="same")(x))
    return layers.Add()([shortcut, x])


@channels_last
def create_wide_residual_network(input_dim, nb_classes=100, N=2, k=1, dropout=0.0, verbose=1):
    """WRN-(6N+4)-k for `input_dim` (rows, cols, channels) images, softmax over `nb_classes`."""
    inputs = keras.Input(shape=tuple(input_dim))
    x = initial_conv(inputs)
    for group, width in enumerate((16 * k, 32 * k, 64 * k)):
        if group > 0:
            x = layers.MaxPooling2D((2, 2))(x)
        for _ in range(N):
            x = residual_block(x, width, dropout)
    x = layers.Flatten()(layers.AveragePooling2D((8, 8))(x))
    depth = 6 * N + 4
    name, title = f"wrn_{depth}_{k}", f"Wide Residual Network-{depth}-{k}"
    return softmax_model(inputs, x, nb_classes, name, title, verbose)
