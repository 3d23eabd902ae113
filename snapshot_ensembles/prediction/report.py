"""The prediction report: printed through snapshot_ensembles.output (`render_*`), and plotted."""

import os

import numpy as np

from snapshot_ensembles import output
from snapshot_ensembles.config import naming
from snapshot_ensembles.ensemble import metrics
from snapshot_ensembles.errors import ConfigError
from snapshot_ensembles.files import atomic_path

MODES = {1: "fitted weights", 0: "saved weights", -1: "equal weights"}
HEADER = f"{'':<42}{'accuracy':>10}{'NLL':>9}{'Brier':>9}{'ECE':>9}"


def format_row(label, scores):
    return (f"  {label:<40}{scores.accuracy * 100:8.2f} %{scores.nll:9.4f}{scores.brier:9.4f}"
            f"{scores.ece:9.4f}")


def format_interval(interval, scale=1.0, digits=4):
    return (f"{interval.estimate * scale:+.{digits}f} [{interval.low * scale:+.{digits}f}, "
            f"{interval.high * scale:+.{digits}f}]")


def render_report(report):
    """The report of a prediction.PredictionReport, but for the result lines (normal verbosity and above)."""
    members, y_count = report.members, len(report.evaluation.probabilities)
    output.say(f"{naming.dataset_title(report.config.dataset)} test set: {y_count} images; ensemble "
               f"{report.folder.prefix} with {len(members)} members (Best, snapshots 1..{len(members) - 1})")
    needed = len(members) * (2 if report.fit is not None else 1)
    output.say(f"  member predictions computed: {len(report.cache.computed)} of {needed} (the rest came from "
               f"the cache in {report.cache.folder})")
    result, fit, say = report.evaluation, report.fit, output.say
    say("Members:" + HEADER[len("Members:"):])
    for label, scores in zip(result.member_labels, result.members):
        say(format_row(label, scores))
    best_label = result.member_labels[result.best_member]
    say("Ensembles:")
    say(format_row(f"single best member ({best_label})", result.members[result.best_member]))
    if result.best_member_calibrated is not None:
        say(format_row(f"  + temperature {result.best_member_temperature:.3f}", result.best_member_calibrated))
    say(format_row("equal-weight ensemble", result.equal))
    if result.weighted is not None:
        source = "fitted" if fit is not None else f"saved in {os.path.basename(report.saved_json or '')}"
        say(format_row(f"weighted ensemble ({source})", result.weighted))
        if result.weighted_calibrated is not None:
            say(format_row(f"  + temperature {result.temperature:.3f}", result.weighted_calibrated))
        say("  weights [" + ", ".join(f"{w:.4f}" for w in result.weights) + "]")
    if fit is not None:
        render_fit(fit)
    elif result.weighted is not None and result.temperature is None:
        say("  no temperature saved with these weights (fitted before temperature scaling): --optimize 1 fits one")
    render_gain_and_diversity(result)
    say("Ensemble size (equal weights, last m snapshots):")
    for m, scores in result.curve:
        say(format_row(f"m={m}:", scores))


def render_gain_and_diversity(result):
    output.say(f"Gain of the {result.compared}{'' if result.compared == 'weighted' else '-weight'} ensemble over "
               f"the single best member (paired bootstrap over test images, {result.resamples} resamples, 95 % "
               "interval):")
    output.say(f"  accuracy {format_interval(result.gain['accuracy'], 100, 2)} points   "
               f"NLL {format_interval(result.gain['nll'])}")
    if "nll_calibrated" in result.gain:
        output.say(f"  NLL, both with their temperature {format_interval(result.gain['nll_calibrated'])}")
    output.say(f"Diversity of the members: mean pairwise disagreement "
               f"{metrics.mean_off_diagonal(result.disagreement) * 100:.2f} %, "
               f"mean KL divergence {metrics.mean_off_diagonal(result.kl_divergence):.4f} nats")


def render_fit(fit):
    spread = max(fit.weights.restart_log_losses) - min(fit.weights.restart_log_losses)
    output.say(f"  fitted on the {fit.split_name}, {fit.samples} images: log-loss {fit.weights.log_loss:.6f}, "
               f"{len(fit.weights.restart_log_losses)} restarts agree to {spread:.1e}, {fit.weights.seconds:.2f} s")
    if fit.best_excluded:
        output.say("  the Best checkpoint was chosen on these same images, so it takes no part in the fit (weight 0)")
    t = fit.temperature
    output.say(f"  temperature fitted on the same images: {t.temperature:.4f} (NLL there {t.nll_before:.4f} -> "
               f"{t.nll_after:.4f})")
    if t.at_bound or any(member.at_bound for member in fit.member_temperatures):
        low, high = metrics.TEMPERATURE_BOUNDS
        output.always(f"  warning: a temperature reached the end of its range [{low:g}, {high:g}]: the fit split's "
                      "predictions are (nearly) all right and confident, as on a training set, so it cannot tell "
                      "how overconfident the test predictions are; record a validation split (--val_split) in "
                      "training")


def render_result(report):
    """The result lines, printed even when quiet."""
    output.always(f"Ensemble with {MODES[report.config.optimize]}:")
    output.always("Accuracy : ", report.accuracy * 100)
    output.always("Error : ", 100 - report.accuracy * 100)


def check_plotting():
    """matplotlib, which only the plot needs, is an extra (`pip install '.[plot]'`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("{plot} needs matplotlib, which is not installed: pip install matplotlib (or, in the "
                          "checkout, pip install '.[plot]'), or leave out {plot}", plot=("plot",)) from None


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


