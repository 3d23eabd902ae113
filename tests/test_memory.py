"""Prediction memory: members are read one at a time from memory-mapped cache files, never stacked.

With n samples, C classes and M members, the ensemble arithmetic may hold a few (n, C) float32 arrays
and the (n, M) float64 true-class matrix of the fit, but never an (M, n, C) array (for CIFAR-100's
50,000 training images and 100 members in float64 that would be 4 GB).
"""

import tracemalloc

import numpy as np

from snapshot_ensembles import ensemble, evaluation, metrics

N_SAMPLES, N_CLASSES = 20000, 100
MEMBER_BYTES = N_SAMPLES * N_CLASSES * 4  # one member's float32 probabilities: 8 MB


def memory_mapped_members(folder, n_members, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, N_SAMPLES)
    members = []
    for m in range(n_members):
        logits = rng.standard_normal((N_SAMPLES, N_CLASSES), dtype=np.float32)
        logits[np.arange(N_SAMPLES), labels] += 2.0
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        path = folder / f"member{m}.npy"
        np.save(path, probs)
        members.append(np.load(path, mmap_mode="r"))  # as PredictionCache hands them out
    return members, labels


def peak_bytes(function, *args):
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def ensemble_report(members, labels):
    """What the prediction flow computes from the members: the fitted weights and temperatures, then the
    evaluation (every member's scores, equal and fitted ensembles, the size curve, bootstrap, diversity)."""
    fitted = ensemble.fit_weights(members, labels, num_tests=2)
    temperature = metrics.fit_temperature(ensemble.weighted_average(members, fitted.weights), labels).temperature
    member_temperatures = [metrics.fit_temperature(probs, labels).temperature for probs in members]
    evaluation.evaluate(members, labels, [str(m) for m in range(len(members))], fitted.weights, temperature,
                        member_temperatures, resamples=50)


def test_ensemble_memory_does_not_grow_with_members_times_samples_times_classes(tmp_path):
    few = peak_bytes(ensemble_report, *memory_mapped_members(tmp_path, 3))
    many = peak_bytes(ensemble_report, *memory_mapped_members(tmp_path, 24))
    # 21 more members add their (n,) true-class and argmax columns (about 0.3 MB each), not 8 MB each.
    assert many - few < 21 * MEMBER_BYTES / 8, (few, many)
    assert many < 6 * MEMBER_BYTES, many  # a handful of (n, C) arrays, whatever M is
