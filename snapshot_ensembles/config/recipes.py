"""Training recipes: the original suite's (the default) and the paper's (Huang et al., 2017, section 4).

A recipe fills in every training flag left unset; an explicit flag always wins. The resolved values, not
the recipe's name, are what the run record stores and resuming compares. Weight decay counts as the
paper's Torch SGD counts it (WD x w added to each gradient). No Keras import: flags are checked before
TensorFlow starts.
"""

import dataclasses

from snapshot_ensembles.errors import ConfigError

AUGMENTATIONS = ("original", "paper", "none")
NORMALIZATIONS = ("unit", "channel")

# The original scripts; the ResNet, which the original lacks, trains as its WRN. The DenseNet's L2(1e-4) on
# every weight is weight decay 2e-4.
ORIGINAL = {"momentum": 0.0, "nesterov": False, "bn_momentum": 0.99, "schedule": "epoch", "augment": "original",
            "normalize": "unit", "batch_size": {"wrn": 128, "dn": 64, "resnet": 128},
            "dropout": {"wrn": 0.0, "dn": 0.2, "resnet": 0.0}, "weight_decay": {"wrn": 0.0, "dn": 2e-4, "resnet": 0.0}}
# The paper and its Torch code (fb.resnet.torch's CIFAR pipeline); Torch's BatchNormalization momentum 0.1
# is Keras's 0.9. Without dropout (Table 1 has the DenseNet with dropout as a baseline of its own).
PAPER = {"momentum": 0.9, "nesterov": True, "bn_momentum": 0.9, "schedule": "batch", "augment": "paper",
         "normalize": "channel", "batch_size": 64, "dropout": 0.0,
         "weight_decay": {"wrn": 5e-4, "dn": 1e-4, "resnet": 5e-4}}
RECIPES = {"original": ORIGINAL, "paper": PAPER}


def recipe_values(recipe, model):
    """The recipe's value of every flag it sets, for `model`."""
    return {name: value[model] if isinstance(value, dict) else value for name, value in RECIPES[recipe].items()}


def resolve(training, schedule, model):
    """(training, schedule) with every value left None filled in from `training.recipe` for `model`.

    `training` is a config.TrainingConfig; `schedule` the learning-rate schedule's mode or None.
    """
    values = recipe_values(training.recipe, model)
    recipe_schedule = values.pop("schedule")
    filled = {name: value for name, value in values.items() if getattr(training, name) is None}
    training = dataclasses.replace(training, **filled)
    if training.nesterov and training.momentum == 0 and "nesterov" in filled:
        # The recipe's Nesterov momentum, turned off by the user's momentum 0 (config checks the user's own --nesterov).
        raise ConfigError("{recipe} trains with Nesterov momentum, which {momentum} contradicts: add {plain} "
                          "for plain SGD, or give a momentum above 0", recipe=("recipe", training.recipe),
                          momentum=("momentum", training.momentum), plain=("nesterov", False))
    return training, recipe_schedule if schedule is None else schedule
