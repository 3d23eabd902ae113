"""Prediction throughput of the ensemble prediction flow against a plain PyTorch inference loop.

    python benchmarks/predict_throughput.py [--images 10000] [--members 3] [--wrn_N 2] [--wrn_k 2]

An ensemble of `--members` weight files (the Best checkpoint and snapshots 1..members-1 of one
WRN, each with its own random weights) predicts `--images` random CIFAR-sized images:
ours:   the prediction flow of predict_cifar_10.py (--optimize -1) with an empty cache: it checks
        each file's SHA-256, runs every member through the tf.data image pipeline, caches the
        probabilities and builds the report;
peer:   the same network in PyTorch (benchmarks/torch_peer.py, parameter counts checked): eval
        mode, no autograd, channels_last, softmax over the same in-memory images, in float32 and,
        where the CPU has bfloat16 instructions (or with --bf16 on), bfloat16 autocast; --repeats
        passes over every image before ours and as many after (median and 25th-75th percentile).
        The members differ in their weights only, so a pass predicts with one member: the same
        work per image as each of ours, in a third of the time for 3 members;
cached: the prediction flow again: every member's probabilities now come from the cache.
It also prints the process's peak resident memory and its wall time. The last line of output is
one JSON object.
"""

import time

STARTED = time.perf_counter()  # the wall time counts from here, before the imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from measure import cpu_description, describe_cpu, load_average, rate_summary  # noqa: E402
from snapshot_ensembles import config, prediction  # noqa: E402
from snapshot_ensembles.data import Dataset  # noqa: E402
from snapshot_ensembles.models.build import build_model, cpu_has_native_bfloat16  # noqa: E402
from snapshot_ensembles.training.run_folder import RunFolder


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_members(weights_dir, prefix, model_config, nb_members, seed):
    """Best + snapshots 1..nb_members-1, each a differently initialised network."""
    paths = [RunFolder(weights_dir, prefix).best]
    paths += [RunFolder(weights_dir, prefix).snapshot(i) for i in range(1, nb_members)]
    for i, path in enumerate(paths):
        keras.utils.set_random_seed(seed + i)
        build_model(model_config, 10).save_weights(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--members", type=int, default=3, help="Best + snapshots (default: %(default)s)")
    parser.add_argument("--wrn_N", type=int, default=2)
    parser.add_argument("--wrn_k", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2,
                        help="peer passes over every image before ours, and as many after (default: %(default)s)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="time the peer in bfloat16; auto: where the CPU has bfloat16 instructions")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    if options.members < 2 or options.images < 1 or options.repeats < 1:
        parser.error("--members must be at least 2 (Best and one snapshot), --images and --repeats at least 1")
    cpu, flags = cpu_description()
    print(describe_cpu(cpu, flags, os.cpu_count()))
    bf16 = options.bf16 == "on" or options.bf16 == "auto" and bool(cpu_has_native_bfloat16())
    try:
        import torch_peer
    except ImportError as err:
        torch_peer, peer_missing = None, f"PyTorch is not installed ({err}): pip install -r requirements-backends.txt"

    network = config.ModelConfig("wrn", wrn_N=options.wrn_N, wrn_k=options.wrn_k)
    prefix = network.prefix("cifar10")
    rng = np.random.default_rng(options.seed)
    x = rng.integers(0, 256, size=(options.images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=options.images).astype(np.int32)
    data = Dataset(x[:1], y[:1], x, y, nb_classes=10, source="random images")
    x_float = x.astype(np.float32) / 255.0
    peer_seconds = {"fp32": [], "bf16": []} if bf16 else {"fp32": []}

    if torch_peer is not None:
        peer_network, _ = torch_peer.build(network, 10)
        torch_peer.check_same_size(torch_peer.sizes(peer_network), build_model(network, 10))

    def time_peer():
        if torch_peer is None:
            return
        for precision, seconds in peer_seconds.items():
            predictor = torch_peer.Predictor(peer_network, bfloat16=precision == "bf16")
            for _ in range(options.repeats):
                start = time.perf_counter()
                predictor.predict(x_float, options.batch_size)
                seconds.append(time.perf_counter() - start)

    weights_dir = tempfile.mkdtemp(prefix="predict-benchmark-")
    try:
        paths = write_members(weights_dir, prefix, network, options.members, options.seed)
        print(f"{prefix}: {len(paths)} members, {options.images} images, batch {options.batch_size}")
        predict_config = config.PredictConfig(dataset="cifar10", model=network, optimize=-1, weights_dir=weights_dir,
                                              batch_size=options.batch_size)
        nb_predictions = options.images * len(paths)

        time_peer()  # before and after ours: a load that changes during the run weighs on both
        start = time.perf_counter()
        summary = prediction.predict(predict_config, data=data)
        ours_seconds = time.perf_counter() - start
        assert len(summary["networks_run"]) == len(paths)
        ours_rss = peak_rss_mb()
        time_peer()

        start = time.perf_counter()
        summary = prediction.predict(predict_config, data=data)
        cached_seconds = time.perf_counter() - start
        assert not summary["networks_run"], "the second run should take every member from the cache"
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)

    ours = nb_predictions / ours_seconds
    figures = {"ours_img_s": round(ours, 2)}
    print(f"ours          {ours:8.1f} img/s ({ours_seconds:.1f} s for {len(paths)} members x {options.images} "
          "images, from the weight files to the report)")
    for precision, seconds in peer_seconds.items():
        if torch_peer is None:
            print(f"PyTorch {precision}  -  {peer_missing}")
            figures[f"peer_{precision}_img_s"] = figures[f"ours_vs_peer_{precision}"] = None
            continue
        peer = rate_summary(seconds, options.images)
        figures[f"peer_{precision}_img_s"] = peer["img_s"]
        figures[f"ours_vs_peer_{precision}"] = round(ours / peer["img_s"], 4)
        print(f"PyTorch {precision}  {peer['img_s']:8.1f} img/s ({peer['spread'][0]:.1f}-{peer['spread'][1]:.1f})"
              f"   ours / PyTorch = {ours / peer['img_s']:.3f}")
    if not bf16:
        print("PyTorch bf16 not timed: this CPU has no avx512_bf16 or amx_bf16 (--bf16 on times it emulated)")
    print(f"cached        {cached_seconds:8.2f} s for the whole flow on the second run")
    print(f"peak resident memory: {ours_rss:.0f} MiB after our flow, {peak_rss_mb():.0f} MiB at the end")
    seconds = time.perf_counter() - STARTED
    print(f"wall time {seconds:.0f} s ({seconds / 60:.1f} min); load average "
          f"{load_average()} at the end")
    print(json.dumps({"model": prefix, "images": options.images, "members": len(paths), "cpu": cpu,
                      "cpu_flags": flags, **figures, "peer_bf16_img_s": figures.get("peer_bf16_img_s"),
                      "ours_vs_peer_bf16": figures.get("ours_vs_peer_bf16"),
                      "cached_seconds": round(cached_seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
                      "seconds": round(seconds), "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
