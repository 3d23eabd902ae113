"""The initialisation of the paper's Torch networks (fb.resnet.torch, Zagoruyko's WRN, DenseNet's Lua code).

Made per layer: an unseeded Keras initialiser shared by several layers would give them all the same
values, and one made at import would draw its seed before the run seeds Python.
"""

import keras


def conv_kernel():
    """MSRinit: normal(0, sqrt(2 / (kernel height x width x output channels))), He over the fan-out."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def linear_kernel():
    """Torch's nn.Linear weights: uniform in +-1/sqrt(fan_in) (the networks then zero its bias, Keras's default)."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
