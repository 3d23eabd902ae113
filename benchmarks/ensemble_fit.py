"""Time `fit_weights` against the original project's ensemble-weight fit on synthetic predictions.

    python benchmarks/ensemble_fit.py [--samples 50000] [--classes 100] [--members 6]
                                      [--num_tests 20] [--seed 0]

The last line of output is one JSON object with both times, the speed-up and both log-losses.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from sklearn.metrics import log_loss as sklearn_log_loss  # noqa: E402

from snapshot_ensembles import ensemble  # noqa: E402
from snapshot_ensembles.ensemble import metrics  # noqa: E402
from snapshot_ensembles.ensemble.metrics import LOG_LOSS_EPS  # noqa: E402


def original_fit(member_probs, labels, num_tests=20, seed=0):
    """The original project's fitting procedure, for comparison with `fit_weights`.

    Each of `num_tests` restarts draws uniform random weights in [0, 1]^M and runs SLSQP with
    numerical gradients on the log-loss of the full (n, C) weighted average. Two faithful
    details: the average is accumulated in float32 with the weight rounded to float32 (numpy's
    casting when the original was written), and it is clipped to [1e-15, 1 - 1e-15] and its rows
    renormalised before `sklearn.metrics.log_loss`, as scikit-learn's log_loss itself did at the
    time (today's raises on probabilities above 1 instead, which weights off the simplex give).
    The float32 average also limits how well the numerical gradients can steer SLSQP, as it did
    for the original. The original kept the restart with the best training
    accuracy; here the best log-loss is kept, the choice most favourable to it, and every
    restart is scored with the same exact objective as `fit_weights`.
    """
    start = time.perf_counter()
    ensemble._check_num_tests(num_tests)
    true_class = ensemble._true_class_probs(member_probs, labels)
    class_ids = np.arange(np.shape(member_probs[0])[1])

    def log_loss_func(weights):
        final_prediction = np.zeros(np.shape(member_probs[0]), dtype=np.float32)
        for weight, prediction in zip(weights, member_probs):
            final_prediction += np.float32(weight) * prediction
        # What scikit-learn's log_loss itself did first when the original was written.
        final_prediction = np.clip(final_prediction, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        final_prediction /= final_prediction.sum(axis=1, keepdims=True)
        return sklearn_log_loss(labels, final_prediction, labels=class_ids)

    rng = np.random.default_rng(seed)
    n_members = len(member_probs)
    constraints = ({"type": "eq", "fun": lambda w: 1 - sum(w)},)
    weights_list = []
    for _ in range(num_tests):
        result = scipy.optimize.minimize(
            log_loss_func,
            rng.random(n_members),
            method="SLSQP",
            bounds=[(0, 1)] * n_members,
            constraints=constraints,
        )
        # SLSQP may stop off the simplex (the original's CIFAR-100 weights sum to 1.16).
        weights_list.append(ensemble._project_to_simplex_by_scaling(result.x))
    return ensemble._best_of(true_class, weights_list, start)


def synthetic_members(n_samples, n_classes, n_members, seed):
    """Softmax outputs of `n_members` correlated classifiers of different quality.

    Each member's logits are a label signal plus unit Gaussian noise, 80% of which is shared by
    all members (snapshots of one run make many of the same mistakes). Later snapshots carry
    more signal and the Best checkpoint is strong. A softmax sharpness equal to the signal would
    be calibrated; each member gets its own factor in [0.8, 1.2] around it (some over-, some
    under-confident), so the log-loss-optimal weights are neither equal nor one-hot.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_samples)
    rows = np.arange(n_samples)
    signals = np.array([3.4] + list(np.linspace(2.9, 3.5, n_members - 1)))
    sharpness = signals * rng.uniform(0.8, 1.2, n_members)
    shared_share = 0.8
    shared_noise = rng.standard_normal((n_samples, n_classes), dtype=np.float32)
    members = []
    for signal, sharp in zip(signals, sharpness):
        own_noise = rng.standard_normal((n_samples, n_classes), dtype=np.float32)
        logits = np.float32(shared_share) * shared_noise + np.float32(np.sqrt(1 - shared_share**2)) * own_noise
        logits[rows, labels] += np.float32(signal)
        logits *= np.float32(sharp)
        # Softmax in place: one (n, C) float32 array per member.
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        members.append(logits)
    return members, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--members", type=int, default=6, help="Best checkpoint plus snapshots")
    parser.add_argument("--num_tests", type=int, default=20, help="restarts of each method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.members < 2:
        parser.error("--members must be at least 2 (the Best checkpoint and one snapshot)")

    members, labels = synthetic_members(args.samples, args.classes, args.members, args.seed)
    print(f"{args.samples} samples x {args.classes} classes x {args.members} members, "
          f"{args.num_tests} restarts each")
    for index, probs in enumerate(members):
        name = "Best" if index == 0 else f"snapshot {index}"
        print(f"  {name:<11}  accuracy {metrics.accuracy(probs, labels):.4f}  "
              f"log-loss {metrics.log_loss(probs, labels):.5f}")
    equal = ensemble.weighted_average(members, np.ones(args.members))
    print(f"  equal weights  accuracy {metrics.accuracy(equal, labels):.4f}  "
          f"log-loss {metrics.log_loss(equal, labels):.5f}")
    del equal

    results = {}
    for name, fit in (("ours", ensemble.fit_weights), ("original", original_fit)):
        result = fit(members, labels, num_tests=args.num_tests, seed=args.seed)
        results[name] = result
        spread = max(result.restart_log_losses) - min(result.restart_log_losses)
        print(f"{name:>8}: log-loss {result.log_loss:.8f} in {result.seconds:.3f} s "
              f"(restart spread {spread:.2e}); weights {np.round(result.weights, 4).tolist()}")

    ours, original = results["ours"], results["original"]
    speedup = original.seconds / ours.seconds
    print(f"speed-up {speedup:.1f}x; log-loss ours - original = {ours.log_loss - original.log_loss:+.2e}")
    print(json.dumps({
        "ours_seconds": round(ours.seconds, 4),
        "original_seconds": round(original.seconds, 4),
        "speedup": round(speedup, 1),
        "ours_logloss": ours.log_loss,
        "original_logloss": original.log_loss,
    }))


if __name__ == "__main__":
    main()
