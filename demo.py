"""The whole Snapshot Ensembles pipeline in a few minutes, on data that ships with scikit-learn.

scikit-learn's 1,797 handwritten digits (8x8, real scans) are resized to 32x32x3 and split into
stratified train / validation / test sets, then run through the SAME code as the CIFAR scripts:
the training flow with the snapshot callbacks (real weight files in --weights_dir), then the
ensemble prediction flow with equal and fitted weights. Unless --no_baseline, the same network is
also trained for the same number of epochs with one ordinary cosine cycle, the paper's comparison.
"""

import dataclasses
import os
import sys

from snapshot_ensembles import backend_start, cli, config, output

DEMO_DATASET = "digits"
TEST_FRACTION = 0.7  # 1,258 test digits: fewer training images make the task hard enough to ensemble
VAL_FRACTION = 0.4  # of what remains after the test set: enough to fit ensemble weights on


# The training scripts' settings that the demo takes, at the demo's defaults: an epoch here is only 21 steps,
# hence BatchNormalization's momentum below Keras's 0.99.
DEMO_SETTINGS = dict(M=3, nb_epoch=36, alpha_zero=0.05, momentum=0.9, nesterov=None, bn_momentum=0.9, wrn_N=1,
                     wrn_k=1, batch_size=16, seed=0, weights_dir=os.path.join("weights", "demo"), recipe="original",
                     mixed_precision=False)


def build_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_setting_flags(parser, config.TrainConfig, only=DEMO_SETTINGS, defaults=DEMO_SETTINGS)
    parser.add_argument("--no_baseline", action="store_true", help="skip the single-cycle baseline run")
    cli.add_output_flags(parser)
    return parser


def digits_dataset(seed):
    """scikit-learn's digits as a 32x32x3 uint8 Dataset with a stratified held-out test set."""
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from snapshot_ensembles.data import Dataset

    digits = load_digits()
    images = (digits.images[..., None] * (255.0 / 16.0)).astype("float32")  # 0..16 grey levels -> 0..255
    images = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (32, 32), interpolation="bilinear",
                                                                data_format="channels_last"))
    images = np.repeat(np.clip(np.rint(images), 0, 255).astype(np.uint8), 3, axis=-1)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=TEST_FRACTION,
                                                        random_state=seed, stratify=labels)
    return Dataset(x_train, y_train, x_test, y_test, nb_classes=10, source="scikit-learn's bundled digits")


def train_config(args, weights_dir, nb_snapshots):
    """The TrainConfig of a demo run, checked; every demo run trains afresh (resume off)."""
    run = cli.config_from_args(config.TrainConfig, args, dataset=DEMO_DATASET)
    return dataclasses.replace(run, cycles=dataclasses.replace(run.cycles, M=nb_snapshots), weights_dir=weights_dir,
                               data=config.DataConfig(val_split=VAL_FRACTION), resume=False).resolved()


def predict_config(args, weights_dir, optimize):
    return config.PredictConfig(dataset=DEMO_DATASET, model=config.ModelConfig("wrn", wrn_N=args.wrn_N, wrn_k=args.wrn_k),
                                optimize=optimize, weights_dir=weights_dir)


def main(argv=None):
    args = cli.parse(build_parser(), argv)
    snapshot_dir = os.path.join(args.weights_dir, "snapshots")
    snapshot_config = train_config(args, snapshot_dir, args.M)  # flags checked before TensorFlow starts
    baseline_config = train_config(args, os.path.join(args.weights_dir, "baseline"), 1)
    backend_start.start(training=True)
    from snapshot_ensembles import prediction, training
    from snapshot_ensembles.prediction.report import format_interval

    data = digits_dataset(args.seed)
    output.say(f"== Snapshot ensemble: {args.M} cycles of {args.nb_epoch // args.M} epochs ==")
    training.train(snapshot_config, data=data)
    output.say("\n== Ensemble prediction (fitted weights, then equal weights) ==")
    report = prediction.predict(predict_config(args, snapshot_dir, 1), data=data)
    prediction.predict(predict_config(args, snapshot_dir, -1), data=data)

    baseline = None
    if not args.no_baseline:
        output.say(f"\n== Baseline: the same network, {args.nb_epoch} epochs, one cosine cycle ==")
        model, _ = training.train(baseline_config, data=data)
        baseline = training.test_probabilities(model, data, training.evaluation_batch_size(baseline_config),
                                               prediction.recorded_standardization(baseline_config.weights_dir,
                                                                                   baseline_config.prefix))

    result = summary_evaluation(report, data.y_test, args.seed)
    rows = summary_rows(result, baseline, data.y_test)
    output.always(f"\n== Summary: {len(data.y_test)} held-out test digits (seed {args.seed}) ==")
    output.always(f"  {'':<44}{'accuracy':>10}{'NLL':>9}{'ECE':>9}")
    for label, scores in rows.items():
        output.always(f"  {label:<44}{scores.accuracy * 100:8.2f} %{scores.nll:9.4f}{scores.ece:9.4f}")
    gain = result.gain
    output.always(f"  fitted ensemble minus {result.member_labels[result.best_member]}, paired bootstrap 95 % interval "
          f"({result.resamples} resamples): accuracy {format_interval(gain['accuracy'], 100, 2)} points, "
          f"NLL {format_interval(gain['nll'])}")
    if "nll_calibrated" in gain:
        output.always("  the same, both with their temperature: NLL "
                      f"{format_interval(gain['nll_calibrated'])}")
    return {"rows": {label: scores.to_dict() for label, scores in rows.items()},
            "gain": {name: interval.to_dict() for name, interval in gain.items()}}


def summary_evaluation(report, labels, seed):
    """The fitted ensemble's evaluation against the most accurate snapshot (the Best checkpoint left out)."""
    from snapshot_ensembles.ensemble import evaluation

    first = report["evaluation"]
    best_snapshot = 1 + max(range(len(first.members) - 1), key=lambda i: first.members[1 + i].accuracy)
    return evaluation.evaluate(report["member_probabilities"], labels, first.member_labels, first.weights,
                               first.temperature, report["member_temperatures"], best_member=best_snapshot,
                               seed=seed)


def summary_rows(result, baseline_probs, labels):
    from snapshot_ensembles.ensemble import metrics

    rows = {f"best single snapshot ({result.member_labels[result.best_member]})": result.members[result.best_member],
            "equal-weight ensemble": result.equal, "fitted ensemble": result.weighted,
            f"fitted ensemble + temperature {result.temperature:.3f}": result.weighted_calibrated}
    if baseline_probs is not None:
        rows["baseline (one cycle, same epochs)"] = metrics.score(baseline_probs, labels)
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
    sys.exit(0)
