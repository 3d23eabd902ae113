"""The paper's basic DenseNet (Huang et al.) for CIFAR, as used by Snapshot Ensembles.

BN-ReLU-conv3x3 composite layers without bias, L2 weight decay on every weight, transitions
BN-ReLU-conv1x1-avgpool, then BN-ReLU-global average pooling-softmax.
"""

import keras
from keras import layers, regularizers

from snapshot_ensembles.config import DENSENET_DEPTH, MODEL_SIZE, check_value
from snapshot_ensembles.models.batch_norm import batch_normalization


def _bn(weight_decay):
    return batch_normalization(gamma_regularizer=regularizers.L2(weight_decay),
                               beta_regularizer=regularizers.L2(weight_decay))


def _conv(filters, size, weight_decay, name=None):
    return layers.Conv2D(filters, size, padding="same", use_bias=False, kernel_initializer="he_uniform",
                         kernel_regularizer=regularizers.L2(weight_decay), name=name)


def conv_block(x, nb_filter, dropout_rate=None, weight_decay=1e-4):
    x = layers.Activation("relu")(_bn(weight_decay)(x))
    x = _conv(nb_filter, 3, weight_decay)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate)(x)
    return x


def transition_block(x, nb_filter, dropout_rate=None, weight_decay=1e-4):
    x = layers.Activation("relu")(_bn(weight_decay)(x))
    x = _conv(nb_filter, 1, weight_decay)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate)(x)
    return layers.AveragePooling2D((2, 2), strides=(2, 2))(x)


def dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate=None, weight_decay=1e-4):
    for _ in range(nb_layers):
        new_features = conv_block(x, growth_rate, dropout_rate, weight_decay)
        x = layers.Concatenate(axis=-1)([x, new_features])
        nb_filter += growth_rate
    return x, nb_filter


def create_dense_net(nb_classes, img_dim, depth=40, nb_dense_block=3, growth_rate=12, nb_filter=16,
                     dropout_rate=None, weight_decay=1e-4, verbose=True):
    """DenseNet-`depth` with `nb_dense_block` blocks of (depth-4)/3 layers each; depth must be 3n+4."""
    check_value("depth", depth, DENSENET_DEPTH)  # a ValueError, worded as the configuration's
    check_value("nb_dense_block", nb_dense_block, MODEL_SIZE)
    nb_layers = (depth - 4) // 3

    inputs = keras.Input(shape=tuple(img_dim))
    x = _conv(nb_filter, 3, weight_decay, name="initial_conv2D")(inputs)
    for _ in range(nb_dense_block - 1):
        x, nb_filter = dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate, weight_decay)
        x = transition_block(x, nb_filter, dropout_rate, weight_decay)
    x, nb_filter = dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate, weight_decay)
    x = layers.Activation("relu")(_bn(weight_decay)(x))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(nb_classes, activation="softmax", dtype="float32",
                           kernel_regularizer=regularizers.L2(weight_decay),
                           bias_regularizer=regularizers.L2(weight_decay))(x)
    model = keras.Model(inputs, outputs, name=f"densenet_{depth}_{growth_rate}")
    if verbose:
        print(f"DenseNet-{depth}-{growth_rate} created.")
    return model
