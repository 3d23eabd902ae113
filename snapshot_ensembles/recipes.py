"""Training recipes: the original suite's (the default) and the paper's (Huang et al., 2017, section 4).

A recipe fills in every training flag the user left unset; an explicit flag always wins. The
resolved values, not the recipe's name, define a run: they are what the run record stores and
what resuming compares.

Weight decay is counted as the paper's Torch code counts it (optim.sgd's weightDecay): every step
adds WD x w to each weight's gradient, which is a penalty of WD / 2 x sum(w^2) in the training loss.
The original Keras DenseNet's L2(1e-4) penalty is therefore a weight decay of 2e-4.

This module imports no Keras, so that flags are resolved and checked before TensorFlow starts.
"""

import dataclasses

from snapshot_ensembles.errors import ConfigError

RECIPE_NAMES = ("original", "paper")
AUGMENTATIONS = ("original", "paper", "none")
NORMALIZATIONS = ("unit", "channel")

# The original scripts: plain SGD, the learning rate set per epoch, the Keras 1 rotations and shifts,
# pixels scaled to [0, 1]; weight decay and dropout only in the DenseNet (its L2(1e-4) on every weight).
# The ResNet, which the original lacks, trains as its WRN.
ORIGINAL = {"momentum": 0.0, "nesterov": False, "bn_momentum": 0.99, "schedule": "epoch", "augment": "original",
            "normalize": "unit", "batch_size": {"wrn": 128, "dn": 64, "resnet": 128},
            "dropout": {"wrn": 0.0, "dn": 0.2, "resnet": 0.0}, "weight_decay": {"wrn": 0.0, "dn": 2e-4, "resnet": 0.0}}
# The paper: SGD with Nesterov momentum 0.9, batch 64, per-iteration annealing, padded crops and
# flips on per-channel standardised images (fb.resnet.torch's CIFAR pipeline), no dropout (Table 1
# has the DenseNet with dropout as a baseline of its own), BatchNormalization's moving statistics with
# Torch's momentum 0.1 (nn.BatchNormalization's default, which is Keras's 0.9; the original's 0.99 is
# Keras 1's). Weight decay 5e-4 for the ResNet and the WRN, 1e-4 for the DenseNet; the Torch code's own
# default, 1e-4 for every network, is `--weight_decay 1e-4`.
PAPER = {"momentum": 0.9, "nesterov": True, "bn_momentum": 0.9, "schedule": "batch", "augment": "paper",
         "normalize": "channel", "batch_size": 64, "dropout": 0.0,
         "weight_decay": {"wrn": 5e-4, "dn": 1e-4, "resnet": 5e-4}}
RECIPES = {"original": ORIGINAL, "paper": PAPER}
# The network definition (config.ModelConfig.variant) of runs saved before --variant: the original's,
# but for the ResNet, which is the paper's only.
VARIANT_BEFORE_VARIANTS = {"wrn": "original", "dn": "original", "resnet": "paper"}
BN_MOMENTUM_BEFORE_RECIPES = 0.99  # every run before the recipes set --bn_momentum


def recipe_values(recipe, model):
    """The recipe's value of every flag it sets, for `model`."""
    return {name: value[model] if isinstance(value, dict) else value for name, value in RECIPES[recipe].items()}


def resolve(training, schedule, model):
    """(training, schedule) with every value left None filled in from `training.recipe` for `model`.

    `training` is a config.TrainingConfig; `schedule` the learning-rate schedule's mode or None.
    """
    if training.recipe not in RECIPES:
        raise ConfigError(f"{{recipe}} is not a recipe: choose one of {', '.join(RECIPE_NAMES)}",
                          recipe=("recipe", training.recipe))
    values = recipe_values(training.recipe, model)
    recipe_schedule = values.pop("schedule")
    schedule = recipe_schedule if schedule is None else schedule
    filled = {name: value for name, value in values.items() if getattr(training, name) is None}
    training = dataclasses.replace(training, **filled)
    if training.nesterov and training.momentum == 0:
        raise ConfigError("{nesterov} needs a momentum: add for example {momentum}", nesterov=("nesterov",),
                          momentum=("momentum", 0.9))
    for name, allowed in (("augment", AUGMENTATIONS), ("normalize", NORMALIZATIONS)):
        if getattr(training, name) not in allowed:
            raise ConfigError(f"{{value}} is not an option: choose one of {', '.join(allowed)}",
                              value=(name, getattr(training, name)))
    return training, schedule


def flags_of_runs_before_recipes(saved_flags):
    """The flags the recipes added, with the values a run saved before them trained with (the original's).

    Such a record has --no_augment and no --augment; its other recipe flags were saved resolved already.
    """
    if "augment" in saved_flags or "no_augment" not in saved_flags:
        return {}
    original = recipe_values("original", saved_flags.get("model", "wrn"))
    return {"weight_decay": original["weight_decay"], "normalize": original["normalize"],
            "augment": "none" if saved_flags["no_augment"] else "original"}
