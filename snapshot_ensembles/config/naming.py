"""The datasets: their tag in file names, number of classes and title (ModelConfig.prefix names the files)."""

# dataset key -> (tag in file names, number of classes, title for people)
DATASETS = {"cifar10": ("CIFAR10", 10, "CIFAR-10"), "cifar100": ("CIFAR100", 100, "CIFAR-100"),
            "digits": ("DIGITS", 10, "scikit-learn digits (demo)")}
CIFAR_DATASETS = ("cifar10", "cifar100")  # those of the scripts: the original's, with its release weights


def dataset_title(dataset):
    return DATASETS[dataset][2]
