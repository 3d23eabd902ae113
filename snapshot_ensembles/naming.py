"""File names shared by training, prediction and downloads (SPEC section 2)."""

import os
import re

# dataset key -> (tag in file names, number of classes, title for people)
DATASETS = {"cifar10": ("CIFAR10", 10, "CIFAR-10"), "cifar100": ("CIFAR100", 100, "CIFAR-100"),
            "digits": ("DIGITS", 10, "scikit-learn digits (demo)")}


def dataset_title(dataset):
    return DATASETS[dataset][2]


def model_prefix(dataset, model, wrn_N=2, wrn_k=4, dn_depth=40, dn_growth_rate=12, resnet_depth=110):
    """`WRN-CIFAR10-16-4`, `DenseNet-CIFAR100-40-12`, `ResNet-CIFAR10-110`, ..."""
    tag = DATASETS[dataset][0]
    if model == "wrn":
        return f"WRN-{tag}-{6 * wrn_N + 4}-{wrn_k}"
    if model == "dn":
        return f"DenseNet-{tag}-{dn_depth}-{dn_growth_rate}"
    if model == "resnet":
        return f"ResNet-{tag}-{resnet_depth}"
    raise ValueError(f"unknown model {model!r}")


def best_path(weights_dir, prefix):
    return os.path.join(weights_dir, f"{prefix}-Best.weights.h5")


def snapshot_path(weights_dir, prefix, i):
    return os.path.join(weights_dir, f"{prefix}-{i}.weights.h5")


def history_path(weights_dir, prefix):
    return os.path.join(weights_dir, f"{prefix}-training.json")


def ensemble_json_path(weights_dir, prefix):
    return os.path.join(weights_dir, f"Ensemble-weights-{prefix}.json")


def legacy_ensemble_json_path(weights_dir, prefix):
    """The original project's name style."""
    return os.path.join(weights_dir, f"Ensemble weights {prefix}.json")


def run_info_path(weights_dir, prefix):
    """Metadata of the training run (flags, validation split) that prediction reads."""
    return os.path.join(weights_dir, f"{prefix}-run.json")


def state_path(weights_dir, prefix):
    """The unfinished run's saved state (snapshot_ensembles.run_state)."""
    return os.path.join(weights_dir, f"{prefix}-state.weights.h5")


def plot_path(weights_dir, prefix):
    """predict's --plot default."""
    return os.path.join(weights_dir, f"{prefix}-ensemble.png")


def member_files(weights_dir, prefix):
    """{"Best" or snapshot number: path} of the ensemble member files of `prefix` present in `weights_dir`."""
    pattern = re.compile(re.escape(prefix) + r"-(Best|[1-9]\d*)\.weights\.h5$")
    names = os.listdir(weights_dir) if os.path.isdir(weights_dir) else []
    found = {}
    for name in names:
        match = pattern.match(name)
        if match:
            key = match.group(1) if match.group(1) == "Best" else int(match.group(1))
            found[key] = os.path.join(weights_dir, name)
    return found


def run_files(weights_dir, prefix):
    """Every file that a training run of `prefix` and its predictions leave in `weights_dir`, present now."""
    paths = list(member_files(weights_dir, prefix).values())
    paths += [path(weights_dir, prefix) for path in (state_path, history_path, run_info_path, plot_path,
                                                     ensemble_json_path, legacy_ensemble_json_path)]
    return sorted(path for path in paths if os.path.isfile(path))
