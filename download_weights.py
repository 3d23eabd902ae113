"""Download the original project's release weights from GitHub, verified and converted.

    python download_weights.py                        # the original's CIFAR-10 WRN-16-4, converted into weights/
    python download_weights.py --dataset cifar100     # its CIFAR-100 WRN-16-4
"""

from snapshot_ensembles import output, release
from snapshot_ensembles.cli import (ArgumentParser, add_model_flags, add_output_flags, model_config,
                                    parse, positive_float, run_cli)
from snapshot_ensembles.config.naming import CIFAR_DATASETS


def build_parser():
    parser = ArgumentParser(
        description="Fetch the weights of one model into --weights_dir from the original project's GitHub "
                    f"release ({release.DEFAULT_GITHUB_REPO}: Keras 1 files of WRN-16-4, verified, "
                    "converted to .weights.h5, with the original's ensemble weights).")
    parser.add_argument("--dataset", choices=CIFAR_DATASETS, default="cifar10",
                        help="dataset the weights were trained on (default: %(default)s)")
    add_model_flags(parser)
    parser.add_argument("--weights_dir", default="weights", help="where files go (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of the same model in --weights_dir that is not the release's "
                             "(your own training), and ensemble weights you fitted")
    github = parser.add_argument_group("the release on GitHub")
    github.add_argument("--github_repo", default=None,
                        help=f"OWNER/NAME (default: ${release.GITHUB_REPO_ENV}, else "
                             f"{release.DEFAULT_GITHUB_REPO})")
    github.add_argument("--github_api", default=None,
                        help=f"GitHub REST API base URL (default: ${release.GITHUB_API_ENV}, else "
                             f"{release.DEFAULT_GITHUB_API}); ${release.TOKEN_ENV}, when set, "
                             "is sent as the token")
    parser.add_argument("--timeout", type=positive_float, default=release.DEFAULT_TIMEOUT,
                        help="seconds a connection may stall before giving up (default: %(default)s)")
    add_output_flags(parser)
    return parser


def main(argv=None):
    args = parse(build_parser(), argv)
    network = model_config(args)
    for line in release.install(network, args.dataset, args.weights_dir, api=args.github_api,
                                         repo=args.github_repo, overwrite=args.overwrite, timeout=args.timeout):
        output.always(line)  # what was installed, replaced or left to delete by hand: the command's result


if __name__ == "__main__":
    run_cli(main)
