"""The paper's basic DenseNet (Huang et al.) for CIFAR, as used by Snapshot Ensembles: the basic DenseNet of
the DenseNet paper's Torch code (densenet.lua of August 2016, before DenseNet-BC), with 16 channels from the
first convolution, BN-ReLU-conv3x3 composite layers without bias, no bottleneck layers, transitions
BN-ReLU-conv1x1-avgpool without compression, L2 weight decay on every weight.

Initialisation: the original Keras suite's (He-uniform over the fan-in for the convolutions, Glorot-uniform
for the classifier), or with `torch_init` the Torch code's (snapshot_ensembles.models.layers).
"""

import keras
from keras import layers, regularizers

from snapshot_ensembles.config import DENSE_BLOCKS, DENSENET_DEPTH, check_value
from snapshot_ensembles.models.layers import bn_relu, channels_last, conv_kernel, linear_kernel, softmax_model


def _conv(filters, size, weight_decay, name=None, torch_init=False):
    return layers.Conv2D(filters, size, padding="same", use_bias=False,
                         kernel_initializer=conv_kernel() if torch_init else "he_uniform",
                         kernel_regularizer=regularizers.L2(weight_decay), name=name)


def _bn_relu(x, weight_decay):
    return bn_relu(x, gamma_regularizer=regularizers.L2(weight_decay),
                   beta_regularizer=regularizers.L2(weight_decay))


def conv_block(x, nb_filter, dropout_rate=None, weight_decay=1e-4, torch_init=False, size=3):
    """BN-ReLU-conv (3x3 in a dense block, 1x1 in a transition)-(dropout)."""
    x = _bn_relu(x, weight_decay)
    x = _conv(nb_filter, size, weight_decay, torch_init=torch_init)(x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate)(x)
    return x


def transition_block(x, nb_filter, dropout_rate=None, weight_decay=1e-4, torch_init=False):
    x = conv_block(x, nb_filter, dropout_rate, weight_decay, torch_init, size=1)
    return layers.AveragePooling2D((2, 2), strides=(2, 2))(x)


def dense_block(x, nb_layers, nb_filter, growth_rate, dropout_rate=None, weight_decay=1e-4, torch_init=False):
    for _ in range(nb_layers):
        new_features = conv_block(x, growth_rate, dropout_rate, weight_decay, torch_init)
        x = layers.Concatenate(axis=-1)([x, new_features])
        nb_filter += growth_rate
    return x, nb_filter


@channels_last
def create_dense_net(nb_classes, img_dim, depth=40, nb_dense_block=3, growth_rate=12, nb_filter=16,
                     dropout_rate=None, weight_decay=1e-4, verbose=True, torch_init=False):
    """DenseNet-`depth` with `nb_dense_block` blocks of (depth-4)/3 layers each; depth must be 3n+4.
    `torch_init`: the paper's Torch initialisation instead of the original's."""
    check_value("depth", depth, DENSENET_DEPTH)  # a ValueError, worded as the configuration's
    check_value("nb_dense_block", nb_dense_block, DENSE_BLOCKS)
    inputs = keras.Input(shape=tuple(img_dim))
    x = _conv(nb_filter, 3, weight_decay, name="initial_conv2D", torch_init=torch_init)(inputs)
    for block in range(nb_dense_block):
        x, nb_filter = dense_block(x, (depth - 4) // 3, nb_filter, growth_rate, dropout_rate, weight_decay,
                                   torch_init)
        if block < nb_dense_block - 1:
            x = transition_block(x, nb_filter, dropout_rate, weight_decay, torch_init)
    x = layers.GlobalAveragePooling2D()(_bn_relu(x, weight_decay))
    name, title = f"densenet_{depth}_{growth_rate}", f"DenseNet-{depth}-{growth_rate}"
    return softmax_model(inputs, x, nb_classes, name, title, verbose,
                         kernel_initializer=linear_kernel() if torch_init else "glorot_uniform",
                         kernel_regularizer=regularizers.L2(weight_decay),
                         bias_regularizer=regularizers.L2(weight_decay))
