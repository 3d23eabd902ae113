"""The paper's basic DenseNet (Huang et al.) for CIFAR, as used by Snapshot Ensembles.

BN-ReLU-conv3x3 composite layers without bias, L2 weight decay on every weight, transitions
BN-ReLU-conv1x1-avgpool, then BN-ReLU-global average pooling-softmax. The basic DenseNet of the
DenseNet paper's Torch code (liuzhuang13/DenseNet, densenet.lua of August 2016, before DenseNet-BC):
16 channels from the first convolution, no bottleneck layers and no compression in the transitions.

Initialisation: the original Keras suite's (He-uniform over the fan-in for the convolutions,
Glorot-uniform for the classifier), or with `torch_init` the Torch code's (He-normal over the
fan-out, Torch's uniform classifier weights; snapshot_ensembles.models.torch_init).
"""

import keras
from keras import layers, regularizers

from snapshot_ensembles.config import DENSE_BLOCKS, DENSENET_DEPTH, check_value
from snapshot_ensembles.models import torch_init as torch_initializers
from snapshot_ensembles.models.batch_norm import batch_normalization


def _bn(weight_decay):
    return batch_normalization(gamma_regularizer=regularizers.L2(weight_decay),
                               beta_regularizer=regularizers.L2(weight_decay))


def _conv(filters, size, weight_decay, name=None, torch_init=False):
    initializer = torch_initializers.conv_kernel() if torch_init else "he_uniform"
    return layers.Conv2D(filters, size, padding="same", use_bias=False, kernel_initializer=initializer,
                         kernel_regularizer=regularizers.L2(weight_decay), name=name)


def conv_block(x, nb_filter, dropout_rate=None, weight_decay=1e-4, torch_init=False):
    x = layers.Activation("relu")(_bn(weight_decay)(x))
    x = _conv(nb_filter, 3, weight_decay, torch_init=torch_init)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate)(x)
    return x


def transition_block(x, nb_filter, dropout_rate=None, weight_decay=1e-4, torch_init=False):
    x = layers.Activation("relu")(_bn(weight_decay)(x))
    x = _conv(nb_filter, 1, weight_decay, torch_init=torch_init)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate)(x)
    return layers.AveragePooling2D((2, 2), strides=(2, 2))(x)


def dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate=None, weight_decay=1e-4, torch_init=False):
    for _ in range(nb_layers):
        new_features = conv_block(x, growth_rate, dropout_rate, weight_decay, torch_init)
        x = layers.Concatenate(axis=-1)([x, new_features])
        nb_filter += growth_rate
    return x, nb_filter


def create_dense_net(nb_classes, img_dim, depth=40, nb_dense_block=3, growth_rate=12, nb_filter=16,
                     dropout_rate=None, weight_decay=1e-4, verbose=True, torch_init=False):
    """DenseNet-`depth` with `nb_dense_block` blocks of (depth-4)/3 layers each; depth must be 3n+4.
    `torch_init`: the paper's Torch initialisation instead of the original's."""
    check_value("depth", depth, DENSENET_DEPTH)  # a ValueError, worded as the configuration's
    check_value("nb_dense_block", nb_dense_block, DENSE_BLOCKS)
    nb_layers = (depth - 4) // 3

    inputs = keras.Input(shape=tuple(img_dim))
    x = _conv(nb_filter, 3, weight_decay, name="initial_conv2D", torch_init=torch_init)(inputs)
    for _ in range(nb_dense_block - 1):
        x, nb_filter = dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate, weight_decay, torch_init)
        x = transition_block(x, nb_filter, dropout_rate, weight_decay, torch_init)
    x, nb_filter = dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate, weight_decay, torch_init)
    x = layers.Activation("relu")(_bn(weight_decay)(x))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(nb_classes, activation="softmax", dtype="float32",
                           kernel_initializer=torch_initializers.linear_kernel() if torch_init else "glorot_uniform",
                           kernel_regularizer=regularizers.L2(weight_decay),
                           bias_regularizer=regularizers.L2(weight_decay))(x)
    model = keras.Model(inputs, outputs, name=f"densenet_{depth}_{growth_rate}")
    if verbose:
        print(f"DenseNet-{depth}-{growth_rate} created.")
    return model
