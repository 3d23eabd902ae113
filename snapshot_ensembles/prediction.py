"""The prediction flow behind predict_cifar_10.py and predict_cifar_100.py.

Members are `[Best, 1, ..., M]`. Their class probabilities are computed once per data split and
cached next to the weights, keyed by the weight file's SHA-256 and a fingerprint of the split, so
switching `--optimize` mode reruns no network and a replaced weight file is predicted again.
"""

import dataclasses
import functools
import itertools
import json
import os
import sys

import numpy as np

from snapshot_ensembles import cli, ensemble, evaluation, metrics, naming
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import (FileWriteError, atomic_path, read_json_record, sha256_of, sha256_of_arrays,
                                  write_json)
from snapshot_ensembles.modeling import describe_architecture, nb_classes_of, prefix_for, set_precision
from snapshot_ensembles.run_folder import RunFolder

CACHE_FOLDER = ".prediction-cache"
MODES = {1: "fitted weights", 0: "saved weights", -1: "equal weights"}


@dataclasses.dataclass
class Member:
    name: str  # "Best" or the snapshot number
    path: str

    @property
    def label(self):
        return "Best checkpoint" if self.name == "Best" else f"Snapshot {self.name}"

    @functools.cached_property
    def sha256(self):
        return sha256_of(self.path)


def snapshot_count(weights_dir, prefix, requested):
    """How many snapshots the ensemble takes: `requested` (--M), else the M that the training run recorded
    (fewer while it is unfinished), else every snapshot file present. Says which, when it is not plain.
    """
    present = sorted(key for key in RunFolder(weights_dir, prefix).member_files() if key != "Best")
    info = read_json_record(RunFolder(weights_dir, prefix).run_record)
    recorded = info.get("args", {}).get("M") if isinstance(info.get("args"), dict) else None
    unfinished = info.get("status") == "running" or os.path.isfile(RunFolder(weights_dir, prefix).state)
    if unfinished:
        print(f"note: the training run of {prefix} in {weights_dir} is unfinished ({run_progress(weights_dir, prefix)}): "
              "the ensemble has only the snapshots saved so far")
    if requested is not None:
        return requested
    if not isinstance(recorded, int) or isinstance(recorded, bool) or not 1 <= recorded <= cli.INT_FLAG_MAX:
        return max(present, default=0)  # downloaded or converted weights: no run record
    count = max((i for i in present if i <= recorded), default=0) if unfinished else recorded
    unused = [i for i in present if i > count]
    if unused and not unfinished:
        print(f"note: using the {recorded} snapshots that the training run recorded ({os.path.basename(RunFolder(weights_dir, prefix).run_record)}); "
              f"snapshot file(s) {', '.join(map(str, unused))} are present too and not used (--M chooses)")
    return count


def run_progress(weights_dir, prefix):
    """'3 of 6 epochs done, process 1234 (...) is training it now', as far as the files tell."""
    from snapshot_ensembles import run_lock, run_state

    try:
        state = run_state.read_state(RunFolder(weights_dir, prefix).state)
    except UserError:
        state = None
    done = (f"{state.epoch} of {state.flags.get('nb_epoch')} epochs done" if state is not None
            else "no epoch finished yet")
    holder = run_lock.running_process(weights_dir, prefix)
    return done + (f", {holder} is training it now" if holder else ", not training now: rerun its command to finish it")


def find_members(weights_dir, prefix, m, dataset, args):
    """[Best, 1..M] as Members; a clear error listing every missing file."""
    m = snapshot_count(weights_dir, prefix, m)
    present = RunFolder(weights_dir, prefix).member_files()
    # Counted, not listed one by one: an --M of 2 billion must not build 2 billion paths.
    nb_absent = m - sum(1 for key in present if key != "Best" and key <= m)
    absent = list(itertools.islice((i for i in itertools.count(1) if i not in present), min(nb_absent, 3)))
    missing = ([] if "Best" in present else [RunFolder(weights_dir, prefix).best])
    missing += [RunFolder(weights_dir, prefix).snapshot(i) for i in absent]
    if nb_absent > len(absent):
        missing.append(f"and {nb_absent - len(absent)} more snapshots")
    if m == 0 or missing:
        listed = ", ".join(missing) if missing else f"{prefix}-1.weights.h5 ... in {weights_dir}"
        script = "train_cifar_10.py" if dataset == "cifar10" else "train_cifar_100.py"
        raise UserError(
            f"missing ensemble member files: {listed}. Train them with `python {script} "
            f"{describe_architecture(args)} --weights_dir {weights_dir}`, or fetch the release weights with "
            f"`python download_weights.py --dataset {dataset} {describe_architecture(args)} "
            f"--weights_dir {weights_dir}` (and pass --M if you want fewer snapshots)")
    return ([Member("Best", RunFolder(weights_dir, prefix).best)]
            + [Member(str(i), RunFolder(weights_dir, prefix).snapshot(i)) for i in range(1, m + 1)])


def saved_ensemble_weights(args, prefix, members):
    """(path, weights, (temperature, member temperatures)) of the saved ensemble JSON; None for each
    when this mode does without it (the temperatures are None too in a file saved without them).

    --optimize 0 needs it to match the members; --optimize 1 replaces it and never reads it; --optimize -1
    shows it beside the equal weights only when it matches, and otherwise says why it left it out.
    """
    path = ensemble.find_ensemble_json(args.weights_dir, prefix)
    if args.optimize == 0 and path is None:
        raise UserError(f"--optimize 0 uses the saved ensemble weights, but {args.weights_dir} has no "
                        f"Ensemble-weights-{prefix}.json: run with --optimize 1 first to fit and save them, "
                        "or use --optimize -1 for equal weights")
    if args.optimize == 1 or path is None:
        return None, None, (None, None)
    member_files = [(os.path.basename(m.path), m.sha256) for m in members]
    try:
        return (path, ensemble.read_ensemble_weights(path, len(members), member_files),
                ensemble.read_temperatures(path, len(members)))
    except UserError as err:
        if args.optimize == 0:
            raise
        print(f"note: the saved ensemble weights are not shown: {err}")
        return None, None, (None, None)


def array_fingerprint(*arrays):
    return sha256_of_arrays(*arrays)[:16]  # short: it is part of the cache file names


class PredictionCache:
    """Member probabilities on disk, one .npy per (weight file content, data split).

    The cache only saves time: an entry that cannot be read is recomputed, and when the folder cannot be
    written (a read-only weights folder) the members are predicted in memory, with one note saying so.
    """

    def __init__(self, weights_dir, nb_classes):
        self.folder = os.path.join(weights_dir, CACHE_FOLDER)
        self.nb_classes = nb_classes
        self.computed = []  # (member path, split) pairs that ran the network: tests and the report read it
        self.unwritable = None  # why the cache cannot be written, once a write failed

    def path(self, weights_sha, split_key):
        return os.path.join(self.folder, f"{weights_sha[:24]}-{split_key}.npy")

    def probabilities(self, member, split_key, images, predict):
        """Cached probabilities of `member` on a split, running `predict(member, images)` on a miss."""
        path = self.path(member.sha256, split_key)
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
            if self.unwritable is not None:
                print(f"note: cannot write the prediction cache {self.folder} ({self.unwritable}): predicting "
                      "without it, so the next prediction runs every network again")
        return probs

    def _read(self, path, nb_samples):
        """The entry at `path` if it is complete and of the expected shape; None to compute it again."""
        if not os.path.isfile(path):
            return None
        try:
            probs = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None  # empty, truncated or not a .npy file
        if probs.dtype != np.float32 or probs.shape != (nb_samples, self.nb_classes):
            return None
        return probs


class MemberPredictor:
    """One network, re-loaded with each member's weights; explains unloadable files."""

    def __init__(self, args, dataset):
        self.args = args
        self.dataset = dataset
        self.model = None

    def __call__(self, member, images):
        from snapshot_ensembles.modeling import build_model
        from snapshot_ensembles.pipeline import images_dataset

        if self.model is None:
            set_precision(mixed=False)  # float32 whatever a training run in this process used: cached values agree
            self.model = build_model(self.args, nb_classes_of(self.dataset))
        load_member_weights(self.model, member, self.args, self.dataset)
        return self.model.predict(images_dataset(images, self.args.batch_size, self.standardization), verbose=0)

    @functools.cached_property
    def standardization(self):
        """Read once, and only when a network runs: a run served from the cache never needs the record."""
        return recorded_standardization(self.args.weights_dir, prefix_for(self.dataset, self.args))


def load_member_weights(model, member, args, dataset):
    try:
        model.load_weights(member.path)
    except (ValueError, KeyError) as err:
        raise UserError(
            f"{member.path} does not fit the network {describe_architecture(args)} for "
            f"{naming.dataset_title(dataset)} ({str(err).splitlines()[0][:200]}): pass the model flags the "
            "weights were trained with (--model, --wrn_N, --wrn_k, --dn_depth, --dn_growth_rate, --dn_blocks)"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {member.path} ({err}): the file is truncated or not a Keras weights "
                        "file; train it again or download the release weights again") from None


def training_record(weights_dir, prefix):
    """The run record training wrote beside the weights ({} when there is none, as for release weights)."""
    info_path = RunFolder(weights_dir, prefix).run_record
    if not os.path.isfile(info_path):
        return {}
    try:
        with open(info_path) as fh:
            info = json.load(fh)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the training record {info_path} ({err}): restore it from the training "
                        "run, or delete it if the weights were trained without --normalize channel") from None
    if not isinstance(info, dict):
        raise UserError(f"the training record {info_path} is not a JSON object: restore it from the training run")
    return info


def recorded_standardization(weights_dir, prefix):
    """The per-channel (mean, std) the run was trained with (--normalize channel), else None."""
    standardization = training_record(weights_dir, prefix).get("standardization")
    if standardization is None:
        return None
    try:
        mean, std = ([float(value) for value in values] for values in standardization)
        if len(mean) != len(std) or not all(value > 0 for value in std):
            raise ValueError("one positive standard deviation per channel expected")
    except (ValueError, TypeError) as err:
        raise UserError(f"the standardization in {RunFolder(weights_dir, prefix).run_record} is not readable "
                        f"({err}): restore the file from the training run") from None
    return mean, std


def fitting_split(dataset, data, weights_dir, prefix):
    """Images and labels to fit the ensemble weights on, the split's name, and whether the Best
    checkpoint was chosen on that same split.

    The validation split recorded by training when there is one (never the test set), otherwise the
    training set, as the original did.
    """
    from snapshot_ensembles.data import split_validation

    info_path = RunFolder(weights_dir, prefix).run_record
    info = training_record(weights_dir, prefix)
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


def check_output_paths(args, prefix, members):
    """--report and --export: the right suffix, an existing folder, and none of the run's own files."""
    own = {os.path.realpath(path) for path in [m.path for m in members]
           + ensemble.ensemble_json_candidates(args.weights_dir, prefix)
           + [RunFolder(args.weights_dir, prefix).run_record, RunFolder(args.weights_dir, prefix).history]}
    for flag, path, suffix in (("--report", args.report, ".json"), ("--export", args.export, ".keras")):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not path.endswith(suffix) or os.path.basename(path) == suffix:
            raise UserError(f"{flag} {path}: the file name must end in {suffix}")
        if not os.path.isdir(folder):
            raise UserError(f"{flag} {path}: the folder {folder} does not exist; create it or choose another path")
        if not os.access(folder, os.W_OK):
            raise UserError(f"{flag} {path}: cannot write to the folder {folder}; choose another path")
        if os.path.isdir(path) or os.path.realpath(path) in own:
            raise UserError(f"{flag} {path} is a folder or one of the ensemble's own files: choose another path")


@dataclasses.dataclass
class SplitFit:
    """The weights and temperatures fitted on the fit split (never the test set)."""

    weights: ensemble.FitResult
    temperature: metrics.TemperatureFit  # of the weighted ensemble
    member_temperatures: list  # a TemperatureFit per member
    split_name: str
    samples: int
    best_excluded: bool  # the Best checkpoint was chosen on this split and takes no part in the weights


def fit_on_split(args, dataset, data, prefix, members, cache, predictor):
    x_fit, y_fit, split_name, best_chosen_on_fit_split = fitting_split(dataset, data, args.weights_dir, prefix)
    fit_key = f"fit-{array_fingerprint(x_fit, y_fit)}"
    fit_probs = [cache.probabilities(m, fit_key, x_fit, predictor) for m in members]
    if best_chosen_on_fit_split:
        # The Best checkpoint is the epoch that scored highest on these very images, out of nb_epoch
        # tries: its log-loss here is biased low, and a fit trusts it for that reason alone (measured
        # on the demo: it took up to 100 % of the weight while scoring below the snapshots on test).
        fitted = ensemble.fit_weights(fit_probs[1:], y_fit, num_tests=args.num_tests, seed=args.seed)
        fitted = dataclasses.replace(fitted, weights=np.concatenate([[0.0], fitted.weights]))
    else:
        fitted = ensemble.fit_weights(fit_probs, y_fit, num_tests=args.num_tests, seed=args.seed)
    temperature = metrics.fit_temperature(ensemble.weighted_average(fit_probs, fitted.weights), y_fit)
    member_temperatures = [metrics.fit_temperature(probs, y_fit) for probs in fit_probs]
    return SplitFit(fitted, temperature, member_temperatures, split_name, int(len(y_fit)), best_chosen_on_fit_split)


HEADER = f"{'':<42}{'accuracy':>10}{'NLL':>9}{'Brier':>9}{'ECE':>9}"


def format_row(label, scores):
    return (f"  {label:<40}{scores.accuracy * 100:8.2f} %{scores.nll:9.4f}{scores.brier:9.4f}"
            f"{scores.ece:9.4f}")


def format_interval(interval, scale=1.0, digits=4):
    return (f"{interval.estimate * scale:+.{digits}f} [{interval.low * scale:+.{digits}f}, "
            f"{interval.high * scale:+.{digits}f}]")


def print_evaluation(result, fit, weights_file):
    """The report of `result` (an EnsembleEvaluation); `fit` is the SplitFit of --optimize 1, else None and
    the weights come from `weights_file`."""
    print("Members:" + HEADER[len("Members:"):])
    for label, scores in zip(result.member_labels, result.members):
        print(format_row(label, scores))
    best_label = result.member_labels[result.best_member]
    print("Ensembles:")
    print(format_row(f"single best member ({best_label})", result.members[result.best_member]))
    if result.best_member_calibrated is not None:
        print(format_row(f"  + temperature {result.best_member_temperature:.3f}", result.best_member_calibrated))
    print(format_row("equal-weight ensemble", result.equal))
    if result.weighted is not None:
        source = "fitted" if fit is not None else f"saved in {weights_file}"
        print(format_row(f"weighted ensemble ({source})", result.weighted))
        if result.weighted_calibrated is not None:
            print(format_row(f"  + temperature {result.temperature:.3f}", result.weighted_calibrated))
        print("  weights [" + ", ".join(f"{w:.4f}" for w in result.weights) + "]")
    if fit is not None:
        print_fit(fit)
    elif result.weighted is not None and result.temperature is None:
        print("  no temperature saved with these weights (fitted before temperature scaling): --optimize 1 fits one")
    print(f"Gain of the {result.compared}{'' if result.compared == 'weighted' else '-weight'} ensemble over the "
          f"single best member (paired bootstrap over test images, {result.resamples} resamples, 95 % interval):")
    print(f"  accuracy {format_interval(result.gain['accuracy'], 100, 2)} points   "
          f"NLL {format_interval(result.gain['nll'])}")
    if "nll_calibrated" in result.gain:
        print(f"  NLL, both with their temperature {format_interval(result.gain['nll_calibrated'])}")
    print(f"Diversity of the members: mean pairwise disagreement "
          f"{metrics.mean_off_diagonal(result.disagreement) * 100:.2f} %, "
          f"mean KL divergence {metrics.mean_off_diagonal(result.kl_divergence):.4f} nats")
    print("Ensemble size (equal weights, last m snapshots):")
    for m, scores in result.curve:
        print(format_row(f"m={m}:", scores))


def print_fit(fit):
    spread = max(fit.weights.restart_log_losses) - min(fit.weights.restart_log_losses)
    print(f"  fitted on the {fit.split_name}, {fit.samples} images: log-loss {fit.weights.log_loss:.6f}, "
          f"{len(fit.weights.restart_log_losses)} restarts agree to {spread:.1e}, {fit.weights.seconds:.2f} s")
    if fit.best_excluded:
        print("  the Best checkpoint was chosen on these same images, so it takes no part in the fit (weight 0)")
    t = fit.temperature
    print(f"  temperature fitted on the same images: {t.temperature:.4f} (NLL there {t.nll_before:.4f} -> "
          f"{t.nll_after:.4f})")
    if t.at_bound or any(member.at_bound for member in fit.member_temperatures):
        low, high = metrics.TEMPERATURE_BOUNDS
        print(f"  warning: a temperature reached the end of its range [{low:g}, {high:g}]: the fit split's "
              "predictions are (nearly) all right and confident, as on a training set, so it cannot tell how "
              "overconfident the test predictions are; record a validation split (--val_split) in training")


def save_fit(args, prefix, members, fit, result):
    path = RunFolder(args.weights_dir, prefix).ensemble_json
    ensemble.write_ensemble_weights(
        path, fit.weights.weights, members=[os.path.basename(m.path) for m in members],
        member_sha256=[m.sha256 for m in members], fit_split=fit.split_name,
        best_excluded_from_fit=fit.best_excluded, fit_samples=fit.samples, fit_log_loss=fit.weights.log_loss,
        restart_log_losses=fit.weights.restart_log_losses, num_tests=args.num_tests,
        temperature=fit.temperature.temperature,
        member_temperatures=[t.temperature for t in fit.member_temperatures],
        test_accuracy=result.weighted.accuracy, test_log_loss=result.weighted.nll)
    print(f"  ensemble weights and temperatures saved to {path}")


def plot_report(path, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    sizes = [m for m, _ in result.curve]
    left.plot(sizes, [s.accuracy * 100 for _, s in result.curve], marker="o",
              label="equal-weight ensemble of the last m snapshots")
    left.axhline(result.members[result.best_member].accuracy * 100, color="grey", linestyle="--",
                 label="best single member")
    left.set(xlabel="m (snapshots in the ensemble)", ylabel="test accuracy (%)", title="Ensemble size")
    left.set_xticks(sizes)
    left.legend(loc="lower right", fontsize=8)
    agreement = 1.0 - result.disagreement
    image = middle.imshow(agreement, vmin=min(0.5, float(np.min(agreement))), vmax=1.0, cmap="viridis")
    member_labels = result.member_labels
    middle.set_xticks(range(len(member_labels)), member_labels, rotation=45, fontsize=8)
    middle.set_yticks(range(len(member_labels)), member_labels, fontsize=8)
    middle.set_title("Agreement of members' predictions (test set)")
    fig.colorbar(image, ax=middle, fraction=0.046)
    names = {"best_member": f"best member ({member_labels[result.best_member]})",
             "ensemble": f"{result.compared} ensemble", "ensemble_calibrated": f"{result.compared} ensemble + temperature"}
    right.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for key, bins in result.reliability.items():
        filled = bins.counts > 0
        right.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", label=f"{names[key]}, ECE {bins.ece():.3f}")
    right.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
              title=f"Reliability ({len(bins.counts)} equal-width bins, test set)")
    right.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def predict(dataset, argv=None, prog=None, data=None):
    """Run the prediction flow; `data` lets the demo pass its own Dataset. Returns a summary dict."""
    args = build_parser(dataset, prog).parse_args(argv)
    cli.load_tensorflow()  # its start-up lines hidden; flag errors above answered without it
    cli.check_model_flags(args)
    prefix = prefix_for(dataset, args)
    members = find_members(args.weights_dir, prefix, args.M, dataset, args)
    check_output_paths(args, prefix, members)
    saved_json, saved_weights, saved_temperatures = saved_ensemble_weights(args, prefix, members)  # before any network

    if data is None:
        from snapshot_ensembles.data import load_cifar

        data = load_cifar(dataset, args.data_dir, args.data_sha256)
    cache = PredictionCache(args.weights_dir, nb_classes_of(dataset))
    predictor = MemberPredictor(args, dataset)
    test_key = f"test-{array_fingerprint(data.x_test, data.y_test)}"
    test_probs = [cache.probabilities(m, test_key, data.x_test, predictor) for m in members]
    fit = fit_on_split(args, dataset, data, prefix, members, cache, predictor) if args.optimize == 1 else None

    # The weighted rows show the fitted weights, else the saved ones (also beside --optimize -1).
    if fit is not None:
        weights, temperature = fit.weights.weights, fit.temperature.temperature
        member_temperatures = [t.temperature for t in fit.member_temperatures]
    else:
        weights, (temperature, member_temperatures) = saved_weights, saved_temperatures
    result = evaluation.evaluate(test_probs, data.y_test, [m.label for m in members], weights, temperature,
                                 member_temperatures, use_weights=args.optimize != -1, seed=args.seed)

    print(f"{naming.dataset_title(dataset)} test set: {len(data.y_test)} images; ensemble {prefix} with "
          f"{len(members)} members (Best, snapshots 1..{len(members) - 1})")
    needed = len(members) * (2 if fit is not None else 1)
    print(f"  member predictions computed: {len(cache.computed)} of {needed} (the rest came from the cache "
          f"in {cache.folder})")
    print_evaluation(result, fit, os.path.basename(saved_json or ""))
    if fit is not None:
        save_fit(args, prefix, members, fit, result)
    # The temperature keeps each image's most probable class: the accuracy is the ensemble's before it.
    accuracy = (result.weighted if result.compared == "weighted" else result.equal).accuracy
    print(f"Ensemble with {MODES[args.optimize]}:")
    print("Accuracy : ", accuracy * 100)
    print("Error : ", 100 - accuracy * 100)
    write_outputs(args, dataset, prefix, members, result)
    return {"prefix": prefix, "member_accuracy": [s.accuracy for s in result.members],
            "equal_accuracy": result.equal.accuracy,
            "weighted_accuracy": None if result.weighted is None else result.weighted.accuracy,
            "weights": None if weights is None else [float(w) for w in weights], "accuracy": accuracy,
            "temperature": temperature if args.optimize != -1 else None, "member_temperatures": member_temperatures,
            "evaluation": result,
            "member_probabilities": test_probs, "probabilities": result.probabilities,
            "networks_run": list(cache.computed)}


def write_outputs(args, dataset, prefix, members, result):
    """--plot, --report and --export, each written whole or not at all."""
    if args.plot is not None:
        plot_path = args.plot or RunFolder(args.weights_dir, prefix).plot
        plot_report(plot_path, result)
        print(f"plot saved to {plot_path}")
    if args.report is not None:
        write_json(args.report, {"dataset": dataset, "ensemble": prefix, "mode": MODES[args.optimize],
                                 "member_files": [os.path.basename(m.path) for m in members], **result.to_dict()})
        print(f"report saved to {args.report}")
    if args.export is not None:
        in_use = result.weights if result.compared == "weighted" else np.ones(len(members))
        export_ensemble(args.export, args, dataset, members, in_use,
                        result.temperature if result.compared == "weighted" else None)
        print(f"ensemble model saved to {args.export} (load it with keras.saving.load_model)")


def export_ensemble(path, args, dataset, members, weights, temperature):
    """The members with a weight > 0, loaded one by one, saved as one Keras model (snapshot_ensembles.export)."""
    import keras

    from snapshot_ensembles import export
    from snapshot_ensembles.modeling import build_model

    set_precision(mixed=False)
    kept = [(member, weight) for member, weight in zip(members, weights) if weight > 0]
    models = []
    for member, _ in kept:
        model = build_model(args, nb_classes_of(dataset))
        load_member_weights(model, member, args, dataset)
        models.append(model)
    # The members' input transform (snapshot_ensembles.pipeline._to_float) as a built-in layer.
    standardization = recorded_standardization(args.weights_dir, prefix_for(dataset, args))
    if standardization is None:
        preprocessing = keras.layers.Rescaling(1.0 / 255.0, name="pixels_to_unit_range")
    else:
        mean, std = standardization
        preprocessing = keras.layers.Normalization(axis=-1, mean=mean, variance=[value ** 2 for value in std],
                                                   name="per_channel_standardization")
    model = export.ensemble_model(models, [w for _, w in kept], temperature,
                                  names=[export.layer_name(member.label) for member, _ in kept],
                                  preprocessing=preprocessing)
    export.save_model(model, path)


def main_for(dataset):
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return lambda argv=None: predict(dataset, argv, prog)
