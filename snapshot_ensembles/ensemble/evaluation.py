"""An ensemble's evaluation on a labelled test set.

Scores (accuracy, NLL, Brier, ECE) of every member, of the single best member, of the equal-weight and
weighted ensembles before and after temperature scaling, and of the ensemble-size curve; the paired
bootstrap interval of the ensemble's gain over the best member; the members' diversity. Weights and
temperatures arrive already fitted on another split: nothing here learns from the test labels.
"""

import dataclasses

import numpy as np

from snapshot_ensembles import ensemble
from snapshot_ensembles.ensemble import metrics
from snapshot_ensembles.ensemble.metrics import Scores


@dataclasses.dataclass
class EnsembleEvaluation:
    member_labels: list  # "Best checkpoint", "Snapshot 1", ...
    members: list  # Scores of each member
    best_member: int  # index of the single best member: by default the most accurate on the test set
    equal: Scores
    curve: list  # [(m, Scores)] of the equal-weight ensemble of the last m snapshots
    disagreement: np.ndarray  # (M, M) fraction of test images two members classify differently
    kl_divergence: np.ndarray  # (M, M) mean KL(member i || member j), nats
    compared: str  # "weighted" or "equal": the ensemble in use, compared with the best member
    gain: dict  # Interval of (ensemble in use - best member) per score: "accuracy", "nll", "nll_calibrated"
    reliability: dict  # ReliabilityBins of "best_member", "ensemble" and, with a temperature, "ensemble_calibrated"
    probabilities: np.ndarray  # test probabilities of the ensemble in use, its temperature applied
    weights: np.ndarray = None  # the weighted ensemble's, when there is one
    weighted: Scores = None
    temperature: float = None  # of the weighted ensemble
    weighted_calibrated: Scores = None
    best_member_temperature: float = None
    best_member_calibrated: Scores = None
    resamples: int = metrics.BOOTSTRAP_RESAMPLES
    seed: int = 0

    # The figures by name, as SnapshotEnsemble.evaluate's users read them (accuracies are fractions); the
    # weighted ensemble's are the equal-weight one's when there are no weights.
    names = property(lambda self: self.member_labels)
    member_accuracy = property(lambda self: [scores.accuracy for scores in self.members])
    member_log_loss = property(lambda self: [scores.nll for scores in self.members])
    equal_accuracy = property(lambda self: self.equal.accuracy)
    equal_log_loss = property(lambda self: self.equal.nll)
    weighted_accuracy = property(lambda self: (self.weighted or self.equal).accuracy)
    weighted_log_loss = property(lambda self: (self.weighted or self.equal).nll)
    size_curve = property(lambda self: self.curve)
    nb_samples = property(lambda self: int(len(self.probabilities)))

    @property
    def in_use(self):
        """The Scores of the ensemble in use: the weighted one, else the equal-weight one."""
        return self.weighted if self.compared == "weighted" else self.equal

    def to_dict(self):
        """Every figure, JSON-ready (the `--report` file)."""
        best = self.best_member
        return {
            "test_samples": self.nb_samples,
            "ece_bins": metrics.ECE_BINS,
            "members": [{"label": label, **scores.to_dict()} for label, scores in zip(self.member_labels,
                                                                                     self.members)],
            "best_member": {"label": self.member_labels[best], "index": best, **self.members[best].to_dict(),
                            **_calibrated(self.best_member_temperature, self.best_member_calibrated)},
            "equal_weights": self.equal.to_dict(),
            "weighted": None if self.weighted is None else {
                "weights": [float(w) for w in self.weights], **self.weighted.to_dict(),
                **_calibrated(self.temperature, self.weighted_calibrated)},
            "ensemble_size_curve": [{"m": m, **scores.to_dict()} for m, scores in self.curve],
            "gain_over_best_member": {"ensemble": self.compared, "resamples": self.resamples, "seed": self.seed,
                                      **{name: interval.to_dict() for name, interval in self.gain.items()}},
            "diversity": {"mean_disagreement": metrics.mean_off_diagonal(self.disagreement),
                          "mean_kl": metrics.mean_off_diagonal(self.kl_divergence),
                          "disagreement": self.disagreement.tolist(), "kl": self.kl_divergence.tolist()},
            "reliability": {name: bins.to_dict() for name, bins in self.reliability.items()},
        }


def _calibrated(temperature, scores):
    return {"temperature": temperature, "calibrated": None if scores is None else scores.to_dict()}


@dataclasses.dataclass
class _Scored:
    """What the evaluation keeps of one prediction once its (n, C) probabilities may be freed."""

    scores: Scores
    per_sample: dict  # for the bootstrap
    reliability: metrics.ReliabilityBins

    @classmethod
    def of(cls, probs, labels):
        per_sample = metrics.per_sample_scores(probs, labels)
        bins = metrics.reliability_bins(probs, labels)
        scores = metrics.Scores(accuracy=float(np.mean(per_sample["accuracy"])), nll=float(np.mean(per_sample["nll"])),
                                brier=metrics.brier_score(probs, labels), ece=bins.ece())  # = metrics.score, once
        return cls(scores, per_sample, bins)


def evaluate(member_probs, labels, member_labels, weights=None, temperature=None, member_temperatures=None,
             use_weights=True, best_member=None, seed=0, resamples=metrics.BOOTSTRAP_RESAMPLES, first_is_best=True):
    """The EnsembleEvaluation of `member_probs` ([Best, 1..M] test probabilities) against `labels`.

    `weights` and `temperature` describe the weighted ensemble (None: none, or no temperature);
    `member_temperatures` one per member (None: no calibrated best-member row). `use_weights` chooses the
    ensemble in use, compared with the member at `best_member` (default: the most accurate on the test
    set). At most three (n, C) arrays live at a time, whatever the number of members.
    """
    labels = np.asarray(labels)
    members = [metrics.score(probs, labels) for probs in member_probs]
    best = int(np.argmax([scores.accuracy for scores in members])) if best_member is None else int(best_member)
    use_weights = use_weights and weights is not None
    scored = {"best": _Scored.of(member_probs[best], labels)}
    best_temperature = None if member_temperatures is None else member_temperatures[best]
    if best_temperature is not None:
        scored["best_calibrated"] = _Scored.of(metrics.apply_temperature(member_probs[best], best_temperature),
                                               labels)
    in_use = ensemble.weighted_average(member_probs, np.ones(len(member_probs)))
    scored["equal"] = _Scored.of(in_use, labels)
    if weights is not None:
        weighted_probs = ensemble.weighted_average(member_probs, weights)
        scored["weighted"] = _Scored.of(weighted_probs, labels)
        in_use = weighted_probs if use_weights else in_use
        if temperature is not None:
            calibrated = metrics.apply_temperature(weighted_probs, temperature)
            scored["weighted_calibrated"] = _Scored.of(calibrated, labels)
            in_use = calibrated if use_weights else in_use
        del weighted_probs
    compared = "weighted" if use_weights else "equal"

    gain = metrics.bootstrap_gain(scored[compared].per_sample, scored["best"].per_sample, resamples, seed)
    reliability = {"best_member": scored["best"].reliability, "ensemble": scored[compared].reliability}
    if use_weights and "weighted_calibrated" in scored:
        reliability["ensemble_calibrated"] = scored["weighted_calibrated"].reliability
        if "best_calibrated" in scored:
            gain["nll_calibrated"] = metrics.bootstrap_gain(scored["weighted_calibrated"].per_sample,
                                                            scored["best_calibrated"].per_sample,
                                                            resamples, seed)["nll"]
    found = {name: item.scores for name, item in scored.items()}
    return EnsembleEvaluation(
        member_labels=list(member_labels), members=members, best_member=best, equal=found["equal"],
        curve=ensemble.ensemble_size_curve(member_probs, labels, first_is_best),
        disagreement=metrics.disagreement_matrix(member_probs), kl_divergence=metrics.kl_matrix(member_probs),
        compared=compared, gain=gain, reliability=reliability, probabilities=in_use,
        weights=None if weights is None else np.asarray(weights, dtype=np.float64),
        weighted=found.get("weighted"), temperature=temperature, weighted_calibrated=found.get("weighted_calibrated"),
        best_member_temperature=best_temperature, best_member_calibrated=found.get("best_calibrated"),
        resamples=resamples, seed=seed)
