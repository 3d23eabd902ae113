"""Where one training step's time goes: ours (TensorFlow's profiler) and the PyTorch peer (torch.profiler).

    python benchmarks/profile_step.py --model wrn --bf16                     # ours, default
    python benchmarks/profile_step.py --model wrn --bf16 --no_deterministic  # ours, fast mode
    python benchmarks/profile_step.py --model wrn --bf16 --peer              # the PyTorch loop

The step alone, on one in-memory batch, after 3 untimed steps; ms per step by op type, summed over
--steps profiled steps. Ours runs with one inter-op thread, so that its op times add up to the step.
docs/performance.md ("Where a step's time goes") groups these rows into convolutions,
BatchNormalization and the rest.
"""

import argparse
import collections
import contextlib
import glob
import os
import sys
import tempfile
import time
from types import SimpleNamespace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from measure import cpu_description, describe_cpu  # noqa: E402
from snapshot_ensembles.config import CycleConfig, ModelConfig, TrainConfig, TrainingConfig  # noqa: E402

BATCH = {"wrn": 128, "dn": 64}
STEP_EVENTS = ("Run", "Process")


def ours(options, config, rows):
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from snapshot_ensembles import training
    from snapshot_ensembles.models.build import set_precision

    with contextlib.suppress(RuntimeError):  # TensorFlow already started (a test's process): its threads stay
        tf.config.threading.set_inter_op_parallelism_threads(1)
    training.seed_everything(0, options.deterministic)
    set_precision(options.bf16)
    model = training.compile_model(training.build_training_model(config, 10), config, 20)
    rng = np.random.default_rng(0)
    batch = (rng.random((BATCH[options.model], 32, 32, 3), dtype=np.float32),
             rng.integers(0, 10, BATCH[options.model]).astype(np.int32))
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    model.make_train_function()
    step = model.train_function
    for _ in range(3):
        float(step(iterator)["loss"])
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(options.steps):
            float(step(iterator)["loss"])
        seconds = time.perf_counter() - start
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as fh:
            space.ParseFromString(fh.read())
    for plane in space.planes:
        if plane.name.startswith("/host:CPU"):
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    op_type = name.rsplit(":", 1)[-1].strip()
                    # "layer/op:OpType" events are ops; the step function and its executor span them all.
                    if ":" in name and op_type not in STEP_EVENTS and not op_type.startswith("__inference"):
                        rows[op_type] += event.duration_ps / 1e9 / options.steps
    return seconds / options.steps


def peer(options, config, rows):
    import torch

    import torch_peer

    args = SimpleNamespace(**config.to_dict())
    network, weight_decay = torch_peer.build(args, 10)
    trainer = torch_peer.Trainer(network, BATCH[options.model], args.alpha_zero, weight_decay, bfloat16=options.bf16)
    for _ in range(3):
        trainer.step()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(options.steps):
            trainer.step()
    seconds = time.perf_counter() - start
    for event in profile.key_averages():
        rows[event.key] += event.self_cpu_time_total / 1e3 / options.steps
    return seconds / options.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("wrn", "dn"), default="wrn")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 (--mixed_precision; autocast for the peer)")
    parser.add_argument("--no_deterministic", dest="deterministic", action="store_false",
                        help="ours as training's --no_deterministic runs (fused BatchNormalization)")
    parser.add_argument("--peer", action="store_true", help="profile the PyTorch loop instead of ours")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=20, help="op types to print (default: %(default)s)")
    options = parser.parse_args()
    if options.steps < 1 or options.rows < 1:
        parser.error("--steps and --rows must be at least 1")
    config = TrainConfig(model=ModelConfig(options.model), cycles=CycleConfig(M=1, nb_epoch=1, alpha_zero=0.01),
                         training=TrainingConfig(batch_size=BATCH[options.model], mixed_precision=options.bf16,
                                                 deterministic=options.deterministic)).resolved()
    rows = collections.Counter()
    step = (peer if options.peer else ours)(options, config, rows)
    name, flags = cpu_description()
    print(describe_cpu(name, flags, os.cpu_count()))
    print(f"{'PyTorch loop' if options.peer else 'ours'}, {options.model}, {'bfloat16' if options.bf16 else 'float32'}"
          f"{'' if options.deterministic or options.peer else ', --no_deterministic'}: "
          f"{step * 1e3:.0f} ms per step ({BATCH[options.model] / step:.1f} img/s, profiler on)")
    for op, ms in rows.most_common(options.rows):
        print(f"  {op:48s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
