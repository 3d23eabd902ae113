"""The typed configuration of a training run and of a prediction, built once by the command line
(snapshot_ensembles.cli) or directly by a program (demo.py, benchmarks/, a user's script).

A run's saved flags are `TrainConfig.to_dict()`: a flat dict keyed by flag name, the format of the run
record's "args" since the first version, so runs saved before this module resume and predict unchanged.
`from_dict` reads any such record back, filling in what later versions added with the values those
runs trained with.

This module imports no Keras, so that a configuration is checked before TensorFlow starts.
"""

import dataclasses
import math
from typing import Optional

from snapshot_ensembles import recipes
from snapshot_ensembles.errors import ConfigError
from snapshot_ensembles.naming import model_prefix
from snapshot_ensembles.schedule import SCHEDULE_MODES as SCHEDULES, check_snapshot_counts

MODELS = ("wrn", "dn", "resnet")
VARIANTS = ("original", "paper")
DISTRIBUTIONS = ("none", "mirrored", "multiworker")
DATASETS = ("cifar10", "cifar100", "digits")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: its family and the sizes that fix its weight shapes."""

    model: str = "wrn"  # wrn: Wide Residual Network, dn: DenseNet, resnet: the paper's CIFAR ResNet
    wrn_N: int = 2  # WRN blocks per group; depth 6N+4
    wrn_k: int = 4  # WRN width factor
    dn_depth: int = 40  # DenseNet depth, 3n+4
    dn_growth_rate: int = 12
    dn_blocks: int = 3  # dense blocks; 1 is the original scripts' network
    resnet_depth: int = 110  # 6n+2
    # original: the network as the original Keras suite defines it (post-activation WRN, Keras 1
    # initialisers); paper: as the paper's Torch code does (pre-activation WRN, He-normal fan-out
    # initialisation); None: the recipe's (training) or the one found in the weights folder (prediction).
    variant: Optional[str] = None

    def check(self):
        if self.model not in MODELS:
            raise ConfigError(f"{{model}} is not a network: choose one of {', '.join(MODELS)}", model=("model", self.model))
        if self.variant not in (None, *VARIANTS):
            raise ConfigError(f"{{variant}} is not a variant: choose one of {', '.join(VARIANTS)}",
                              variant=("variant", self.variant))
        if self.model == "resnet" and self.variant == "original":
            raise ConfigError("{model} exists only as the paper's network (the original suite has none): "
                              "drop {variant}",
                              model=("model", "resnet"), variant=("variant", "original"))
        if self.model == "dn" and (self.dn_depth < 7 or (self.dn_depth - 4) % 3 != 0):
            raise ConfigError("{depth} is not of the form 3n+4 with n >= 1 (for example 40, 100, 190)",
                              depth=("dn_depth", self.dn_depth))
        if self.model == "resnet" and (self.resnet_depth < 8 or (self.resnet_depth - 2) % 6 != 0):
            raise ConfigError("{depth} is not of the form 6n+2 with n >= 1 (for example 20, 56, 110)",
                              depth=("resnet_depth", self.resnet_depth))
        return self

    def prefix(self, dataset):
        """The run's file-name prefix, `WRN-CIFAR10-16-4`, ..."""
        return model_prefix(dataset, self.model, self.wrn_N, self.wrn_k, self.dn_depth, self.dn_growth_rate,
                            self.resnet_depth, dn_blocks=self.dn_blocks, variant=self.variant)

    def with_variant(self, recipe):
        """This configuration with the variant left unset taken from `recipe`, whose networks are the variant of
        the same name (the ResNet's is always the paper's)."""
        if self.model == "resnet":
            return dataclasses.replace(self, variant="paper")
        return self if self.variant is not None else dataclasses.replace(self, variant=recipe)

    @property
    def pre_activation_wrn(self):
        return self.model == "wrn" and self.variant == "paper"

    def flags(self):
        """The model flags that determine the weight shapes, as a user would type them."""
        paper = " --variant paper" if self.variant == "paper" and self.model != "resnet" else ""
        if self.model == "wrn":
            return f"--model wrn --wrn_N {self.wrn_N} --wrn_k {self.wrn_k}{paper}"
        if self.model == "resnet":
            return f"--model resnet --resnet_depth {self.resnet_depth}"
        return (f"--model dn --dn_depth {self.dn_depth} --dn_growth_rate {self.dn_growth_rate} "
                f"--dn_blocks {self.dn_blocks}{paper}")

    def describe(self, nb_classes):
        """The network in words and the flags to check when a weight file does not fit it."""
        if self.model == "wrn":
            return f"{self.network_name()} for {nb_classes} classes", "check --wrn_N/--wrn_k/--dataset"
        if self.model == "resnet":
            return f"ResNet-{self.resnet_depth} for {nb_classes} classes", "check --resnet_depth/--dataset"
        hint = "check --dn_depth/--dn_growth_rate/--dn_blocks/--dataset"
        if self.dn_blocks != 1:
            hint += " (the original release DenseNet had one dense block: try --dn_blocks 1)"
        return f"{self.network_name(initialisation=False)} for {nb_classes} classes", hint

    def network_name(self, initialisation=True):
        """The network in words, as the run record keeps it: `pre-activation WRN-34-4 (Wide-ResNet-32-4 as the
        paper counts)`, ..."""
        if self.model == "wrn":
            depth = 6 * self.wrn_N + 4
            if self.pre_activation_wrn:
                return (f"pre-activation WRN-{depth}-{self.wrn_k} (Wide-ResNet-{depth - 2}-{self.wrn_k} as the "
                        "paper counts)")
            return f"post-activation WRN-{depth}-{self.wrn_k} (the original suite's)"
        if self.model == "resnet":
            return f"ResNet-{self.resnet_depth} (the paper's, fb.resnet.torch)"
        initialiser = {"paper": "the paper's Torch initialisation", "original": "the original's Keras 1 "
                       "initialisation"}.get(self.variant) if initialisation else None
        blocks = f"{self.dn_blocks} dense block{'s' if self.dn_blocks > 1 else ''}"
        return f"DenseNet-{self.dn_depth}-{self.dn_growth_rate} with {blocks}" + (f", {initialiser}" if initialiser else "")


@dataclasses.dataclass(frozen=True)
class CycleConfig:
    """The learning-rate schedule: M cosine cycles over nb_epoch epochs, one snapshot per cycle."""

    M: int = 5
    nb_epoch: int = 200
    alpha_zero: float = 0.1  # peak learning rate of every cycle
    schedule: Optional[str] = None  # epoch | batch | multistep; None: the recipe's

    def check(self):
        try:
            check_snapshot_counts(self.nb_epoch, self.M)
        except ValueError as err:
            raise ConfigError(f"{{epochs}} {{M}}: {err}", epochs=("nb_epoch", self.nb_epoch), M=("M", self.M)) from None
        if self.schedule not in (None, *SCHEDULES):
            raise ConfigError(f"{{schedule}} is not a schedule: choose one of {', '.join(SCHEDULES)}",
                              schedule=("schedule", self.schedule))
        if self.schedule == "multistep" and self.M != 1:
            raise ConfigError(f"{{schedule}} is the single-model baseline: use {{M}} (not {self.M})",
                              schedule=("schedule", "multistep"), M=("M", 1))
        return self


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How the network is optimised; the fields left None take the recipe's value (`resolved`)."""

    recipe: str = "original"  # original | paper (snapshot_ensembles.recipes)
    batch_size: Optional[int] = None  # the global batch, split over the devices
    dropout: Optional[float] = None
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = None  # as Torch's SGD counts it: WD x w added to every gradient
    bn_momentum: Optional[float] = None  # of BatchNormalization's moving statistics
    augment: Optional[str] = None  # original | paper | none
    normalize: Optional[str] = None  # unit | channel
    seed: int = 0
    deterministic: bool = True  # TensorFlow op determinism: the same seed and data give the same snapshots
    mixed_precision: bool = False


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and what part of the training set is held out for validation."""

    data_dir: Optional[str] = None  # the official archive or its folder; None: the Keras cache, then download
    data_sha256: Optional[str] = None  # the archive's checksum; None: the official one; "skip": no check
    val_split: float = 0.0  # 0 validates on the test set, as the original did


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    distribute: str = "none"  # none | mirrored | multiworker (snapshot_ensembles.distribute)
    cpu_devices: Optional[int] = None  # split this machine's CPU into that many devices (mirrored)


_PARTS = {"model": ModelConfig, "cycles": CycleConfig, "training": TrainingConfig, "data": DataConfig,
          "devices": DeviceConfig}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that a training run reads: what it computes and where it keeps its files."""

    dataset: str = "cifar10"
    model: ModelConfig = ModelConfig()
    cycles: CycleConfig = CycleConfig()
    training: TrainingConfig = TrainingConfig()
    data: DataConfig = DataConfig()
    devices: DeviceConfig = DeviceConfig()
    weights_dir: str = "weights"
    overwrite: bool = False  # replace weight files of this model that no training run recorded
    resume: bool = True  # continue the unfinished run of the same model in weights_dir

    @property
    def prefix(self):
        return self.model.prefix(self.dataset)

    def resolved(self):
        """Checked, with the recipe's values in every training field left None."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"{{dataset}} is not a dataset here: choose one of {', '.join(DATASETS)}",
                              dataset=("dataset", self.dataset))
        self.model.check()
        self.cycles.check()
        training, schedule = recipes.resolve(self.training, self.cycles.schedule, self.model.model)
        resolved = dataclasses.replace(self, training=training, model=self.model.with_variant(training.recipe),
                                       cycles=dataclasses.replace(self.cycles, schedule=schedule))
        resolved.check_values()
        return resolved

    def check_values(self):
        """The numbers in range, as the command line's flag types check them."""
        training, devices = self.training, self.devices
        require(self.cycles.alpha_zero > 0 and math.isfinite(self.cycles.alpha_zero), "alpha_zero",
                self.cycles.alpha_zero, "a positive number")
        require(is_count(training.batch_size), "batch_size", training.batch_size, "a positive integer")
        for name in ("dropout", "momentum", "bn_momentum"):
            require(0 <= getattr(training, name) < 1, name, getattr(training, name), "in [0, 1)")
        require(0 <= self.data.val_split < 1, "val_split", self.data.val_split, "in [0, 1)")
        require(0 <= training.weight_decay < math.inf, "weight_decay", training.weight_decay, "0 or a positive number")
        require(is_count(training.seed + 1), "seed", training.seed, "0 or a positive integer")
        require(devices.distribute in DISTRIBUTIONS, "distribute", devices.distribute,
                f"one of {', '.join(DISTRIBUTIONS)}")
        require(devices.cpu_devices is None or is_count(devices.cpu_devices), "cpu_devices", devices.cpu_devices,
                "a positive integer or None")

    def to_dict(self):
        """The flat dict of flag values that the run record stores (its "args")."""
        flat = {"M": self.cycles.M, "nb_epoch": self.cycles.nb_epoch, "alpha_zero": self.cycles.alpha_zero}
        flat.update(dataclasses.asdict(self.model))
        flat.update(dataclasses.asdict(self.training))
        flat.update(schedule=self.cycles.schedule, val_split=self.data.val_split,
                    no_augment=self.training.augment == "none")
        flat.update(dataclasses.asdict(self.devices))
        flat.update(weights_dir=self.weights_dir, overwrite=self.overwrite, resume=self.resume,
                    data_dir=self.data.data_dir, data_sha256=self.data.data_sha256)
        return flat

    @classmethod
    def from_dict(cls, flat, dataset=None):
        """The configuration a run record's "args" describe (any version's); unknown keys are an error."""
        flat = dict(flat)
        dataset = flat.pop("dataset", dataset) or "cifar10"
        no_augment = flat.pop("no_augment", None)
        # Fields a later version added default to what earlier runs did: the dataclass defaults, except
        # for the recipes' fields.
        saved = flat if no_augment is None else dict(flat, no_augment=no_augment)
        flat = {**recipes.flags_of_runs_before_recipes(saved), **flat}
        if no_augment and flat.get("augment") is None:
            flat["augment"] = "none"
        flat.setdefault("variant", recipes.VARIANT_BEFORE_VARIANTS.get(flat.get("model", "wrn")))
        flat.setdefault("bn_momentum", recipes.BN_MOMENTUM_BEFORE_RECIPES)
        parts = {name: part(**{field.name: flat.pop(field.name) for field in dataclasses.fields(part)
                               if field.name in flat})
                 for name, part in _PARTS.items()}
        top = {name: flat.pop(name) for name in ("weights_dir", "overwrite", "resume") if name in flat}
        if flat:
            raise ValueError(f"unknown configuration fields: {', '.join(sorted(flat))}")
        return cls(dataset=dataset, **parts, **top)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """A prediction with the snapshot ensemble of one trained network."""

    dataset: str = "cifar10"
    model: ModelConfig = ModelConfig()
    optimize: int = 0  # 0: the saved ensemble weights; 1: fit them (minimum log-loss) and save; -1: equal
    num_tests: int = 20  # restarts of the weight fit
    M: Optional[int] = None  # snapshots to use; None: those the run recorded
    batch_size: int = 256
    seed: int = 0  # of the fit's restarts
    plot: Optional[str] = None  # "" for the default file beside the weights
    report: Optional[str] = None
    export: Optional[str] = None
    weights_dir: str = "weights"
    data: DataConfig = DataConfig()

    @property
    def prefix(self):
        return self.model.prefix(self.dataset)

    def check(self):
        require(self.dataset in DATASETS, "dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        for name in ("num_tests", "batch_size"):
            require(is_count(getattr(self, name)), name, getattr(self, name), "a positive integer")
        require(self.M is None or is_count(self.M), "M", self.M, "a positive integer or None (every snapshot)")
        require(is_count(self.seed + 1), "seed", self.seed, "0 or a positive integer")
        if self.optimize not in (-1, 0, 1):
            raise ConfigError("{optimize} is not a mode: -1 (equal weights), 0 (saved) or 1 (fit)",
                              optimize=("optimize", self.optimize))
        self.model.check()
        return self


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def require(condition, field, value, expected):
    if not condition:
        raise ConfigError(f"{{value}} is out of range: it must be {expected}", value=(field, value))
