"""The typed configuration of a training run and of a prediction, with every setting declared once.

Its parts: `recipes` (the original's and the paper's training values), `schedule` (the cosine arithmetic),
`naming` (datasets).

Each field is declared with `setting(default, help, rule, ...)`; its command-line flag
(snapshot_ensembles.cli), its key in the run record, whether resuming compares it and its one check are
derived from that declaration (docs/design.md, "Layers"). No Keras import: a configuration is checked
before TensorFlow starts.
"""

import dataclasses
import math
import numbers
import os
import re
from typing import Optional

from snapshot_ensembles.config import recipes
from snapshot_ensembles.config.naming import DATASETS
from snapshot_ensembles.config.schedule import SCHEDULE_MODES
from snapshot_ensembles.errors import ConfigError

MODELS = ("wrn", "dn", "resnet")
VARIANTS = ("original", "paper")
ORIGINAL_MODELS = ("wrn", "dn")  # those of the original suite, which has release weights for them
# The largest integer a setting takes: TensorFlow's int32 tensors, NumPy's seeds and C longs overflow above it.
INT_MAX = 2**31 - 1
MODEL_SIZE_MAX = 1000  # per architecture setting: far beyond any published network, and still buildable


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting's value must be: `parse` turns a flag's text into a value (the flag's type), and
    `problem(value)` says what is wrong with a value, or None."""

    parse: object
    problem: object
    choices: Optional[tuple] = None


def integer(low=1, high=INT_MAX):
    def problem(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return "is not an integer"
        if value < low:
            return "is out of range: it must be " + ("a positive integer" if low == 1 else f"{low} or more")
        if value > high:
            return f"is out of range: it must be at most {high}"
        return None

    return Rule(int, problem)


def number(accepts, expected):
    def problem(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "is not a number"
        return None if accepts(value) else f"is out of range: it must be {expected}"  # NaN accepts nothing

    return Rule(float, problem)


def choice(*values, parse=str):
    def same_kind(value, option):  # "1" or True is not the choice 1, NumPy's int64(1) is
        integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return type(value) is type(option) or (type(option) is int and integral)

    def problem(value):
        if any(same_kind(value, option) and value == option for option in values):
            return None
        return f"is not one of the choices: {', '.join(map(str, values))}"

    return Rule(parse, problem, values)


def depth_form(step, offset, examples):
    """A network depth of the form step*n + offset, n >= 1."""
    def problem(value):
        integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if integral and (value < step + offset or (value - offset) % step):
            return f"is not of the form {step}n+{offset} with n >= 1 (for example {examples})"
        return MODEL_SIZE.problem(value)

    return Rule(int, problem)


def _sha256_problem(value):
    if isinstance(value, str) and (value.lower() == "skip" or re.fullmatch("[0-9a-f]{64}", value.lower())):
        return None
    return "is not a SHA-256 checksum (64 hexadecimal digits) or 'skip'"


COUNT = integer()
SEED = integer(0)
MODEL_SIZE = integer(1, MODEL_SIZE_MAX)
POSITIVE = number(lambda value: 0 < value < math.inf, "a positive number")
NON_NEGATIVE = number(lambda value: 0 <= value < math.inf, "0 or a positive number")
FRACTION = number(lambda value: 0 <= value < 1, "in [0, 1)")
SWITCH = Rule(bool, lambda value: None if isinstance(value, bool) else "is not True or False")
PATH = Rule(str, lambda value: None if isinstance(value, (str, os.PathLike)) else "is not a path")
SHA256 = Rule(lambda text: text.strip().lower(), _sha256_problem)
DENSENET_DEPTH = depth_form(3, 4, "40, 100, 190")
RESNET_DEPTH = depth_form(6, 2, "20, 56, 110")
# Each transition between dense blocks halves the 32x32 images: six blocks end at 1x1, a seventh has none.
DENSE_BLOCKS = integer(1, 6)


def check_value(field, value, rule):
    """ConfigError naming `field` unless `value` follows `rule`: the one check of every setting, also
    behind the public builders and callbacks that take a setting's value directly."""
    problem = rule.problem(value)
    if problem:
        raise ConfigError(f"{{value}} {problem}", value=(field, value))
    return value


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str  # the command-line flag's help
    rule: Optional[Rule] = None
    flag: bool = True  # a command-line flag and a key of the run record's "args"
    compared: bool = True  # what a run computes: resuming needs the same value (else: where, or how spelled)
    network: Optional[str] = None  # only this --model reads it
    negation: Optional[tuple] = None  # (flag, help) of the flag that sets False
    alias: Optional[tuple] = None  # (flag, value, help): a flag that means this setting at that value
    cli: Optional[dict] = None  # further keywords of the flag's definition (nargs, const, metavar)


def setting(default, help, rule=None, **declaration):
    return dataclasses.field(default=default, metadata={"setting": Setting(help, rule, **declaration)})


def part(cls):
    """A group of settings: a field holding a dataclass of them."""
    return dataclasses.field(default=cls(), metadata={"part": cls})


RECIPE = "recipe; "  # the help's mark of a setting that the --recipe fills in when left None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: its family and the sizes that fix its weight shapes."""

    TITLE = "model"
    model: str = setting("wrn", "wrn: Wide Residual Network, dn: DenseNet, resnet: the paper's CIFAR ResNet",
                         choice(*MODELS))
    wrn_N: int = setting(2, "WRN blocks per group; depth = 6N+4", MODEL_SIZE, network="wrn")
    wrn_k: int = setting(4, "WRN width factor", MODEL_SIZE, network="wrn")
    dn_depth: int = setting(40, "DenseNet depth, 3n+4", MODEL_SIZE, network="dn")
    dn_growth_rate: int = setting(12, "DenseNet growth rate", MODEL_SIZE, network="dn")
    dn_blocks: int = setting(3, "DenseNet dense blocks; 1 reproduces the original scripts", DENSE_BLOCKS,
                             network="dn")
    resnet_depth: int = setting(110, "ResNet depth, 6n+2", MODEL_SIZE, network="resnet")
    variant: Optional[str] = setting(
        None, "the network's definition: original: as the original Keras suite (post-activation WRN, Keras 1 "
        "initialisers); paper: as the paper's Torch code (pre-activation WRN, He-normal fan-out initialisation); "
        "default: the --recipe's (training), the one whose files are in --weights_dir (prediction)",
        choice(*VARIANTS))

    def check(self):
        check_settings(self)
        if self.model == "dn":
            check_value("dn_depth", self.dn_depth, DENSENET_DEPTH)
        if self.model == "resnet":
            check_value("resnet_depth", self.resnet_depth, RESNET_DEPTH)
            if self.variant == "original":
                raise ConfigError("{model} exists only as the paper's network (the original suite has none): "
                                  "drop {variant}", model=("model", "resnet"), variant=("variant", "original"))
        return self

    def prefix(self, dataset):
        """The run's file-name prefix: `WRN-CIFAR10-16-4`, `PreActWRN-CIFAR10-34-4`, `ResNet-CIFAR10-110`,
        `DenseNet-CIFAR100-40-12-3blocks`. The original's networks (post-activation WRN, one-block DenseNet)
        keep the prefixes that name its release weights; the DenseNet's variant (initialisation) is not in it.
        """
        tag = DATASETS[dataset][0]
        if self.model == "wrn":
            family = "PreActWRN" if self.variant == "paper" else "WRN"
            return f"{family}-{tag}-{6 * self.wrn_N + 4}-{self.wrn_k}"
        if self.model == "dn":
            blocks = f"-{self.dn_blocks}blocks" if self.dn_blocks != 1 else ""
            return f"DenseNet-{tag}-{self.dn_depth}-{self.dn_growth_rate}{blocks}"
        if self.model == "resnet":
            return f"ResNet-{tag}-{self.resnet_depth}"
        raise ValueError(f"unknown model {self.model!r}")

    def with_variant(self, recipe):
        """This configuration with the variant left unset taken from `recipe`, whose networks are the variant of
        the same name (the ResNet's is always the paper's)."""
        if self.model == "resnet":
            return dataclasses.replace(self, variant="paper")
        return self if self.variant is not None else dataclasses.replace(self, variant=recipe)

    @property
    def pre_activation_wrn(self):
        return self.model == "wrn" and self.variant == "paper"

    def network_settings(self):
        """The settings that, with `model`, fix the weight shapes: name -> value."""
        return {field.name: getattr(self, field.name) for field, declared, _ in settings(ModelConfig)
                if declared.network == self.model}

    def flags(self):
        """The model flags that determine the weight shapes, as a user would type them."""
        paper = ["--variant paper"] if self.variant == "paper" and self.model != "resnet" else []
        return " ".join([f"--model {self.model}"] + [f"--{name} {value}"
                                                     for name, value in self.network_settings().items()] + paper)

    def describe(self, nb_classes):
        """The network in words and the flags to check when a weight file does not fit it."""
        hint = "check " + "/".join(f"--{name}" for name in [*self.network_settings(), "dataset"])
        if self.model == "dn" and self.dn_blocks != 1:
            hint += " (the original release DenseNet had one dense block: try --dn_blocks 1)"
        label = (f"ResNet-{self.resnet_depth}" if self.model == "resnet"
                 else self.network_name(initialisation=False))
        return f"{label} for {nb_classes} classes", hint

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
        return (f"DenseNet-{self.dn_depth}-{self.dn_growth_rate} with {blocks}"
                + (f", {initialiser}" if initialiser else ""))


@dataclasses.dataclass(frozen=True)
class CycleConfig:
    """The learning-rate schedule: M cosine cycles over nb_epoch epochs, one snapshot per cycle."""

    TITLE = "snapshots"
    M: int = setting(5, "number of snapshots (cycles)", COUNT)
    nb_epoch: int = setting(200, "total epochs T, a multiple of M", COUNT)
    alpha_zero: float = setting(0.1, "initial (peak) learning rate of every cycle", POSITIVE)
    schedule: Optional[str] = setting(
        None, RECIPE + "anneal the learning rate per epoch (the original) or per step (the paper); multistep: the "
        "paper's single-model baseline with --M 1, the learning rate divided by 10 at 50 % and 75 % of the epochs",
        choice(*SCHEDULE_MODES))

    def check(self):
        check_settings(self)
        if self.nb_epoch % self.M != 0:
            lower = self.nb_epoch - self.nb_epoch % self.M
            suggestion = f"{lower} or {lower + self.M}" if lower else f"{self.M}"
            raise ConfigError(f"{{epochs}} must be a multiple of M ({self.M}) so that every cycle has the same "
                              f"length: use for example {{nb_epoch}} {suggestion}", epochs=("nb_epoch", self.nb_epoch),
                              nb_epoch=("nb_epoch",))
        if self.schedule == "multistep" and self.M != 1:
            raise ConfigError(f"{{schedule}} is the single-model baseline, one snapshot: use {{M}} (not {self.M})",
                              schedule=("schedule", "multistep"), M=("M", 1))
        return self


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How the network is optimised; the settings left None take the recipe's value (`TrainConfig.resolved`)."""

    TITLE = "training (the flags marked 'recipe' default to the --recipe's value)"
    recipe: str = setting(
        "original", "original: the original scripts' plain SGD, batch 128 (wrn, resnet) or 64 (dn), rotations and "
        "shifts, learning rate set per epoch, weight decay (2e-4) and dropout (0.2) only in the DenseNet; paper: SGD "
        "with Nesterov momentum 0.9, batch 64, padded crops and flips on per-channel standardised images, per-step "
        "annealing, weight decay 5e-4 (wrn, resnet) or 1e-4 (dn), no dropout",
        choice(*recipes.RECIPES), compared=False)  # its values are compared, not its name
    batch_size: Optional[int] = setting(None, RECIPE + "the global batch, of all the devices together",
                                        COUNT)
    dropout: Optional[float] = setting(None, RECIPE + "dropout rate", FRACTION)
    momentum: Optional[float] = setting(None, RECIPE + "SGD momentum", FRACTION)
    nesterov: Optional[bool] = setting(None, RECIPE + "Nesterov momentum (needs --momentum > 0)", SWITCH,
                                       negation=("no_nesterov", "plain momentum"))
    weight_decay: Optional[float] = setting(
        None, RECIPE + "as the paper's Torch SGD counts it: WD x w added to every weight's gradient, i.e. WD / 2 x "
        "sum(w^2) in the training loss, on every weight", NON_NEGATIVE)
    bn_momentum: Optional[float] = setting(
        None, RECIPE + "momentum of BatchNormalization's moving mean and variance, the original's 0.99 (Keras 1's), "
        "the paper's 0.9 (Torch's 0.1); lower it when an epoch has few steps, so that the statistics saved with a "
        "snapshot are those of its weights",
        FRACTION)
    augment: Optional[str] = setting(
        None, RECIPE + "original: random rotations (15 degrees) and shifts (5/32), as the original's "
        "ImageDataGenerator; paper: 4-pixel zero padding, random 32x32 crop, horizontal flip",
        choice(*recipes.AUGMENTATIONS), alias=("no_augment", "none", "the same as --augment none"))
    normalize: Optional[str] = setting(
        None, RECIPE + "unit: pixels / 255 (the original); channel: per-channel mean and standard deviation of the "
        "training images (the paper); prediction reads it from the run record", choice(*recipes.NORMALIZATIONS))
    seed: int = setting(0, "random seed", SEED)
    deterministic: bool = setting(
        True, "TensorFlow op determinism: the same seed and data give the same snapshots, bit for bit", SWITCH,
        negation=("no_deterministic", "speed first: TensorFlow may pick nondeterministic kernels, and "
                  "BatchNormalization trains with fused kernels that round differently (see README Performance)"))
    mixed_precision: bool = setting(False, "compute in bfloat16 on a CPU, float16 on a GPU (Keras mixed precision); "
                                           "weights stay float32, so snapshots load as usual", SWITCH)

    def check(self):
        check_settings(self)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("{nesterov} needs a momentum: add for example {momentum}", nesterov=("nesterov",),
                              momentum=("momentum", 0.9))
        return self


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the images come from."""

    TITLE = "data"
    data_dir: Optional[str] = setting(
        None, "folder with the official CIFAR python archive or its extracted folder (default: the Keras cache "
        "~/.keras/datasets, then Keras's download)", PATH, compared=False)
    data_sha256: Optional[str] = setting(
        None, "expected SHA-256 of the archive in --data_dir (default: the official archive's checksum; 'skip' "
        "turns the check off)", SHA256, compared=False)

    def check(self):
        return check_settings(self)


@dataclasses.dataclass(frozen=True)
class DataConfig(DataSource):
    """Where the images come from and what part of the training set is held out for validation."""

    val_split: float = setting(
        0.0, "fraction of the training set held out for checkpoint selection and ensemble weighting; 0 validates "
        "on the test set as the original did (optimistic)", FRACTION)


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """The devices a run trains on (snapshot_ensembles.training.distribute); a run resumes on more or fewer of them."""

    TITLE = "scaling out (README: Scaling out)"
    distribute: str = setting(
        "none", "none: one device; mirrored: every GPU of this machine (TensorFlow MirroredStrategy, or JAX "
        "DataParallel); multiworker: several machines, TensorFlow MultiWorkerMirroredStrategy configured by "
        "TF_CONFIG. --batch_size is the global batch", choice("none", "mirrored", "multiworker"),
        compared=False)
    cpu_devices: Optional[int] = setting(
        None, "with --distribute mirrored: split the CPU into N devices and mirror over them, to try or test "
        "data-parallel training on a machine without GPUs", integer(1, 256), compared=False, cli={"metavar": "N"})

    def check(self):
        check_settings(self)
        if self.cpu_devices is not None and self.distribute != "mirrored":
            raise ConfigError("{cpu} splits this machine's CPU for {mirrored}, not for {distribute}: add {mirrored} "
                              "or drop {cpu}", cpu=("cpu_devices",), mirrored=("distribute", "mirrored"),
                              distribute=("distribute", self.distribute))
        return self


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that a training run reads: what it computes and where it keeps its files."""

    dataset: str = setting("cifar10", "the dataset", choice(*DATASETS), flag=False)  # the script's
    model: ModelConfig = part(ModelConfig)
    cycles: CycleConfig = part(CycleConfig)
    training: TrainingConfig = part(TrainingConfig)
    data: DataConfig = part(DataConfig)
    devices: DeviceConfig = part(DeviceConfig)
    weights_dir: str = setting("weights", "output folder", PATH, compared=False)
    overwrite: bool = setting(False, "replace weight files of this model in --weights_dir that no training run "
                                     "recorded (downloaded or converted weights)", SWITCH, compared=False)
    resume: bool = setting(
        True, "continue the unfinished run of the same model in --weights_dir from its last completed epoch, with "
        "the same flags", SWITCH, compared=False,
        negation=("no_resume", "start over: the files of the run found in --weights_dir are removed"))

    @property
    def prefix(self):
        return self.model.prefix(self.dataset)

    def resolved(self):
        """Checked, with the recipe's values in every training setting left None."""
        check_settings(self)
        for part_ in (self.model, self.cycles, self.data, self.devices, self.training):
            part_.check()  # the training as given: the recipe's values are checked with it below
        training, schedule = recipes.resolve(self.training, self.cycles.schedule, self.model.model)
        return dataclasses.replace(self, training=training.check(), model=self.model.with_variant(training.recipe),
                                   cycles=dataclasses.replace(self.cycles, schedule=schedule).check())

    def to_dict(self):
        """The run record's "args": every setting but the dataset, by name."""
        return flat_settings(self)

    @classmethod
    def from_dict(cls, flat, dataset="cifar10"):
        """The configuration of a run record's "args"; unknown keys are an error."""
        return from_flat_settings(cls, flat, dataset=dataset)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """A prediction with the snapshot ensemble of one trained network."""

    dataset: str = setting("cifar10", "the dataset", choice(*DATASETS), flag=False)
    model: ModelConfig = part(ModelConfig)
    optimize: int = setting(0, "0: use the saved ensemble weights; 1: fit them (minimum log-loss), then save; "
                               "-1: equal weights", choice(-1, 0, 1, parse=int))
    num_tests: int = setting(20, "restarts of the weight fit; the fit is convex, so they only confirm the optimum",
                             COUNT)
    M: Optional[int] = setting(None, "number of snapshots to use (default: the M the training run recorded, else "
                                     "every snapshot file present)", COUNT)
    batch_size: int = setting(256, "prediction batch size", COUNT)
    seed: int = setting(0, "seed of the fit's restarts and of the bootstrap intervals", SEED)
    plot: Optional[str] = setting(
        None, "save the ensemble-size curve, the members' agreement matrix and a reliability diagram (needs "
        "matplotlib; default file: WEIGHTS_DIR/PREFIX-ensemble.png)", PATH,
        cli={"nargs": "?", "const": "", "metavar": "PNG"})
    report: Optional[str] = setting(
        None, "write every figure of the report (scores, temperatures, bootstrap intervals, diversity, reliability "
        "bins) to this JSON file", PATH, cli={"metavar": "PATH.json"})
    export: Optional[str] = setting(
        None, "save the ensemble in use (its members, weights and temperature) as one Keras model that "
        "keras.saving.load_model reads without this project", PATH, cli={"metavar": "PATH.keras"})
    weights_dir: str = setting("weights", "folder of the weight files", PATH)
    data: DataSource = part(DataSource)

    @property
    def prefix(self):
        return self.model.prefix(self.dataset)

    def check(self):
        check_settings(self)
        self.model.check()
        self.data.check()
        return self


def settings(cls):
    """(field, Setting, part) of every setting of `cls` and of its parts, in declaration order; `part` is the
    class of the part that declares it, None for the settings of `cls` itself."""
    for field in dataclasses.fields(cls):
        if "part" in field.metadata:
            owner = field.metadata["part"]
            yield from ((inner, declared, owner) for inner, declared, _ in settings(owner))
        else:
            yield field, field.metadata["setting"], None


def check_settings(config):
    """ConfigError naming the first setting of `config` (not of its parts) that breaks its rule; None is
    the value of a setting left to its default when that default is None."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if "part" in field.metadata:
            if not isinstance(value, field.metadata["part"]):
                raise ConfigError(f"{{value}} is not a {field.metadata['part'].__name__}", value=(field.name, value))
        elif not (value is None and field.default is None):
            check_value(field.name, value, field.metadata["setting"].rule)
    return config


def flat_settings(config):
    """Every flag setting of `config` and its parts: name -> value (paths as text)."""
    flat = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if "part" in field.metadata:
            flat.update(flat_settings(value))
        elif field.metadata["setting"].flag:
            flat[field.name] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return flat


def from_flat_settings(cls, flat, **fixed):
    """The `cls` of settings by name (`flat_settings`'s inverse); unknown names are an error."""
    left = dict(flat)

    def build(part_cls):
        values = {}
        for field in dataclasses.fields(part_cls):
            if "part" in field.metadata:
                values[field.name] = build(field.metadata["part"])
            elif field.name in left:
                values[field.name] = left.pop(field.name)
        return part_cls(**values)

    config = dataclasses.replace(build(cls), **fixed)
    if left:
        raise ValueError(f"unknown configuration fields: {', '.join(sorted(left))}")
    return config


def compared_settings(flat):
    """The settings of a run record's "args" (or `to_dict()`) that a resumed run must keep: name -> value."""
    declared = {field.name: setting_ for field, setting_, _ in settings(TrainConfig)}
    return {name: value for name, value in flat.items() if name in declared and declared[name].compared
            and declared[name].network in (None, flat.get("model"))}
