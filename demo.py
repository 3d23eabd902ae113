"""The whole Snapshot Ensembles pipeline in a few minutes, on data that ships with scikit-learn.

scikit-learn's 1,797 handwritten digits (8x8, real scans) are resized to 32x32x3 and split into
stratified train / validation / test sets, then run through the SAME code as the CIFAR scripts:
the training flow with the snapshot callbacks (real weight files in --weights_dir), then the
ensemble prediction flow with equal and fitted weights. Unless --no_baseline, the same network is
also trained for the same number of epochs with one ordinary cosine cycle, the paper's comparison.
"""

import os
import sys

from snapshot_ensembles import cli, recipes

DEMO_DATASET = "digits"
TEST_FRACTION = 0.7  # 1,258 test digits: fewer training images make the task hard enough to ensemble
VAL_FRACTION = 0.4  # of what remains after the test set: enough to fit ensemble weights on


def build_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--M", type=cli.positive_int, default=3, help="snapshots (default: %(default)s)")
    parser.add_argument("--nb_epoch", type=cli.positive_int, default=36, help="total epochs (default: %(default)s)")
    parser.add_argument("--alpha_zero", type=cli.positive_float, default=0.05,
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--momentum", type=cli.unit_interval, default=0.9, help="SGD momentum (default: %(default)s)")
    parser.add_argument("--bn_momentum", type=cli.unit_interval, default=0.9,
                        help="BatchNormalization momentum; below Keras's 0.99 because an epoch here is only "
                             "21 steps (default: %(default)s)")
    parser.add_argument("--wrn_N", type=cli.model_size, default=1, help="WRN blocks per group (default: %(default)s)")
    parser.add_argument("--wrn_k", type=cli.model_size, default=1, help="WRN width (default: %(default)s)")
    parser.add_argument("--batch_size", type=cli.positive_int, default=16, help="(default: %(default)s)")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, help="(default: %(default)s)")
    parser.add_argument("--weights_dir", default=os.path.join("weights", "demo"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the single-cycle baseline run")
    parser.add_argument("--recipe", choices=recipes.RECIPE_NAMES, default="original",
                        help="training recipe, as the training scripts' flag; the demo's own flags above "
                             "(momentum, batch) still apply (default: %(default)s)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="train in bfloat16 on a CPU, float16 on a GPU (as the training scripts' flag)")
    return parser


def digits_dataset(seed):
    """scikit-learn's digits as a 32x32x3 uint8 Dataset with a stratified held-out test set."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from snapshot_ensembles.data import Dataset

    digits = load_digits()
    images = (digits.images[..., None] * (255.0 / 16.0)).astype("float32")  # 0..16 grey levels -> 0..255
    images = tf.image.resize(images, (32, 32), method="bilinear").numpy()
    images = np.repeat(np.clip(np.rint(images), 0, 255).astype(np.uint8), 3, axis=-1)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=TEST_FRACTION,
                                                        random_state=seed, stratify=labels)
    return Dataset(x_train, y_train, x_test, y_test, nb_classes=10, source="scikit-learn's bundled digits")


def common_flags(args, weights_dir):
    return ["--model", "wrn", "--wrn_N", str(args.wrn_N), "--wrn_k", str(args.wrn_k), "--weights_dir", weights_dir]


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.load_tensorflow()
    from snapshot_ensembles import naming, prediction, training

    data = digits_dataset(args.seed)
    # Every demo run trains afresh (--no_resume).
    train_flags = ["--nb_epoch", str(args.nb_epoch), "--alpha_zero", str(args.alpha_zero), "--momentum",
                   str(args.momentum), "--bn_momentum", str(args.bn_momentum), "--batch_size", str(args.batch_size),
                   "--val_split", str(VAL_FRACTION), "--seed", str(args.seed), "--recipe", args.recipe, "--no_resume"]
    if args.mixed_precision:
        train_flags.append("--mixed_precision")
    snapshot_dir = os.path.join(args.weights_dir, "snapshots")
    print(f"== Snapshot ensemble: {args.M} cycles of {args.nb_epoch // args.M} epochs ==")
    training.train(DEMO_DATASET, common_flags(args, snapshot_dir) + train_flags + ["--M", str(args.M)], data=data)
    print("\n== Ensemble prediction (fitted weights, then equal weights) ==")
    report = prediction.predict(DEMO_DATASET, common_flags(args, snapshot_dir) + ["--optimize", "1"], data=data)
    prediction.predict(DEMO_DATASET, common_flags(args, snapshot_dir) + ["--optimize", "-1"], data=data)

    baseline = None
    if not args.no_baseline:
        print(f"\n== Baseline: the same network, {args.nb_epoch} epochs, one cosine cycle ==")
        baseline_dir = os.path.join(args.weights_dir, "baseline")
        model, _ = training.train(DEMO_DATASET, common_flags(args, baseline_dir) + train_flags + ["--M", "1"],
                                  data=data)
        prefix = naming.model_prefix(DEMO_DATASET, "wrn", args.wrn_N, args.wrn_k)
        baseline = training.test_probabilities(model, data, training.evaluation_batch_size(args),
                                               prediction.recorded_standardization(baseline_dir, prefix))

    result = summary_evaluation(report, data.y_test, args.seed)
    rows = summary_rows(result, baseline, data.y_test)
    print(f"\n== Summary: {len(data.y_test)} held-out test digits (seed {args.seed}) ==")
    print(f"  {'':<44}{'accuracy':>10}{'NLL':>9}{'ECE':>9}")
    for label, scores in rows.items():
        print(f"  {label:<44}{scores.accuracy * 100:8.2f} %{scores.nll:9.4f}{scores.ece:9.4f}")
    gain = result.gain
    print(f"  fitted ensemble minus {result.member_labels[result.best_member]}, paired bootstrap 95 % interval "
          f"({result.resamples} resamples): accuracy {prediction.format_interval(gain['accuracy'], 100, 2)} points, "
          f"NLL {prediction.format_interval(gain['nll'])}")
    if "nll_calibrated" in gain:
        print(f"  the same, both with their temperature: NLL {prediction.format_interval(gain['nll_calibrated'])}")
    return {"rows": {label: scores.to_dict() for label, scores in rows.items()},
            "gain": {name: interval.to_dict() for name, interval in gain.items()}}


def summary_evaluation(report, labels, seed):
    """The fitted ensemble's evaluation against the most accurate snapshot (the Best checkpoint left out)."""
    from snapshot_ensembles import evaluation

    first = report["evaluation"]
    best_snapshot = 1 + max(range(len(first.members) - 1), key=lambda i: first.members[1 + i].accuracy)
    return evaluation.evaluate(report["member_probabilities"], labels, first.member_labels, first.weights,
                               first.temperature, report["member_temperatures"], best_member=best_snapshot,
                               seed=seed)


def summary_rows(result, baseline_probs, labels):
    from snapshot_ensembles import metrics

    rows = {f"best single snapshot ({result.member_labels[result.best_member]})": result.members[result.best_member],
            "equal-weight ensemble": result.equal, "fitted ensemble": result.weighted,
            f"fitted ensemble + temperature {result.temperature:.3f}": result.weighted_calibrated}
    if baseline_probs is not None:
        rows["baseline (one cycle, same epochs)"] = metrics.score(baseline_probs, labels)
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
    sys.exit(0)
