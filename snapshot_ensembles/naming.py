"""The datasets and the file-name prefix of a network (snapshot_ensembles.run_folder spells the files)."""

# dataset key -> (tag in file names, number of classes, title for people)
DATASETS = {"cifar10": ("CIFAR10", 10, "CIFAR-10"), "cifar100": ("CIFAR100", 100, "CIFAR-100"),
            "digits": ("DIGITS", 10, "scikit-learn digits (demo)")}


def dataset_title(dataset):
    return DATASETS[dataset][2]


def model_prefix(dataset, model, wrn_N=2, wrn_k=4, dn_depth=40, dn_growth_rate=12, resnet_depth=110, dn_blocks=3,
                 variant=None):
    """`WRN-CIFAR10-16-4`, `PreActWRN-CIFAR10-34-4`, `DenseNet-CIFAR100-40-12-3blocks`, `ResNet-CIFAR10-110`, ...

    The original's networks keep the original's prefixes (its release weights are named by them): its
    post-activation WRN, and its one-block DenseNet. The paper's pre-activation WRN and a DenseNet of
    several dense blocks have weights of other shapes and are named apart. The DenseNet's variant
    changes its initialisation only, not the weights a file holds, and is not part of its prefix.
    """
    tag = DATASETS[dataset][0]
    if model == "wrn":
        family = "PreActWRN" if variant == "paper" else "WRN"
        return f"{family}-{tag}-{6 * wrn_N + 4}-{wrn_k}"
    if model == "dn":
        return f"DenseNet-{tag}-{dn_depth}-{dn_growth_rate}" + (f"-{dn_blocks}blocks" if dn_blocks != 1 else "")
    if model == "resnet":
        return f"ResNet-{tag}-{resnet_depth}"
    raise ValueError(f"unknown model {model!r}")
