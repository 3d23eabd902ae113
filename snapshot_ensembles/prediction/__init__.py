"""The prediction flow behind predict_cifar_10.py and predict_cifar_100.py, on a config.PredictConfig.

Its part: `report` (the printed report and the plot).

Members `[Best, 1, ..., M]` run through the public SnapshotEnsemble API, one network loaded with each
member's weights in turn; their probabilities are cached per weight file content and data split
(PredictionCache). `compute_report` does the work, snapshot_ensembles.prediction.report prints and plots it.
"""

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import shlex

import numpy as np

from snapshot_ensembles import backend_start, ensemble, output, release
from snapshot_ensembles.config import VARIANTS
from snapshot_ensembles.config import naming
from snapshot_ensembles.ensemble import metrics
from snapshot_ensembles.ensemble.evaluation import EnsembleEvaluation
from snapshot_ensembles.ensemble.snapshot_ensemble import Member, MemberLoadError, SnapshotEnsemble, load_weights
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import FileWriteError, atomic_path, sha256_of_arrays, write_json
from snapshot_ensembles.models.build import build_model, nb_classes_of, set_precision
from snapshot_ensembles.prediction.report import MODES, check_plotting, plot_report, render_report, render_result
from snapshot_ensembles.training.run_folder import RunFolder, is_another_runs_file

CACHE_FOLDER = os.path.basename(RunFolder("", "").prediction_cache)  # its name in any weights folder
RECORDED_M_MAX = 2**31 - 1  # the largest M a training run can record; above it the record is damaged


def snapshot_count(folder, requested):
    """How many snapshots the ensemble takes: `requested` (config.M), else the M the training run recorded
    (fewer while it is unfinished), else every snapshot file present; a note says which, if not plain."""
    present = sorted(key for key in folder.member_files() if key != "Best")
    recorded, unfinished = recorded_run(folder)
    if unfinished:
        output.always(f"note: the training run of {folder.prefix} in {folder.weights_dir} is unfinished "
                      f"({run_progress(folder)}): the ensemble has only the snapshots saved so far")
    if requested is not None:
        return requested
    if recorded is None:
        return max(present, default=0)  # downloaded or converted weights: no run record
    count = max((i for i in present if i <= recorded), default=0) if unfinished else recorded
    unused = [i for i in present if i > count]
    if unused and not unfinished:
        output.always(f"note: using the {recorded} snapshots that the training run recorded "
                      f"({os.path.basename(folder.run_record)}); snapshot file(s) {', '.join(map(str, unused))} "
                      "are present too and not used (--M chooses)")
    return count


def recorded_run(folder):
    """(the M its run record holds, None without a readable one; whether the run is unfinished)."""
    info = folder.read_record()
    recorded = info.get("args", {}).get("M") if isinstance(info.get("args"), dict) else None
    if not isinstance(recorded, int) or isinstance(recorded, bool) or not 1 <= recorded <= RECORDED_M_MAX:
        recorded = None
    return recorded, info.get("status") == "running" or os.path.isfile(folder.state)


def run_progress(folder):
    """'3 of 6 epochs done, process 1234 (...) is training it now', as far as the files tell."""
    from snapshot_ensembles.training import run_lock, run_state

    try:
        state = run_state.read_state(folder.state)
    except UserError:
        state = None
    done = (f"{state.epoch} of {state.flags.get('nb_epoch')} epochs done" if state is not None
            else "no epoch finished yet")
    holder = run_lock.running_process(folder.weights_dir, folder.prefix)
    return done + (f", {holder} is training it now" if holder else ", not training now: rerun its command to finish it")


def find_members(config, folder):
    """[Best, 1..M] as Members; a clear error listing every missing file."""
    if os.path.exists(folder.weights_dir) and not os.path.isdir(folder.weights_dir):
        raise UserError(f"--weights_dir {folder.weights_dir} is a file, not a folder: pass the folder of the weight "
                        "files")
    m = snapshot_count(folder, config.M)
    present = folder.member_files()
    # Counted, not listed one by one: an M of 2 billion must not build 2 billion paths.
    nb_absent = m - sum(1 for key in present if key != "Best" and key <= m)
    absent = list(itertools.islice((i for i in itertools.count(1) if i not in present), min(nb_absent, 3)))
    missing = [folder.member(key) for key in (["Best"] if "Best" not in present else []) + absent]
    if nb_absent > len(absent):
        missing.append(f"and {nb_absent - len(absent)} more snapshots")
    if m == 0 or missing:
        listed = (", ".join(missing) if missing
                  else f"{os.path.basename(folder.snapshot(1))} ... in {folder.weights_dir}")
        raise UserError(f"missing ensemble member files: {listed}. {how_to_get_members(config, folder, present)}")
    return [Member(str(key), folder.member(key)) for key in ["Best", *range(1, m + 1)]]


def how_to_get_members(config, folder, present):
    """What gives the missing members: a smaller --M, finishing the run recorded here, or a training run (or the
    original's release)."""
    recorded, unfinished = recorded_run(folder)
    saved = next(i for i in itertools.count(1) if i not in present) - 1 if "Best" in present else 0
    script = "train_cifar_10.py" if config.dataset == "cifar10" else "train_cifar_100.py"
    if unfinished:
        fewer = f", or pass --M {saved} to use the snapshots saved so far" if saved else ""
        return f"The training run of {folder.prefix} there is unfinished: rerun its command to finish it{fewer}"
    if recorded is not None and saved >= recorded:
        return f"The training run of {folder.prefix} there recorded {recorded} snapshots: pass --M {recorded} or fewer"
    if recorded is not None:
        return (f"They are missing from the run recorded in {folder.run_record}: train it again with "
                f"`python {script}`, the flags of that record's \"args\" and --no_resume")
    flags = f"{config.model.flags()} --weights_dir {shlex.quote(folder.weights_dir)}"
    download = ""
    if release.shipped_ensemble_weights(folder.prefix) is not None:  # what the original published
        download = (f", or fetch the release weights with `python download_weights.py --dataset {config.dataset} "
                    f"{flags}`")
    return f"Train them with `python {script} {flags}`{download} (and pass --M if you want fewer snapshots)"


def note_lagging_statistics(folder):
    """Repeat the training run's warning when its BatchNormalization statistics lagged (training.lagging_statistics)."""
    lag = folder.read_record().get("lagging_bn_statistics")
    if isinstance(lag, dict):
        output.always(f"note: the training run of {folder.prefix} lagged BatchNormalization's moving statistics "
                      f"({lag.get('stale_share', 0):.0%} of them predated each epoch's end): its Best checkpoint "
                      "and snapshots were validated on them; retrain with --bn_momentum "
                      f"{lag.get('suggested_bn_momentum')} for members that do not")


def note_unrecorded_inputs(folder):
    """Say how the members' inputs are scaled when no record beside them tells (copied snapshots, converted files)."""
    if not os.path.lexists(folder.run_record) and not os.path.lexists(folder.release_record):
        output.always(f"note: no run record {os.path.basename(folder.run_record)} beside the weights: the members get "
                      "pixels / 255 as inputs (--normalize unit, the original's); snapshots trained with --normalize "
                      "channel (--recipe paper) predict well only with the record of their run beside them")


def saved_ensemble_weights(config, folder, members):
    """(path, weights, (temperature, member temperatures)) of the saved ensemble JSON, None where the mode
    does without: optimize 0 needs one matching the members, 1 never reads it, -1 shows it if it matches."""
    path = ensemble.find_ensemble_json(folder.weights_dir, folder.prefix)
    if config.optimize == 0 and path is None:
        raise UserError(f"--optimize 0 uses the saved ensemble weights, but {folder.weights_dir} has no "
                        f"{os.path.basename(folder.ensemble_json)}: run with --optimize 1 first to fit and save "
                        "them, or use --optimize -1 for equal weights")
    if config.optimize == 1 or path is None:
        return None, None, (None, None)
    member_files = [(os.path.basename(m.path), m.sha256) for m in members]
    try:
        return (path, ensemble.read_ensemble_weights(path, len(members), member_files),
                ensemble.read_temperatures(path, len(members)))
    except UserError as err:
        if config.optimize == 0:
            raise
        output.always(f"note: the saved ensemble weights are not shown: {err}")
        return None, None, (None, None)


class PredictionCache:
    """Member probabilities on disk, one .npy per (weight file content, network, data split), in the folder
    that RunFolder names. It only saves time: an entry that cannot be read is computed again, and when the
    folder cannot be written (a read-only weights folder) the members are predicted in memory, with one note.
    """

    def __init__(self, folder, nb_classes, network_key=""):
        self.folder = folder.prediction_cache
        self.nb_classes = nb_classes
        self.network_key = network_key  # the network and input transform the weights run in
        self.computed = []  # (member path, split) pairs that ran the network: tests and the report read it
        self.unwritable = None  # why the cache cannot be written, once a write failed

    def split_probabilities(self, members, split, images, labels, predict):
        """Every member's probabilities on the split named `split` ("test", "fit") of (images, labels)."""
        split_key = f"{split}-{sha256_of_arrays(images, labels)[:16]}"  # short: it is part of the file names
        return [self.probabilities(member, split_key, images, predict) for member in members]

    def probabilities(self, member, split_key, images, predict):
        """Cached probabilities of `member` on a split, running `predict(member, images)` on a miss."""
        path = os.path.join(self.folder, f"{member.sha256[:24]}-{self.network_key}{split_key}.npy")
        cached = self._read(path, len(images))
        if cached is not None:
            return cached
        probs = np.asarray(predict(member, images), dtype=np.float32)
        self.computed.append((member.path, split_key))
        if self.unwritable is None:
            try:
                os.makedirs(self.folder, exist_ok=True)
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, probs)
                return np.load(path, mmap_mode="r")  # memory-mapped: M members cost no M-fold RAM
            except FileWriteError as err:
                self.unwritable = err.reason
            except OSError as err:
                self.unwritable = err.strerror or str(err)
            output.always(f"note: cannot write the prediction cache {self.folder} ({self.unwritable}): predicting "
                          "without it, so the next prediction runs every network again")
        return probs

    def _read(self, path, nb_samples):
        """The entry at `path` if it is complete and of the expected shape; None to compute it again."""
        try:
            probs = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None  # absent, empty, truncated or not a .npy file
        return probs if probs.dtype == np.float32 and probs.shape == (nb_samples, self.nb_classes) else None


class MemberPredictor:
    """The members as a SnapshotEnsemble of the configured network: `predictor(member, images)` runs one
    member; a weight file that cannot be loaded is a UserError naming the flags to check."""

    def __init__(self, config, members):
        self.config = config
        self.ensemble = SnapshotEnsemble(members, self.build_network, predict_member=self._predict)

    def __call__(self, member, images):
        with load_errors_explained(member, self.config):
            return self.ensemble.member_prediction(self.ensemble.members.index(member), images)

    def build_network(self):
        set_precision(mixed=False)  # float32 whatever a training run in this process used: cached values agree
        return build_model(self.config.model, nb_classes_of(self.config.dataset))

    def _predict(self, member, images, load_network):
        from snapshot_ensembles.data.pipeline import images_dataset

        return load_network().predict(images_dataset(images, self.config.batch_size, self.standardization),
                                      verbose=output.keras_predict_verbose())

    @functools.cached_property
    def standardization(self):
        return recorded_standardization(self.config.weights_dir, self.config.prefix)


def network_key(config, standardization):
    """Part of a cache entry's name: the same weight file in another network (--dn_blocks is not in the
    prefix) or behind another input transform predicts something else."""
    described = json.dumps([config.model.flags(), standardization])
    return hashlib.sha256(described.encode()).hexdigest()[:12] + "-"


@contextlib.contextmanager
def load_errors_explained(member, config):
    """A MemberLoadError of `member` as the UserError that says what to do: new weights, or other flags."""
    try:
        yield
    except MemberLoadError as err:
        if isinstance(err.cause, OSError):
            raise UserError(f"cannot read {member.path} ({err.cause}): the file is truncated or not a Keras "
                            "weights file; train it again or download the release weights again") from None
        if err.cause is None:
            raise UserError(f"{member.path}: {err.reason}: train it again or download the release weights "
                            "again") from None
        raise UserError(
            f"{member.path} does not fit the network {config.model.flags()} for "
            f"{naming.dataset_title(config.dataset)} ({str(err.cause).splitlines()[0][:200]}): pass the "
            "model flags the weights were trained with (--model, --variant, --wrn_N, --wrn_k, --dn_depth, "
            "--dn_growth_rate, --dn_blocks)") from None


def training_record(folder):
    """The run record training wrote beside the weights ({} when there is none, as for release weights)."""
    return folder.read_record(damaged=lambda reason: (
        f"cannot read the training record {folder.run_record} ({reason}): restore it from the training "
        "run, or delete it if the weights were trained without --normalize channel"))


def recorded_standardization(weights_dir, prefix):
    """The per-channel (mean, std) of `--normalize channel` that the run of `prefix` recorded, else None."""
    from snapshot_ensembles.models.build import INPUT_SHAPE

    folder = RunFolder(weights_dir, prefix)
    standardization = training_record(folder).get("standardization")
    if standardization is None:
        return None
    channels = INPUT_SHAPE[-1]
    try:
        mean, std = ([float(value) for value in values] for values in standardization)
        # Pixel units (0..255): a std far below one grey level would blow the inputs up to infinity.
        if not (len(mean) == len(std) == channels and all(0 <= value <= 255 for value in mean)
                and all(1e-3 <= value <= 255 for value in std)):
            raise ValueError(f"expected [mean, std] of {channels} channels, means in [0, 255] and standard "
                             "deviations in [0.001, 255] pixel units")
    except (ValueError, TypeError) as err:
        raise UserError(f"the standardization in {folder.run_record} is not readable "
                        f"({str(err)[:200]}): restore the file from the training run") from None
    return mean, std


def fitting_split(data, folder):
    """(images, labels, name, Best chosen on it) of the split the ensemble is fitted on: the validation split
    the training run of `folder` recorded, else the training set as in the original; never the test set."""
    from snapshot_ensembles.data import split_validation

    info_path = folder.run_record
    info = training_record(folder)
    try:
        val_split, seed = float(info.get("val_split", 0.0)), info.get("seed", 0)
        if not 0 <= val_split < 1 or isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"val_split {info.get('val_split')!r} or seed {str(seed)[:40]} out of range")
    except (ValueError, TypeError, OverflowError, AttributeError) as err:
        raise UserError(f"cannot read the training record {info_path} ({str(err)[:200]}); delete it to fit on "
                        "the training set instead of the validation split") from None
    if val_split > 0:
        _, val_idx = split_validation(data.x_train, data.y_train, val_split, seed)
        if "nb_val" in info and info["nb_val"] != len(val_idx):
            raise UserError(f"the validation split recorded in {info_path} ({info['nb_val']} images) does not "
                            f"match this data ({len(val_idx)} images): use the data the run was trained on")
        return (data.x_train[val_idx], data.y_train[val_idx], f"validation split ({val_split:g} of the training set)",
                True)
    return data.x_train, data.y_train, "training set (no validation split was recorded)", False


def check_output_paths(config, folder, members):
    """The plot, report and export paths: the right suffix, an existing writable folder, and none of the run's
    own files (the plot may replace the run's own plot)."""
    run_files = ([m.path for m in members] + folder.run_files() + list(folder.keras1_files().values())
                 + ensemble.ensemble_json_candidates(folder.weights_dir, folder.prefix)
                 + [folder.run_record, folder.history, folder.state, folder.release_record, folder.plot])
    own = {os.path.realpath(path) for path in run_files}
    plot = None if config.plot is None else config.plot or folder.plot
    for flag, path, suffix in (("--plot", plot, ".png"), ("--report", config.report, ".json"),
                               ("--export", config.export, ".keras")):
        if path is None:
            continue
        target = os.path.dirname(os.path.abspath(path))
        if not path.endswith(suffix) or os.path.basename(path) == suffix:
            raise UserError(f"{flag} {path}: the file name must end in {suffix}, with a name before it")
        if os.path.exists(target) and not os.path.isdir(target):
            raise UserError(f"{flag} {path}: {target} is a file, not a folder; choose another path")
        if not os.path.isdir(target):
            raise UserError(f"{flag} {path}: the folder {target} does not exist; create it or choose another path")
        if not os.access(target, os.W_OK):
            raise UserError(f"{flag} {path}: cannot write to the folder {target}; choose another path")
        others = own - {os.path.realpath(folder.plot)} if flag == "--plot" else own
        replaced = os.path.realpath(path)
        if os.path.isdir(path) or replaced in others:
            raise UserError(f"{flag} {path} is a folder or one of the ensemble's own files: choose another path")
        if os.path.exists(path) and replaced not in own and is_another_runs_file(replaced):
            raise UserError(f"{flag} {path} would replace {os.path.basename(replaced)}, a file of another run: "
                            "choose another path")


@dataclasses.dataclass
class SplitFit:
    """The weights and temperatures fitted on the fit split (never the test set)."""

    weights: ensemble.FitResult
    temperature: metrics.TemperatureFit  # of the weighted ensemble
    member_temperatures: list  # a TemperatureFit per member
    split_name: str
    samples: int
    best_excluded: bool  # the Best checkpoint was chosen on this split and takes no part in the weights


def fit_on_split(config, folder, data, members, cache, predictor):
    """Fit the ensemble's weights (set in `predictor.ensemble`) and temperatures on the fit split."""
    x_fit, y_fit, split_name, best_chosen_on_fit_split = fitting_split(data, folder)
    fit_probs = cache.split_probabilities(members, "fit", x_fit, y_fit, predictor)
    # The Best checkpoint is the epoch that scored highest on these very images, out of nb_epoch tries:
    # its log-loss here is biased low, and a fit would trust it for that reason alone.
    fitted = predictor.ensemble.fit_weights_to(fit_probs, y_fit, exclude=["Best"] if best_chosen_on_fit_split else [],
                                               num_tests=config.num_tests, seed=config.seed)
    temperature = metrics.fit_temperature(ensemble.weighted_average(fit_probs, fitted.weights), y_fit)
    member_temperatures = [metrics.fit_temperature(probs, y_fit) for probs in fit_probs]
    return SplitFit(fitted, temperature, member_temperatures, split_name, int(len(y_fit)), best_chosen_on_fit_split)


@dataclasses.dataclass
class PredictionReport:
    """Everything one prediction computed: what the scripts print and `predict` returns."""

    config: object  # the PredictConfig
    folder: RunFolder
    members: list  # Member, [Best, 1..M]
    evaluation: EnsembleEvaluation  # on the test set
    fit: SplitFit  # optimize 1, else None
    saved_json: str  # the ensemble JSON whose weights the report shows, when they are saved ones
    member_temperatures: list
    member_probabilities: list  # test probabilities of each member
    cache: PredictionCache  # its `computed` networks (the rest came from the cache)

    @property
    def accuracy(self):
        # The temperature keeps each image's most probable class: the accuracy is the ensemble's before it.
        return self.evaluation.in_use.accuracy

    def summary(self):
        """The dict `predict` returns."""
        result, weights = self.evaluation, self.evaluation.weights
        return {"prefix": self.folder.prefix, "member_accuracy": [s.accuracy for s in result.members],
                "equal_accuracy": result.equal.accuracy,
                "weighted_accuracy": None if result.weighted is None else result.weighted.accuracy,
                "weights": None if weights is None else [float(w) for w in weights], "accuracy": self.accuracy,
                "temperature": result.temperature if self.config.optimize != -1 else None,
                "member_temperatures": self.member_temperatures, "evaluation": result,
                "member_probabilities": self.member_probabilities, "probabilities": result.probabilities,
                "networks_run": list(self.cache.computed)}


def compute_report(config, data=None):
    """Find the members, predict them (through the cache), fit or read the weights and evaluate."""
    folder = RunFolder(config.weights_dir, config.prefix)
    members = find_members(config, folder)
    note_lagging_statistics(folder)
    note_unrecorded_inputs(folder)
    check_output_paths(config, folder, members)
    saved_json, saved_weights, saved_temperatures = saved_ensemble_weights(config, folder, members)  # before any network
    backend_start.start()  # its start-up lines hidden; the checks above answered without it
    if data is None:
        from snapshot_ensembles.data import load_cifar

        data = load_cifar(config.dataset, config.data.data_dir, config.data.data_sha256)
    predictor = MemberPredictor(config, members)
    cache = PredictionCache(folder, nb_classes_of(config.dataset), network_key(config, predictor.standardization))
    test_probs = cache.split_probabilities(members, "test", data.x_test, data.y_test, predictor)
    fit = fit_on_split(config, folder, data, members, cache, predictor) if config.optimize == 1 else None
    # The weighted rows show the fitted weights, else the saved ones (also beside optimize -1).
    if fit is not None:
        temperature, member_temperatures = fit.temperature.temperature, [t.temperature for t in fit.member_temperatures]
    else:
        predictor.ensemble.weights = saved_weights  # read and normalised already: set_weights would round them again
        temperature, member_temperatures = saved_temperatures
    result = predictor.ensemble.evaluate_predictions(
        test_probs, data.y_test, labels=[m.label for m in members], temperature=temperature,
        member_temperatures=member_temperatures, use_weights=config.optimize != -1, seed=config.seed)
    return PredictionReport(config, folder, members, result, fit, saved_json, member_temperatures, test_probs,
                            cache)


def with_trained_variant(config):
    """`config` with the network's variant, when unset, that of the run in its weights folder: for a WRN the
    one whose files are there (the prefixes differ), for a DenseNet the run record's, else the original."""
    model = config.model
    if model.variant is not None:
        return config
    if model.model != "wrn":
        recorded = RunFolder(config.weights_dir, config.prefix).read_record().get("args", {})
        variant = recorded.get("variant") if isinstance(recorded, dict) else None
        return dataclasses.replace(config, model=model.with_variant(variant if variant in VARIANTS else "original"))
    candidates = [model.with_variant(variant) for variant in VARIANTS]
    present = [candidate for candidate in candidates
               if RunFolder(config.weights_dir, candidate.prefix(config.dataset)).member_files()]
    if len(present) > 1:
        held = " and ".join(f"{candidate.prefix(config.dataset)} (the {candidate.network_name()})"
                            for candidate in present)
        raise UserError(f"{config.weights_dir} holds weight files of two networks, {held}: choose one with "
                        f"--variant {' or --variant '.join(VARIANTS)}")
    return dataclasses.replace(config, model=(present or candidates)[0])


def predict(config, data=None):
    """Run the prediction of `config` (a config.PredictConfig): print its report, save what it asks for and
    return the summary dict; `data` (a data.Dataset) replaces CIFAR (the demo's digits)."""
    config = with_trained_variant(config.check())
    if config.plot is not None:
        check_plotting()
    report = compute_report(config, data)
    render_report(report)
    if report.fit is not None:
        save_fit(report)
    render_result(report)
    write_outputs(report)
    return report.summary()


def save_fit(report):
    fit, members, result = report.fit, report.members, report.evaluation
    path = report.folder.ensemble_json
    ensemble.write_ensemble_weights(
        path, fit.weights.weights, members=[os.path.basename(m.path) for m in members],
        member_sha256=[m.sha256 for m in members], fit_split=fit.split_name,
        best_excluded_from_fit=fit.best_excluded, fit_samples=fit.samples, fit_log_loss=fit.weights.log_loss,
        restart_log_losses=fit.weights.restart_log_losses, num_tests=report.config.num_tests,
        temperature=fit.temperature.temperature,
        member_temperatures=[t.temperature for t in fit.member_temperatures],
        test_accuracy=result.weighted.accuracy, test_log_loss=result.weighted.nll)
    output.say(f"  ensemble weights and temperatures saved to {path}")


def write_outputs(report):
    """The plot, JSON report and exported model the config asks for, each written whole or not at all."""
    config, result, members = report.config, report.evaluation, report.members
    if config.plot is not None:
        plot_path = config.plot or report.folder.plot
        plot_report(plot_path, result)
        output.say(f"plot saved to {plot_path}")
    if config.report is not None:
        write_json(config.report, {"dataset": config.dataset, "ensemble": report.folder.prefix,
                                   "mode": MODES[config.optimize],
                                   "member_files": [os.path.basename(m.path) for m in members], **result.to_dict()})
        output.say(f"report saved to {config.report}")
    if config.export is not None:
        in_use = result.weights if result.compared == "weighted" else np.ones(len(members))
        export_ensemble(config.export, config, members, in_use,
                        result.temperature if result.compared == "weighted" else None)
        output.say(f"ensemble model saved to {config.export} (load it with keras.saving.load_model)")


def export_ensemble(path, config, members, weights, temperature):
    """The members with a weight > 0, loaded one by one, saved as one Keras model (snapshot_ensembles.ensemble.export)."""
    import keras

    from snapshot_ensembles.ensemble import export

    predictor = MemberPredictor(config, members)
    kept = [(member, weight) for member, weight in zip(members, weights) if weight > 0]
    models = []
    for member, _ in kept:
        with load_errors_explained(member, config):
            models.append(load_weights(predictor.build_network(), member.path))
    # The members' input transform (the input pipelines' to_float) as a built-in layer.
    if predictor.standardization is None:
        preprocessing = keras.layers.Rescaling(1.0 / 255.0, name="pixels_to_unit_range")
    else:
        mean, std = predictor.standardization
        preprocessing = keras.layers.Normalization(axis=-1, mean=mean, variance=[value ** 2 for value in std],
                                                   name="per_channel_standardization")
    model = export.ensemble_model(models, [w for _, w in kept], temperature,
                                  names=[export.layer_name(member.label) for member, _ in kept],
                                  preprocessing=preprocessing)
    with atomic_path(path) as tmp:  # no half-written .keras file under `path`
        model.save(tmp)
