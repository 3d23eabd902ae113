"""The prediction flow behind predict_cifar_10.py and predict_cifar_100.py (SPEC section 5).

Members are `[Best, 1, ..., M]`. Their class probabilities are computed once per data split and
cached next to the weights, keyed by the weight file's SHA-256 and a fingerprint of the split, so
switching `--optimize` mode reruns no network and a replaced weight file is predicted again.
"""

import dataclasses
import functools
import json
import os
import sys

import numpy as np

from snapshot_ensembles import cli, ensemble, naming
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import FileWriteError, atomic_path, read_json_record, sha256_of, sha256_of_arrays
from snapshot_ensembles.modeling import describe_architecture, nb_classes_of, prefix_for, set_precision

CACHE_FOLDER = ".prediction-cache"
MODES = {1: "fitted weights", 0: "saved weights", -1: "equal weights"}


def build_parser(dataset, prog=None):
    parser = cli.ArgumentParser(prog=prog, description=f"Predict {naming.dataset_title(dataset)} with a snapshot "
                                                       "ensemble: equal, saved or fitted member weights.")
    parser.add_argument("--optimize", type=int, choices=(-1, 0, 1), default=0,
                        help="0: use the saved ensemble weights; 1: fit them (minimum log-loss), then save; "
                             "-1: equal weights (default: %(default)s)")
    parser.add_argument("--num_tests", type=cli.positive_int, default=20,
                        help="restarts of the weight fit; the fit is convex, so they only confirm the "
                             "optimum (default: %(default)s)")
    parser.add_argument("--M", type=cli.positive_int, default=None,
                        help="number of snapshots to use (default: every snapshot file present)")
    cli.add_model_flags(parser)
    parser.add_argument("--batch_size", type=cli.positive_int, default=256,
                        help="prediction batch size (default: %(default)s)")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0,
                        help="seed of the fit's restarts (default: %(default)s)")
    parser.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                        help="save the ensemble-size curve and the members' agreement matrix "
                             "(default file: WEIGHTS_DIR/PREFIX-ensemble.png)")
    parser.add_argument("--weights_dir", default="weights", help="folder of the weight files (default: %(default)s)")
    cli.add_data_flags(parser)
    return parser


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
    present = sorted(key for key in naming.member_files(weights_dir, prefix) if key != "Best")
    info = read_json_record(naming.run_info_path(weights_dir, prefix))
    recorded = info.get("args", {}).get("M") if isinstance(info.get("args"), dict) else None
    unfinished = info.get("status") == "running" or os.path.isfile(naming.state_path(weights_dir, prefix))
    if unfinished:
        print(f"note: the training run of {prefix} in {weights_dir} is unfinished ({run_progress(weights_dir, prefix)}): "
              "the ensemble has only the snapshots saved so far")
    if requested is not None:
        return requested
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 1:
        return max(present, default=0)  # downloaded or converted weights: no run record
    count = max((i for i in present if i <= recorded), default=0) if unfinished else recorded
    unused = [i for i in present if i > count]
    if unused and not unfinished:
        print(f"note: using the {recorded} snapshots that the training run recorded ({os.path.basename(naming.run_info_path(weights_dir, prefix))}); "
              f"snapshot file(s) {', '.join(map(str, unused))} are present too and not used (--M chooses)")
    return count


def run_progress(weights_dir, prefix):
    """'3 of 6 epochs done, process 1234 (...) is training it now', as far as the files tell."""
    from snapshot_ensembles import run_lock, run_state

    try:
        state = run_state.read_state(naming.state_path(weights_dir, prefix))
    except UserError:
        state = None
    done = (f"{state.epoch} of {state.flags.get('nb_epoch')} epochs done" if state is not None
            else "no epoch finished yet")
    holder = run_lock.running_process(weights_dir, prefix)
    return done + (f", {holder} is training it now" if holder else ", not training now: rerun its command to finish it")


def find_members(weights_dir, prefix, m, dataset, args):
    """[Best, 1..M] as Members; a clear error listing every missing file."""
    m = snapshot_count(weights_dir, prefix, m)
    members = [Member("Best", naming.best_path(weights_dir, prefix))]
    members += [Member(str(i), naming.snapshot_path(weights_dir, prefix, i)) for i in range(1, m + 1)]
    missing = [member.path for member in members if not os.path.isfile(member.path)]
    if m == 0 or missing:
        listed = ", ".join(missing) if missing else f"{prefix}-1.weights.h5 ... in {weights_dir}"
        script = "train_cifar_10.py" if dataset == "cifar10" else "train_cifar_100.py"
        raise UserError(
            f"missing ensemble member files: {listed}. Train them with `python {script} "
            f"{describe_architecture(args)} --weights_dir {weights_dir}`, or fetch the release weights with "
            f"`python download_weights.py --dataset {dataset} {describe_architecture(args)} "
            f"--weights_dir {weights_dir}` (and pass --M if you want fewer snapshots)")
    return members


def saved_ensemble_weights(args, prefix, members):
    """(path, weights) of the saved ensemble JSON; (None, None) when this mode does without it.

    --optimize 0 needs it to match the members; --optimize 1 replaces it and never reads it; --optimize -1
    shows it beside the equal weights only when it matches, and otherwise says why it left it out.
    """
    path = ensemble.find_ensemble_json(args.weights_dir, prefix)
    if args.optimize == 0 and path is None:
        raise UserError(f"--optimize 0 uses the saved ensemble weights, but {args.weights_dir} has no "
                        f"Ensemble-weights-{prefix}.json: run with --optimize 1 first to fit and save them, "
                        "or use --optimize -1 for equal weights")
    if args.optimize == 1 or path is None:
        return None, None
    member_files = [(os.path.basename(m.path), m.sha256) for m in members]
    try:
        return path, ensemble.read_ensemble_weights(path, len(members), member_files)
    except UserError as err:
        if args.optimize == 0:
            raise
        print(f"note: the saved ensemble weights are not shown: {err}")
        return None, None


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
        standardization = recorded_standardization(self.args.weights_dir, prefix_for(self.dataset, self.args))
        return self.model.predict(images_dataset(images, self.args.batch_size, standardization), verbose=0)


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
    info_path = naming.run_info_path(weights_dir, prefix)
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
        raise UserError(f"the standardization in {naming.run_info_path(weights_dir, prefix)} is not readable "
                        f"({err}): restore the file from the training run") from None
    return mean, std


def fitting_split(dataset, data, weights_dir, prefix):
    """Images and labels to fit the ensemble weights on, the split's name, and whether the Best
    checkpoint was chosen on that same split.

    The validation split recorded by training when there is one (never the test set), otherwise the
    training set, as the original did.
    """
    from snapshot_ensembles.data import split_validation

    info_path = naming.run_info_path(weights_dir, prefix)
    info = training_record(weights_dir, prefix)
    try:
        val_split, seed = float(info.get("val_split", 0.0)), int(info.get("seed", 0))
    except (ValueError, TypeError) as err:
        raise UserError(f"cannot read the training record {info_path} ({err}); delete it to fit on the "
                        "training set instead of the validation split") from None
    if val_split > 0:
        _, val_idx = split_validation(data.x_train, data.y_train, val_split, seed)
        if "nb_val" in info and info["nb_val"] != len(val_idx):
            raise UserError(f"the validation split recorded in {info_path} ({info['nb_val']} images) does not "
                            f"match this data ({len(val_idx)} images): use the data the run was trained on")
        return (data.x_train[val_idx], data.y_train[val_idx], f"validation split ({val_split:g} of the training set)",
                True)
    return data.x_train, data.y_train, "training set (no validation split was recorded)", False


def format_row(label, acc, loss=None):
    loss_text = "" if loss is None else f"   log-loss {loss:.4f}"
    return f"  {label:<40} accuracy {acc * 100:6.2f} %{loss_text}"


def plot_report(path, curve, agreement, best_single, member_labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    sizes, accs = zip(*curve)
    left.plot(sizes, [a * 100 for a in accs], marker="o", label="equal-weight ensemble of the last m snapshots")
    left.axhline(best_single * 100, color="grey", linestyle="--", label="best single member")
    left.set(xlabel="m (snapshots in the ensemble)", ylabel="test accuracy (%)", title="Ensemble size")
    left.set_xticks(list(sizes))
    left.legend(loc="lower right", fontsize=8)
    image = right.imshow(agreement, vmin=min(0.5, float(np.min(agreement))), vmax=1.0, cmap="viridis")
    right.set_xticks(range(len(member_labels)), member_labels, rotation=45, fontsize=8)
    right.set_yticks(range(len(member_labels)), member_labels, fontsize=8)
    right.set_title("Agreement of members' predictions (test set)")
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def predict(dataset, argv=None, prog=None, data=None):
    """Run the prediction flow; `data` lets the demo pass its own Dataset. Returns a summary dict."""
    args = build_parser(dataset, prog).parse_args(argv)
    cli.check_model_flags(args)
    prefix = prefix_for(dataset, args)
    members = find_members(args.weights_dir, prefix, args.M, dataset, args)
    saved_json, saved_weights = saved_ensemble_weights(args, prefix, members)  # before any network runs

    if data is None:
        from snapshot_ensembles.data import load_cifar

        data = load_cifar(dataset, args.data_dir, args.data_sha256)
    cache = PredictionCache(args.weights_dir, nb_classes_of(dataset))
    predictor = MemberPredictor(args, dataset)
    test_key = f"test-{array_fingerprint(data.x_test, data.y_test)}"
    test_probs = [cache.probabilities(m, test_key, data.x_test, predictor) for m in members]
    labels = [m.label for m in members]

    fitted = None
    if args.optimize == 1:
        x_fit, y_fit, fit_name, best_chosen_on_fit_split = fitting_split(dataset, data, args.weights_dir, prefix)
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
        del fit_probs

    equal = np.full(len(members), 1.0 / len(members))
    member_acc = [ensemble.accuracy(p, data.y_test) for p in test_probs]
    equal_probs = ensemble.weighted_average(test_probs, equal)
    # The weighted row shows the fitted weights, else the saved ones (also beside --optimize -1).
    weights = fitted.weights if fitted is not None else saved_weights
    weights_source = "fitted" if fitted is not None else f"saved in {os.path.basename(saved_json or '')}"
    weighted_probs = ensemble.weighted_average(test_probs, weights) if weights is not None else None

    print(f"{naming.dataset_title(dataset)} test set: {len(data.y_test)} images; ensemble {prefix} with "
          f"{len(members)} members (Best, snapshots 1..{len(members) - 1})")
    needed = len(members) * (2 if fitted is not None else 1)
    print(f"  member predictions computed: {len(cache.computed)} of {needed} (the rest came from the cache "
          f"in {cache.folder})")
    print("Members:")
    for label, acc, probs in zip(labels, member_acc, test_probs):
        print(format_row(label, acc, ensemble.log_loss(probs, data.y_test)))
    best_index = int(np.argmax(member_acc))
    print("Ensembles:")
    print(format_row(f"single best member ({labels[best_index]})", member_acc[best_index]))
    print(format_row("equal-weight ensemble", ensemble.accuracy(equal_probs, data.y_test),
                     ensemble.log_loss(equal_probs, data.y_test)))
    if weighted_probs is not None:
        print(format_row(f"weighted ensemble ({weights_source})", ensemble.accuracy(weighted_probs, data.y_test),
                         ensemble.log_loss(weighted_probs, data.y_test)))
        print("  weights [" + ", ".join(f"{w:.4f}" for w in weights) + "]")
    if fitted is not None:
        spread = max(fitted.restart_log_losses) - min(fitted.restart_log_losses)
        print(f"  fitted on the {fit_name}, {len(y_fit)} images: log-loss {fitted.log_loss:.6f}, "
              f"{args.num_tests} restarts agree to {spread:.1e}, {fitted.seconds:.2f} s")
        if best_chosen_on_fit_split:
            print("  the Best checkpoint was chosen on these same images, so it takes no part in the fit (weight 0)")
    curve = ensemble.ensemble_size_curve(test_probs, data.y_test)
    print("Ensemble size (equal weights, last m snapshots):")
    print("  " + "  ".join(f"m={m}: {acc * 100:.2f} %" for m, acc in curve))

    if fitted is not None:
        path = naming.ensemble_json_path(args.weights_dir, prefix)
        ensemble.write_ensemble_weights(
            path, fitted.weights, members=[os.path.basename(m.path) for m in members],
            member_sha256=[m.sha256 for m in members], fit_split=fit_name,
            best_excluded_from_fit=best_chosen_on_fit_split, fit_samples=int(len(y_fit)), fit_log_loss=fitted.log_loss,
            restart_log_losses=fitted.restart_log_losses, num_tests=args.num_tests,
            test_accuracy=ensemble.accuracy(weighted_probs, data.y_test),
            test_log_loss=ensemble.log_loss(weighted_probs, data.y_test))
        print(f"  ensemble weights saved to {path}")
    chosen = equal_probs if args.optimize == -1 else weighted_probs
    accuracy = ensemble.accuracy(chosen, data.y_test) * 100
    print(f"Ensemble with {MODES[args.optimize]}:")
    print("Accuracy : ", accuracy)
    print("Error : ", 100 - accuracy)

    if args.plot is not None:
        plot_path = args.plot or naming.plot_path(args.weights_dir, prefix)
        plot_report(plot_path, curve, ensemble.agreement_matrix(test_probs), member_acc[best_index], labels)
        print(f"plot saved to {plot_path}")
    return {"prefix": prefix, "member_accuracy": member_acc, "equal_accuracy": ensemble.accuracy(equal_probs, data.y_test),
            "weighted_accuracy": None if weighted_probs is None else ensemble.accuracy(weighted_probs, data.y_test),
            "weights": None if weights is None else [float(w) for w in weights], "accuracy": accuracy / 100,
            "curve": curve, "networks_run": list(cache.computed)}


def main_for(dataset):
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return lambda argv=None: predict(dataset, argv, prog)
