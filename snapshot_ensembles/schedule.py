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


def check_snapshot_counts(nb_epochs, nb_snapshots):
    """Raise ValueError unless nb_epochs splits into nb_snapshots whole cycles."""
    if isinstance(nb_snapshots, bool) or not isinstance(nb_snapshots, int) or nb_snapshots < 1:
        raise ValueError(f"the number of snapshots M must be an integer >= 1, got {nb_snapshots!r}")
    if isinstance(nb_epochs, bool) or not isinstance(nb_epochs, int) or nb_epochs < 1:
        raise ValueError(f"the number of epochs must be an integer >= 1, got {nb_epochs!r}")
    if nb_epochs % nb_snapshots != 0:
        lower = nb_epochs - nb_epochs % nb_snapshots
        suggestion = f"{lower} or {lower + nb_snapshots}" if lower else f"{nb_snapshots}"
        raise ValueError(
            f"nb_epoch ({nb_epochs}) must be a multiple of M ({nb_snapshots}) so that every cycle has "
            f"the same length: use for example nb_epoch {suggestion}")
