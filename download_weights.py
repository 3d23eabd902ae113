"""Download release weights: the original project's (default), or a release of this project (--url).

    python download_weights.py                        # the original's CIFAR-10 WRN-16-4, converted into weights/
    python download_weights.py --dataset cifar100     # its CIFAR-100 WRN-16-4
    python download_weights.py --url /mnt/shared/release --dataset cifar10 --wrn_N 2 --wrn_k 4
    python download_weights.py --make_manifest weights      # maintainers: then upload weights/* as a release
"""

from snapshot_ensembles import downloads, original_release, output
from snapshot_ensembles.cli import (ORIGINAL_MODELS, ArgumentParser, add_model_flags, add_output_flags, model_config,
                                    parse, positive_float, run_cli)
from snapshot_ensembles.naming import DATASETS


def build_parser():
    parser = ArgumentParser(
        description="Fetch the weights of one model into --weights_dir. By default from the original project's "
                    f"GitHub release ({original_release.DEFAULT_GITHUB_REPO}: Keras 1 files of WRN-16-4, verified, "
                    "converted to .weights.h5, with the original's ensemble weights); with --url from a release of "
                    "this project (manifest.json with every file's size and SHA-256; an interrupted download "
                    "resumes when run again).")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10",
                        help="dataset the weights were trained on (default: %(default)s)")
    add_model_flags(parser, ORIGINAL_MODELS)
    parser.add_argument("--weights_dir", default="weights", help="where files go (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of the same model in --weights_dir that is not the release's "
                             "(your own training), and ensemble weights you fitted")
    github = parser.add_argument_group("the original's release on GitHub (default source)")
    github.add_argument("--github_repo", default=None,
                        help=f"OWNER/NAME (default: ${original_release.GITHUB_REPO_ENV}, else "
                             f"{original_release.DEFAULT_GITHUB_REPO})")
    github.add_argument("--github_api", default=None,
                        help=f"GitHub REST API base URL (default: ${original_release.GITHUB_API_ENV}, else "
                             f"{original_release.DEFAULT_GITHUB_API}); ${original_release.TOKEN_ENV}, when set, "
                             "is sent as the token")
    ours = parser.add_argument_group("a release of this project")
    ours.add_argument("--url", default=None,
                      help="release location: https:// URL, file:// URL or folder; http:// only for localhost "
                           f"(default: ${downloads.RELEASE_URL_ENV}; unset, the original's GitHub release is used)")
    ours.add_argument("--make_manifest", metavar="DIR", default=None,
                      help="instead of downloading, write DIR/manifest.json (name, size, sha256 of every file in "
                           "DIR) so that DIR can be published as a release")
    parser.add_argument("--timeout", type=positive_float, default=downloads.DEFAULT_TIMEOUT,
                        help="seconds a connection may stall before giving up (default: %(default)s)")
    add_output_flags(parser)
    return parser


def main(argv=None):
    args = parse(build_parser(), argv)
    if args.make_manifest is not None:
        path, count = downloads.make_manifest(args.make_manifest)
        output.always(f"wrote {path}: {count} files")
        return
    network = model_config(args)
    prefix = network.prefix(args.dataset)
    url = downloads.release_url(args.url)
    if url:
        results = downloads.download_model(prefix, args.weights_dir, url, timeout=args.timeout,
                                           overwrite=args.overwrite)
        fetched = sum(1 for _, outcome in results if outcome == "downloaded")
        output.always(f"{prefix}: {len(results)} files verified in {args.weights_dir} "
                      f"({fetched} downloaded, {len(results) - fetched} already present)")
        return
    for line in original_release.install(network, args.dataset, args.weights_dir, api=args.github_api,
                                         repo=args.github_repo, overwrite=args.overwrite, timeout=args.timeout):
        output.always(line)  # what was installed, replaced or left to delete by hand: the command's result


if __name__ == "__main__":
    run_cli(main)
