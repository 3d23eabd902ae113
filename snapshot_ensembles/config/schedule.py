"""The cosine-annealing arithmetic, free of Keras imports so that flags are checked instantly."""

import math

# Per epoch (the original), per optimizer step (the paper), or the paper's single-model multistep baseline.
SCHEDULE_MODES = ("epoch", "batch", "multistep")


def cosine_annealing_lr(t, cycle_length, alpha_zero):
    """lr(t) = alpha_zero / 2 * (cos(pi * (t mod c) / c) + 1); `t` is the zero-based epoch or step."""
    return alpha_zero / 2 * (math.cos(math.pi * (t % cycle_length) / cycle_length) + 1)


def multistep_lr(epoch, nb_epochs, alpha_zero):
    """The paper's single-model baseline: alpha_zero, divided by 10 at 50 % and again at 75 % of training.

    As the paper's Torch code (train.lua, multistep) decides it on the one-based epoch e: ÷10 from
    e >= T/2, ÷100 from e >= 3T/4; `epoch` is zero-based.
    """
    one_based = epoch + 1
    decays = (one_based >= 0.5 * nb_epochs) + (one_based >= 0.75 * nb_epochs)
    return alpha_zero * 0.1 ** decays
