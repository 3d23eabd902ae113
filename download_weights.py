"""Download the released weights of one model, or publish a folder of weights as a release.

    python download_weights.py --dataset cifar10 --model wrn --wrn_N 2 --wrn_k 4
    python download_weights.py --dataset cifar100 --model dn --url file:///mnt/release --weights_dir weights
    python download_weights.py --make_manifest weights      # maintainers: then upload weights/* as a release
"""

from snapshot_ensembles import downloads
from snapshot_ensembles.cli import (ORIGINAL_MODELS, ArgumentParser, add_model_flags, check_model_flags, positive_float,
                                    run_cli)
from snapshot_ensembles.naming import DATASETS, model_prefix


def build_parser():
    parser = ArgumentParser(
        description="Fetch every release file of one model (Best, snapshots 1..M, ensemble weights, history) "
                    "into --weights_dir, verifying size and SHA-256 against the release's manifest.json. "
                    "An interrupted download resumes when run again.")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="required unless --make_manifest is given")
    add_model_flags(parser, ORIGINAL_MODELS)
    parser.add_argument("--url", default=None,
                        help="release location: https:// URL, file:// URL or folder; http:// only for "
                             f"localhost (default: ${downloads.RELEASE_URL_ENV}, else "
                             f"{downloads.DEFAULT_RELEASE_URL})")
    parser.add_argument("--weights_dir", default="weights", help="where files go (default: %(default)s)")
    parser.add_argument("--timeout", type=positive_float, default=downloads.DEFAULT_TIMEOUT,
                        help="seconds a connection may stall before giving up (default: %(default)s)")
    parser.add_argument("--make_manifest", metavar="DIR", default=None,
                        help="instead of downloading, write DIR/manifest.json (name, size, sha256 of every "
                             "file in DIR) so that DIR can be published as a release")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.make_manifest is not None:
        path, count = downloads.make_manifest(args.make_manifest)
        print(f"wrote {path}: {count} files")
        return
    if args.dataset is None:
        parser.error("the following arguments are required: --dataset (or --make_manifest DIR)")
    check_model_flags(args)
    prefix = model_prefix(args.dataset, args.model, args.wrn_N, args.wrn_k, args.dn_depth, args.dn_growth_rate)
    results = downloads.download_model(prefix, args.weights_dir, args.url, timeout=args.timeout)
    fetched = sum(1 for _, outcome in results if outcome == "downloaded")
    print(f"{prefix}: {len(results)} files verified in {args.weights_dir} "
          f"({fetched} downloaded, {len(results) - fetched} already present)")


if __name__ == "__main__":
    run_cli(main)
