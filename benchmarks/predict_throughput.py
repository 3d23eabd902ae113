"""Prediction throughput of the ensemble prediction flow against plain `model.predict` calls.

    python benchmarks/predict_throughput.py [--images 10000] [--members 3] [--wrn_N 2] [--wrn_k 2]

An ensemble of `--members` weight files (the Best checkpoint and snapshots 1..members-1 of one
WRN, each with its own random weights) predicts `--images` random CIFAR-sized images:
ours:   the prediction flow of predict_cifar_10.py (--optimize -1) with an empty cache: it checks
        each file's SHA-256, runs every member through the tf.data image pipeline, caches the
        probabilities and builds the report;
plain:  for each member, load the weights into one model and call `model.predict` on the same
        images held in memory as float32;
cached: the prediction flow again: every member's probabilities now come from the cache.
It also prints the process's peak resident memory. The last line of output is one JSON object.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from snapshot_ensembles import naming, prediction  # noqa: E402
from snapshot_ensembles.data import Dataset  # noqa: E402
from snapshot_ensembles.modeling import build_model  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_members(weights_dir, prefix, args, nb_members, seed):
    """Best + snapshots 1..nb_members-1, each a differently initialised network."""
    paths = [naming.best_path(weights_dir, prefix)]
    paths += [naming.snapshot_path(weights_dir, prefix, i) for i in range(1, nb_members)]
    for i, path in enumerate(paths):
        keras.utils.set_random_seed(seed + i)
        build_model(args, 10).save_weights(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--members", type=int, default=3, help="Best + snapshots (default: %(default)s)")
    parser.add_argument("--wrn_N", type=int, default=2)
    parser.add_argument("--wrn_k", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    if options.members < 2 or options.images < 1:
        parser.error("--members must be at least 2 (Best and one snapshot) and --images at least 1")

    model_flags = ["--model", "wrn", "--wrn_N", str(options.wrn_N), "--wrn_k", str(options.wrn_k)]
    args = prediction.build_parser("cifar10").parse_args(model_flags)
    prefix = naming.model_prefix("cifar10", "wrn", options.wrn_N, options.wrn_k)
    rng = np.random.default_rng(options.seed)
    x = rng.integers(0, 256, size=(options.images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=options.images).astype(np.int32)
    data = Dataset(x[:1], y[:1], x, y, nb_classes=10, source="random images")
    weights_dir = tempfile.mkdtemp(prefix="predict-benchmark-")
    try:
        paths = write_members(weights_dir, prefix, args, options.members, options.seed)
        print(f"{prefix}: {len(paths)} members, {options.images} images, batch {options.batch_size}")
        argv = model_flags + ["--optimize", "-1", "--weights_dir", weights_dir, "--batch_size",
                              str(options.batch_size)]
        nb_predictions = options.images * len(paths)

        start = time.perf_counter()
        summary = prediction.predict("cifar10", argv, data=data)
        ours_seconds = time.perf_counter() - start
        assert len(summary["networks_run"]) == len(paths)
        ours_rss = peak_rss_mb()

        start = time.perf_counter()
        summary = prediction.predict("cifar10", argv, data=data)
        cached_seconds = time.perf_counter() - start
        assert not summary["networks_run"], "the second run should take every member from the cache"

        x_float = x.astype(np.float32) / 255.0
        start = time.perf_counter()  # like ours, from building the network (and tracing it once)
        model = build_model(args, 10)
        for path in paths:
            model.load_weights(path)
            model.predict(x_float, batch_size=options.batch_size, verbose=0)
        plain_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)

    ours, plain = nb_predictions / ours_seconds, nb_predictions / plain_seconds
    print(f"ours   {ours:8.1f} img/s ({ours_seconds:.1f} s for {len(paths)} members x {options.images} images)")
    print(f"plain  {plain:8.1f} img/s   ours / plain = {ours / plain:.3f}")
    print(f"cached {cached_seconds:8.2f} s for the whole flow on the second run")
    print(f"peak resident memory: {ours_rss:.0f} MiB after our flow, {peak_rss_mb():.0f} MiB at the end")
    print(json.dumps({"ours_img_s": round(ours, 2), "plain_img_s": round(plain, 2),
                      "cached_seconds": round(cached_seconds, 3), "ours_vs_plain": round(ours / plain, 4),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
