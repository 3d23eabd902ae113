"""Convert the original project's Keras 1.1.1 release weights into Keras 3 `.weights.h5` files.

    python convert_weights.py --dataset cifar10 --model wrn --wrn_N 2 --wrn_k 4
    python convert_weights.py --dataset cifar10 --model dn --dn_blocks 1 weights/DenseNet-CIFAR10-40-12-Best.h5

With no FILE, converts every `{prefix}-Best.h5` and `{prefix}-<i>.h5` in --weights_dir; each
`NAME.h5` becomes `NAME.weights.h5` beside it. For the original release's prefixes (WRN-CIFAR10-16-4,
WRN-CIFAR100-16-4) it also writes the original's ensemble weights, so `--optimize 0` works.
"""

import os

from snapshot_ensembles import backend_start, output
from snapshot_ensembles.cli import (ArgumentParser, add_model_flags, add_output_flags, model_config,
                                    parse, run_cli)
from snapshot_ensembles.config.naming import CIFAR_DATASETS
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.models.build import build_model, nb_classes_of
from snapshot_ensembles.release import install_ensemble_weights
from snapshot_ensembles.training.run_folder import RunFolder


def build_parser():
    parser = ArgumentParser(
        prog="convert_weights.py",
        description="Convert Keras 1 (Theano) weight files of the original Snapshot Ensembles release "
                    "into Keras 3 .weights.h5 files for the matching network.")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="Keras 1 weight files (default: every {prefix}-Best.h5 and {prefix}-<i>.h5 "
                             "in --weights_dir)")
    parser.add_argument("--dataset", choices=CIFAR_DATASETS, default="cifar10",
                        help="dataset the weights were trained on; sets the class count (default: %(default)s)")
    add_model_flags(parser)
    parser.add_argument("--weights_dir", default="weights",
                        help="where to look for files when no FILE is given (default: %(default)s)")
    parser.add_argument("--backend", choices=("theano", "tensorflow"), default="theano",
                        help="Keras 1 backend that trained the weights: Theano kernels get flipped, "
                             "the original release used Theano (default: %(default)s)")
    parser.add_argument("--dim_ordering", choices=("th", "tf"), default="th",
                        help="Keras 1 image_dim_ordering of the weights (default: %(default)s, "
                             "as in the original release)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing .weights.h5 files")
    add_output_flags(parser)
    return parser


def release_files(weights_dir, prefix):
    """`{prefix}-Best.h5`, then `{prefix}-1.h5`, `{prefix}-2.h5`, ... present in `weights_dir`."""
    if not os.path.isdir(weights_dir):
        raise UserError(f"--weights_dir {weights_dir} is not a folder: create it and put the original's .h5 files "
                        "there, or pass the folder that holds them")
    folder = RunFolder(weights_dir, prefix)
    found = folder.keras1_files()
    if not found:
        raise UserError(f"no Keras 1 weight files for {prefix} in {weights_dir}: expected "
                        f"{os.path.basename(folder.keras1_file('Best'))} and "
                        f"{os.path.basename(folder.keras1_file(1))} ... (pass FILE to convert other names)")
    return [found[key] for key in sorted(found, key=lambda key: (key != "Best", key if key != "Best" else 0))]


def output_path(path):
    stem = path[:-len(".h5")] if path.endswith(".h5") else path
    return stem + ".weights.h5"


def main(argv=None):
    args = parse(build_parser(), argv)
    network = model_config(args)
    nb_classes = nb_classes_of(args.dataset)
    prefix = network.prefix(args.dataset)
    sources = args.files or release_files(args.weights_dir, prefix)

    # Every refusal that needs no conversion comes before any file is written.
    for source in sources:
        if source.endswith(".weights.h5"):
            raise UserError(f"{source} is named like a Keras 3 weight file: nothing to convert")
    targets = [output_path(source) for source in sources]
    existing = [target for target in targets if os.path.exists(target)]
    if existing and not args.overwrite:
        raise UserError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
                        "pass --overwrite to replace")

    # Keras loads only now, so that flag and file-name errors answer at once; its start-up lines hidden.
    backend_start.start()
    from snapshot_ensembles.release.legacy import convert_files

    label, hint = network.describe(nb_classes)
    model = build_model(network, nb_classes)  # dropout as in training (WRN 0.0, DenseNet 0.2): no weights
    convert_files(model, sources, targets, backend=args.backend, dim_ordering=args.dim_ordering,
                  model_label=label, hint=hint)
    for source, target in zip(sources, targets):
        output.say(f"wrote {target} (from {source}, {label})")
    if not args.files:  # the release files of a prefix: the original's ensemble weights go with them
        note = install_ensemble_weights(args.weights_dir, prefix, args.overwrite)
        if note:
            output.always(note)


if __name__ == "__main__":
    run_cli(main)
