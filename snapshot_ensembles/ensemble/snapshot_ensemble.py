"""`SnapshotEnsemble`: the ensemble of any Keras classifier's snapshots, for your own model and data.

    ensemble = SnapshotEnsemble.from_files(build_model, ["M-Best.weights.h5", "M-1.weights.h5", "M-2.weights.h5"])
    ensemble.fit_weights(x_val, y_val)          # log-loss-optimal member weights (else equal weights)
    probabilities = ensemble.predict(x_test)
    report = ensemble.evaluate(x_test, y_test)  # every member, the single best, equal and weighted ensembles

Weight-file members share one network, loaded with each file in turn: memory holds one network, never M.
A first member named "Best" is the best-validation checkpoint, which the ensemble-size curve leaves out.
"""

import dataclasses
import functools
import os

import numpy as np

from snapshot_ensembles import ensemble as arithmetic
from snapshot_ensembles import output
from snapshot_ensembles.data import check_labels
from snapshot_ensembles.ensemble import evaluation
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import sha256_of
from snapshot_ensembles.training.run_folder import RunFolder

# Far above any weight training produces; 2**62 or infinity makes every activation after it overflow.
MAX_ABS_WEIGHT = 1e10


@dataclasses.dataclass
class Member:
    """One ensemble member: a name ("Best" or the snapshot number for a run's files) and where its network
    comes from (a weight file, or a built model)."""

    name: str
    path: str = None  # a weight file, loaded into the ensemble's shared network
    model: object = None  # a built Keras model

    @property
    def label(self):
        return "Best checkpoint" if self.name == "Best" else f"Snapshot {self.name}"

    @functools.cached_property
    def sha256(self):
        return sha256_of(self.path)


class SnapshotEnsemble:
    """A weighted average of the softmax outputs of several snapshots of one classifier.

    `members`: Members; `build_model()` builds the network that weight-file members load into;
    `predict_member(member, x, load_model)` replaces `load_model().predict(x, batch_size=batch_size)` (an
    input pipeline, a cache). `verbose`, here and where networks run: 0 silent, 1 the scripts' normal
    output, 2 Keras's progress bars too, None the process's setting (snapshot_ensembles.output).
    """

    def __init__(self, members, build_model=None, weights=None, batch_size=256, predict_member=None, verbose=None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(member.model is None for member in members) and build_model is None:
            raise ValueError("members given by weight file need build_model, which builds the network they load into")
        self.members = list(members)
        self.build_model = build_model
        self.batch_size = batch_size
        self.predict_member = predict_member
        self.verbose = verbose
        self._network = None
        self.set_weights(weights)

    @classmethod
    def from_files(cls, build_model, paths, names=None, **options):
        """Members from weight files (Best first, then snapshots 1..M, as the callbacks save them)."""
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise ValueError(f"paths is one path, {paths!r}: pass a list of weight files, for example [{paths!r}]")
        names = names or [_name_of(path, index) for index, path in enumerate(paths)]
        return cls([Member(name, path=str(path)) for name, path in zip(names, paths)], build_model, **options)

    @classmethod
    def from_run(cls, build_model, weights_dir, prefix, nb_snapshots=None, **options):
        """Members `{prefix}-Best.weights.h5`, `{prefix}-1.weights.h5`, ... that the callbacks of
        `get_callbacks(model_prefix=prefix)` wrote into `weights_dir`: all present unless `nb_snapshots` is
        given; MissingMembers lists those missing.
        Inputs reach the network as given: preprocess them as training did
        (`prediction.recorded_standardization` reads a `--normalize channel` run's mean and std)."""
        folder = RunFolder(weights_dir, prefix)
        if nb_snapshots is None:
            nb_snapshots = max((key for key in folder.member_files() if key != "Best"), default=0)
        paths = [folder.member(key) for key in ["Best", *range(1, nb_snapshots + 1)]]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing or not nb_snapshots:
            raise MissingMembers(missing or [folder.snapshot(1)])
        return cls.from_files(build_model, paths, **options)

    @classmethod
    def from_models(cls, models, names=None, **options):
        """Members that are already built Keras models."""
        if hasattr(models, "predict"):
            raise ValueError("models is one model: pass a list of models, for example [model]")
        names = names or [f"member {index}" for index in range(len(models))]
        return cls([Member(name, model=model) for name, model in zip(names, models)], **options)

    def __len__(self):
        return len(self.members)

    @property
    def names(self):
        return [member.name for member in self.members]

    def set_weights(self, weights):
        """Member weights (>= 0, not all 0; normalised to sum 1); None for equal weights."""
        self.weights = None if weights is None else arithmetic.normalised_weights(weights, len(self))

    @property
    def effective_weights(self):
        return self.weights if self.weights is not None else np.full(len(self), 1.0 / len(self))

    def fit_weights(self, x, y, exclude=(), num_tests=1, seed=0, verbose=None):
        """Fit the weights minimising the ensemble's log-loss on (x, y); returns ensemble.FitResult. Members
        named in `exclude` get weight 0 (a Best checkpoint chosen on these samples is trusted for that)."""
        _check_exclude(exclude, self.names)
        _class_ids(y, _sample_count(x))  # before the networks run
        return self.fit_weights_to(self.member_predictions(x, verbose), y, exclude, num_tests, seed)

    def fit_weights_to(self, member_probs, y, exclude=(), num_tests=1, seed=0):
        """`fit_weights` on member probabilities already computed (`member_predictions`)."""
        _check_exclude(exclude, self.names)
        y = _class_ids(y, *np.shape(member_probs[0]))
        kept = [index for index, name in enumerate(self.names) if name not in exclude]
        if not kept:
            raise ValueError(f"every member is excluded from the fit: {list(exclude)}")
        fitted = arithmetic.fit_weights([member_probs[i] for i in kept], y, num_tests=num_tests, seed=seed)
        weights = np.zeros(len(self))
        weights[kept] = fitted.weights
        fitted = dataclasses.replace(fitted, weights=weights)
        self.weights = weights
        return fitted

    def save_weights_json(self, path, **metadata):
        """Write `{"best_weights": [...], "members": [...], **metadata}` atomically (the scripts' format)."""
        arithmetic.write_ensemble_weights(path, self.effective_weights, **{"members": self.names, **metadata})

    def load_weights_json(self, path):
        """Read the weights of a JSON file written by save_weights_json, the scripts or the original project;
        a ValueError says what is wrong with it."""
        self.weights = arithmetic.read_ensemble_weights(
            path, len(self), remedy="Fit the weights again (fit_weights, then save_weights_json), or use equal "
                                    "weights (set_weights(None)).")
        return self.weights

    def member_predictions(self, x, verbose=None):
        """Each member's (n, classes) probabilities on x, computed one member after the other."""
        return [self.member_prediction(index, x, verbose) for index in range(len(self))]

    def member_prediction(self, index, x, verbose=None):
        """The (n, classes) probabilities of the member at `index` on x."""
        member = self.members[index]
        _sample_count(x)
        with output.verbosity_set_to(self.verbose if verbose is None else verbose):
            if self.predict_member is not None:
                probs = self.predict_member(member, x, lambda: self._loaded(member))
            else:
                probs = self._loaded(member).predict(x, batch_size=self.batch_size, verbose=output.keras_predict_verbose())
        return checked_probabilities(probs, f"member {member.name}")

    def predict(self, x, return_members=False, verbose=None):
        """The weighted average of the members' probabilities; with return_members, also each member's."""
        member_probs = self.member_predictions(x, verbose)
        probs = arithmetic.weighted_average(member_probs, self.effective_weights)
        return (probs, member_probs) if return_members else probs

    def evaluate(self, x, y, temperature=None, member_temperatures=None, seed=0, verbose=None):
        """The report on (x, y) that the prediction scripts print, an evaluation.EnsembleEvaluation;
        `temperature` is the weighted ensemble's, `member_temperatures` one per member."""
        _class_ids(y, _sample_count(x))  # before the networks run
        return self.evaluate_predictions(self.member_predictions(x, verbose), y, temperature=temperature,
                                         member_temperatures=member_temperatures, seed=seed)

    def evaluate_predictions(self, member_probs, y, labels=None, temperature=None, member_temperatures=None,
                             use_weights=True, seed=0):
        """`evaluate` on member probabilities already computed (`member_predictions`); `labels` name the
        members in the report (default: their names); without `use_weights` the equal-weight ensemble is
        the one in use, the weighted one only shown."""
        y = _class_ids(y, *np.shape(member_probs[0]))
        return evaluation.evaluate(member_probs, y, labels or self.names, self.weights, temperature,
                                   member_temperatures, use_weights=use_weights, seed=seed,
                                   first_is_best=self.names[0] == "Best")

    def _loaded(self, member):
        """The member's network: its own model, or the shared network with its weight file loaded."""
        if member.model is not None:
            return member.model
        if self._network is None:
            self._network = self.build_model()
        return load_weights(self._network, member.path)


def load_weights(network, path):
    """`network` with the weight file `path` loaded; MemberLoadError if it cannot be or its weights are
    unusable."""
    try:
        network.load_weights(path)
    except (ValueError, KeyError) as err:
        raise MemberLoadError(path, f"it does not fit the network that build_model builds "
                                    f"({str(err).splitlines()[0][:200]})", err) from None
    except OSError as err:
        raise MemberLoadError(path, f"it is truncated or not a Keras weights file ({err})", err) from None
    problem = weight_problem((weight.path, weight.numpy()) for weight in network.weights)
    if problem:
        raise MemberLoadError(path, f"its weights are unusable: {problem}")
    return network


class MissingMembers(FileNotFoundError):
    """Member weight files that do not exist."""

    def __init__(self, paths):
        super().__init__(f"missing ensemble member files: {', '.join(paths)}")
        self.paths = list(paths)


class MemberLoadError(ValueError):
    """A member's weight file cannot be loaded into the ensemble's network: `cause` is Keras's error, an
    OSError when the file is unreadable, else the mismatch with the network."""

    def __init__(self, path, reason, cause=None):
        super().__init__(f"cannot load {path}: {reason}")
        self.path = path
        self.reason = reason
        self.cause = cause


def weight_problem(named_arrays):
    """What is wrong with weights no training produces (not numbers, NaN, infinity, magnitudes above
    MAX_ABS_WEIGHT), naming the first such array of the (name, array) pairs; None when all are fine."""
    for name, array in named_arrays:
        array = np.asarray(array)
        if array.dtype.kind not in "fiu":
            return f"{name} holds {array.dtype} values, not numbers"
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"{name} holds NaN or infinite values"
        largest = float(np.max(np.abs(array, dtype=np.float64))) if array.size else 0.0
        if largest > MAX_ABS_WEIGHT:
            return f"{name} holds a value of magnitude {largest:.3g}, beyond any trained network's ({MAX_ABS_WEIGHT:g})"
    return None


def _sample_count(x):
    """The number of samples in `x` (arrays, or a dict or list of them for a model of several inputs)."""
    several = isinstance(x, (list, tuple)) and x and hasattr(x[0], "shape")
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if several else x
    try:
        count = len(first)
    except TypeError:  # a generator, or a tf.data.Dataset of unknown length
        return None
    if count == 0:
        raise ValueError("x holds no samples: pass at least one")
    return count


def _class_ids(y, nb_samples, nb_classes=None):
    """`y` as class ids, one per sample; a ValueError worded for the caller's `y` (data.check_labels)."""
    return check_labels(y, nb_classes, nb_samples, "y", ValueError)


# Row sums of a float32 softmax stay within 1e-6 of 1, a bfloat16 one's within a few 1e-3.
PROBABILITY_SUM_TOLERANCE = 1e-2


def checked_probabilities(probs, who):
    """`probs` as (samples, classes) float32 probability rows; UserError when they are not (a network of
    several outputs, a linear output without softmax, non-finite values)."""
    if isinstance(probs, (list, tuple, dict)):
        raise UserError(f"{who}: the network has {len(probs)} outputs; a SnapshotEnsemble averages one softmax "
                        "output: build the network with that output alone")
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise UserError(f"{who} predicts an array of shape {probs.shape}, expected (samples, classes) probabilities")
    sums = probs.sum(axis=1)
    if not np.all(np.isfinite(sums)) or np.any(probs < 0) or np.any(np.abs(sums - 1) > PROBABILITY_SUM_TOLERANCE):
        found = ("non-finite values" if not np.all(np.isfinite(sums)) else
                 f"rows summing to {sums.min():.4g} to {sums.max():.4g}" + (", negative values" if np.any(probs < 0)
                                                                             else ""))
        raise UserError(f"{who} outputs no probabilities ({found}): end the network in a softmax "
                        "(activation='softmax'), as snapshot ensembles average class probabilities")
    return probs


def _check_exclude(exclude, names):
    if isinstance(exclude, str):
        raise ValueError(f"exclude is one name, {exclude!r}: pass a list, for example [{exclude!r}]")
    unknown = [name for name in exclude if name not in names]
    if unknown:
        raise ValueError(f"exclude names no member: {', '.join(map(repr, unknown))}; the members are "
                         f"{', '.join(map(repr, names))}")


def _name_of(path, index):
    """"Best" for a `...-Best.weights.h5` file, else the snapshot number in `...-{i}.weights.h5`, else the index."""
    stem = os.path.basename(str(path)).removesuffix(".weights.h5").removesuffix(".h5")
    tag = stem.rsplit("-", 1)[-1]
    return tag if tag == "Best" or tag.isdigit() else str(index)
