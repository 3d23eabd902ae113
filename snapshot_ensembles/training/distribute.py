"""Training on several devices or machines: `--distribute {none,mirrored,multiworker}` (README "Scaling out").

`mirrored`: every device of this machine holds a copy of the model and takes a slice of each batch
(TensorFlow's MirroredStrategy; on JAX, Keras's DataParallel). `multiworker`: several machines,
TensorFlow's MultiWorkerMirroredStrategy, configured by `TF_CONFIG`; only the chief writes files.
docs/design.md "Scaling out" says why the batch is global and BatchNormalization synchronised.

This module imports no TensorFlow or Keras at load time, so that flag and TF_CONFIG errors answer
before TensorFlow starts.
"""

import contextlib
import dataclasses
import json
import os

from snapshot_ensembles.errors import UserError

TF_CONFIG = "TF_CONFIG"


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in a multi-worker cluster, read from TF_CONFIG."""

    task_type: str
    index: int
    nb_workers: int  # chief included
    has_chief: bool = False

    @property
    def is_chief(self):
        # TensorFlow's convention: the "chief" task, or worker 0 when the cluster names no chief.
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self.has_chief)


def parse_tf_config(text):
    """The Task that TF_CONFIG describes; UserError, saying what is wrong, for anything malformed."""
    example = ('for example {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except ValueError as err:
        raise UserError(f"{TF_CONFIG} is not valid JSON ({err}): set it to the cluster and this machine's task, "
                        f"{example}") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError(f"{TF_CONFIG} needs a \"cluster\" and a \"task\" object: {example}")
    for job, addresses in cluster.items():
        if job not in ("worker", "chief"):
            raise UserError(f"{TF_CONFIG} has a {job!r} job, but MultiWorkerMirroredStrategy runs only "
                            f"\"worker\" tasks (and at most one \"chief\"): {example}")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)):
            raise UserError(f"{TF_CONFIG}'s cluster {job!r} must be a non-empty list of \"host:port\" "
                            f"addresses, got {json.dumps(addresses)}")
    if "worker" not in cluster and "chief" not in cluster:
        raise UserError(f"{TF_CONFIG}'s cluster lists no workers: {example}")
    if len(cluster.get("chief", [])) > 1:
        raise UserError(f"{TF_CONFIG}'s cluster has {len(cluster['chief'])} chiefs; there can be one at most")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise UserError(f"{TF_CONFIG}'s task type {task_type!r} is not a job of its cluster "
                        f"({', '.join(sorted(cluster))})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise UserError(f"{TF_CONFIG}'s task index {index!r} is out of range: its cluster has "
                        f"{len(cluster[task_type])} {task_type!r} address(es), indexed from 0")
    nb_workers = sum(len(addresses) for addresses in cluster.values())
    return Task(task_type, index, nb_workers, has_chief="chief" in cluster)


def check_flags(device_config):
    """The multi-worker Task that TF_CONFIG describes, or None: checked before TensorFlow starts."""
    if device_config.distribute != "multiworker":
        return None
    text = os.environ.get(TF_CONFIG, "").strip()
    if not text:
        raise UserError(f"--distribute multiworker needs the {TF_CONFIG} environment variable, which lists the "
                        "machines and says which one this is (README: Scaling out); for several devices of "
                        "one machine use --distribute mirrored")
    return parse_tf_config(text)


class WorkerLost(UserError):
    """Another worker of a multi-worker run stopped: this one cannot go on alone."""

    exit_code = 1


def is_chief(task):
    """Whether this process writes the run's files: always, except on the non-chief workers."""
    return task is None or task.is_chief


class Distribution:
    """The strategy in force: `scope()` to build and compile the model in, and who writes files."""

    def __init__(self, mode, backend, strategy=None, devices=(), task=None):
        self.mode = mode
        self.backend = backend
        self.strategy = strategy  # tf.distribute.Strategy on TensorFlow, else None
        self.devices = list(devices)
        self.task = task
        self.is_chief = is_chief(task)

    @property
    def replicas(self):
        if self.strategy is not None:
            return self.strategy.num_replicas_in_sync
        return max(1, len(self.devices))

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def prepare_model(self, model):
        """Synchronised BatchNormalization under tf.distribute: statistics of the global batch, not a slice."""
        if self.strategy is None or self.replicas == 1:
            return model
        from snapshot_ensembles.models.build import batch_norm_layers

        for layer in batch_norm_layers(model):
            layer.synchronized = True  # read when fit traces the train step
        return model

    @property
    def engine(self):
        if self.backend == "jax":
            return "JAX DataParallel"
        return "MirroredStrategy" if self.mode == "mirrored" else "MultiWorkerMirroredStrategy"

    def describe(self, batch_size):
        if self.mode == "none":
            return None
        if self.mode == "mirrored":
            what = f"{self.engine} over {self.replicas} device(s) ({', '.join(self.devices)})"
        else:
            role = "chief" if self.is_chief else "non-chief: writes no files"
            what = (f"MultiWorkerMirroredStrategy, {self.task.nb_workers} workers, {self.replicas} replicas; "
                    f"this is {self.task.task_type} {self.task.index} ({role})")
        per_replica = batch_size / self.replicas
        per_replica = f"{per_replica:g}" if per_replica == int(per_replica) else f"about {per_replica:.1f}"
        return f"Distributed training: {what}; global batch {batch_size}, {per_replica} per replica"

    def check_even_batches(self, batch_size, sizes):
        """UserError, with a --batch_size that works, unless every batch (each data split's last, partial
        one included) splits evenly over the replicas: JAX shards evenly, and tf.distribute's synchronised
        BatchNormalization fails on slices of different sizes. `sizes`: a split's name -> its images."""
        n = self.replicas
        if self.mode == "none" or n == 1:
            return

        def fits(batch):
            return batch % n == 0 and all(size % batch % n == 0 for size in sizes.values())

        if batch_size % n:
            problem = f"--batch_size {batch_size} does not divide by {n}"
        else:
            uneven = next(((name, size) for name, size in sizes.items() if size % batch_size % n), None)
            if uneven is None:
                return
            name, size = uneven
            problem = (f"the last batch of the {name} ({size} images, --batch_size {batch_size}) has "
                       f"{size % batch_size}")
        # A batch size that fits exists exactly when every split's size divides by n (then n itself fits).
        indivisible = next(((name, size) for name, size in sizes.items() if size % n), None)
        if indivisible is None:
            candidates = [b for b in range(n, 4 * batch_size + n, n) if fits(b)]
            hint = f"use for example --batch_size {min(candidates, key=lambda b: abs(b - batch_size))}"
        else:
            name, size = indivisible
            hint = (f"no --batch_size can, since the {name} has {size} images, not a multiple of {n}: train on a "
                    "number of devices that divides every split's size (CUDA_VISIBLE_DEVICES, --cpu_devices), or "
                    "change the split sizes with --val_split")
        raise UserError(f"{self.engine} splits every batch evenly over its {n} devices, but {problem}: {hint}")

    def lost_worker(self, err):
        """The WorkerLost error that `err`, raised by fit, means; None if it means something else."""
        if self.mode != "multiworker":
            return None
        import tensorflow as tf

        if not isinstance(err, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                                tf.errors.DeadlineExceededError)):
            return None
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return WorkerLost(f"lost contact with another worker of the cluster ({detail}), so this one stopped too; "
                          "the chief keeps its state of the last completed epoch: rerun the same command on every "
                          "machine to resume (every worker must see the chief's --weights_dir, for example on a "
                          "shared file system), or start over on all of them with --no_resume")

    def agree_on(self, value, what):
        """Raise UserError on every worker unless all workers of a multi-worker run hold the same integer."""
        if self.mode != "multiworker" or self.task.nb_workers == 1:
            return
        import tensorflow as tf

        # Sum and sum of squares over the replicas: every worker reaches the same verdict (the variance is 0
        # iff all are equal). Each replica contributes, so that the collective has all its members.
        try:
            per_replica = self.strategy.run(lambda: tf.constant([float(value), float(value) ** 2]))
            total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
        except tf.errors.OpError as err:  # a worker that stopped before training (bad flags, killed)
            raise (self.lost_worker(err) or err) from None
        n = self.replicas
        if abs(n * total[1] - total[0] ** 2) > 1e-6 * max(1.0, total[1] * n):
            raise UserError(f"the workers disagree about {what}: every worker must see the same --weights_dir "
                            "content (put it on a shared file system), or start over on all of them with "
                            "--no_resume")


def setup(device_config, task):
    """The Distribution for `device_config` (a config.DeviceConfig); before any other TensorFlow op runs."""
    import keras

    backend, mode, cpu_devices = keras.backend.backend(), device_config.distribute, device_config.cpu_devices
    if mode == "none":
        return Distribution("none", backend)
    if backend == "torch":
        raise UserError(f"--distribute {mode} is not available on the torch backend (Keras 3 has no "
                        "distribution API for PyTorch): use KERAS_BACKEND=tensorflow for mirrored and "
                        "multiworker, or KERAS_BACKEND=jax for mirrored")
    if backend == "jax" and mode == "multiworker":
        raise UserError("--distribute multiworker needs the TensorFlow backend (MultiWorkerMirroredStrategy): "
                        "use KERAS_BACKEND=tensorflow, or --distribute mirrored for the devices of one "
                        "machine on JAX")
    if backend == "jax":
        if cpu_devices:  # read when JAX first lists its devices, which Keras has not done yet at this point
            flag = f"--xla_force_host_platform_device_count={cpu_devices}"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        import jax

        devices = jax.devices("cpu") if cpu_devices else jax.devices()
        if cpu_devices and len(devices) != cpu_devices:
            raise UserError(f"--cpu_devices {cpu_devices}: JAX had already started with {len(devices)} CPU "
                            f"device(s); set XLA_FLAGS=--xla_force_host_platform_device_count="
                            f"{cpu_devices} before starting Python")
        names = [f"{d.platform}:{d.id}" for d in devices]
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=names))
        return Distribution("mirrored", "jax", devices=names)
    if backend != "tensorflow":
        raise UserError(f"--distribute {mode} needs the tensorflow or jax backend, not {backend}")
    import tensorflow as tf

    if mode == "mirrored":
        devices = None
        if cpu_devices:
            cpu, logical = tf.config.list_physical_devices("CPU")[0], tf.config.LogicalDeviceConfiguration()
            try:
                tf.config.set_logical_device_configuration(cpu, [logical] * cpu_devices)
            except RuntimeError as err:  # the runtime had started: only a library user can get here
                raise UserError(f"--cpu_devices {cpu_devices}: {err}") from None
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution("mirrored", "tensorflow", strategy, devices=_short_names(strategy))
    _patch_keras_for_multi_worker()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise UserError(f"cannot start MultiWorkerMirroredStrategy from {TF_CONFIG} "
                        f"({str(err).splitlines()[0][:300]}): check the addresses and this task's index") from None
    return Distribution("multiworker", "tensorflow", strategy, devices=_short_names(strategy), task=task)


def _short_names(strategy):
    """`CPU:0` for `/job:localhost/replica:0/task:0/device:CPU:0`."""
    return [name.rpartition("device:")[2] for name in strategy.extended.worker_devices]


def _patch_keras_for_multi_worker():
    """Two fixes that Keras 3's TensorFlow trainer needs to fit under MultiWorkerMirroredStrategy
    (keras-team/keras#20585; measured with Keras 3.15 / TensorFlow 2.21): the metrics are built from this
    worker's first replica's slice of a first batch instead of a collective reduction of it, and scalar
    losses and metrics are averaged across the workers with axis=None, on which axis=0 fails. Skipped if
    a Keras release renames what they wrap.
    """
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "TensorFlowTrainer")
    if getattr(trainer, "_snapshot_multi_worker_patched", False) or not all(hasattr(trainer, n) for n in needed):
        return
    import tensorflow as tf

    multi_worker = trainer._collective_all_reduce_multi_worker
    original_reduce = trainer.reduce_per_replica
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if not (multi_worker(strategy) and reduction in ("auto", "mean")):
            return original_reduce(values, strategy, reduction)

        def reduce_one(value):
            if isinstance(value, (tf.Tensor, tf.distribute.DistributedValues)) and value.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction)

        return tf.nest.map_structure(reduce_one, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or data_batch is not None or not multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            batch = next(batches)
            data_batch = tf.nest.map_structure(
                lambda value: strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues) else value, batch)
            break
        return original_build(self, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer._snapshot_multi_worker_patched = True
