"""The original project's release on GitHub: find its weight files, download, verify, convert, record.

Its part: `legacy` (Keras 1.1.1 weight files: read and convert).

The Keras 1 files of titu1994/Snapshot-Ensembles are found through GitHub's releases API, downloaded into
the Keras cache with a size cap, a timeout and https-only redirects, verified, and converted into the
weights folder with a record of what was installed (docs/design.md, "The original's release weights").
"""

import collections
import contextlib
import datetime
import errno
import filecmp
import http.client
import ipaddress
import itertools
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request

from snapshot_ensembles import output
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import FileWriteError, atomic_path, sha256_of, write_json
from snapshot_ensembles.training.run_folder import RunFolder

DEFAULT_GITHUB_API = "https://api.github.com"
GITHUB_API_ENV = "SNAPSHOT_GITHUB_API"
DEFAULT_GITHUB_REPO = "titu1994/Snapshot-Ensembles"
GITHUB_REPO_ENV = "SNAPSHOT_GITHUB_REPO"
TOKEN_ENV = "GITHUB_TOKEN"
RELEASE_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release_data")
MAX_API_BYTES = 16 << 20  # a page of 100 releases with their assets is well below this
DEFAULT_TIMEOUT = 30.0
CHUNK_SIZE = 1 << 16
USER_AGENT = "download_weights.py (Snapshot Ensembles for Keras 3)"


def github_api(flag=None):
    api = (flag or os.environ.get(GITHUB_API_ENV) or DEFAULT_GITHUB_API).rstrip("/")
    parsed = urllib.parse.urlparse(api)
    if parsed.username is not None or parsed.password is not None:
        raise UserError(f"--github_api {shown_url(api)} holds a user name or password: pass a token in "
                        f"${TOKEN_ENV} instead (the URL would be echoed in messages)")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--github_api {api!r} is not an https:// URL (for example {DEFAULT_GITHUB_API})")
    check_transport(api)
    return api


def github_repo(flag=None):
    repo = flag or os.environ.get(GITHUB_REPO_ENV) or DEFAULT_GITHUB_REPO
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+", repo):
        raise UserError(f"--github_repo {repo!r} is not of the form OWNER/NAME (for example {DEFAULT_GITHUB_REPO})")
    return repo


def check_transport(url):
    """Plain http would let anyone on the path swap the files together with their checksums."""
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme == "https" or host == "localhost":
        return
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return
    raise UserError(f"refusing plain http:// to {host or url}: the release (and its checksums) could be "
                    f"altered in transit; use https://, or http:// only for 127.0.0.1/localhost/::1")


def shown_url(url):
    """`url` without the user name and password it may hold: never echo a secret."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username is None and parsed.password is None:
        return url
    return urllib.parse.urlunsplit(parsed._replace(netloc="***@" + parsed.netloc.rpartition("@")[2]))


def _origin(url):
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme, parsed.hostname, parsed.port


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub release assets redirect to a CDN), but never down to plain http, and
    never with the token to another host: it travels as an unredirected header, put back on a redirect
    within the same origin only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_transport(newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        token = req.unredirected_hdrs.get("Authorization")
        if new is not None and token and _origin(newurl) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", token)
        return new


def _within(seconds, work):
    """work()'s result, or TimeoutError once `seconds` have passed in all (urllib's timeout bounds each socket
    operation only). It runs in a daemon thread, so that an abandoned one cannot keep the process alive."""
    outcome = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no complete answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def error_reason(err):
    """The useful words of a socket/HTTP error: 'Connection refused', 'timed out', ..."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def shipped_ensemble_weights(prefix):
    """Path of the original's ensemble-weight JSON for `prefix` in release_data/, or None."""
    path = os.path.join(RELEASE_DATA, os.path.basename(RunFolder("", prefix).ensemble_json))
    return path if os.path.isfile(path) else None


def install_ensemble_weights(weights_dir, prefix, overwrite=False):
    """Copy the original's ensemble weights for `prefix` into `weights_dir`, keeping a different file there
    (weights the user fitted with --optimize 1) unless `overwrite`; returns a note or None."""
    shipped = shipped_ensemble_weights(prefix)
    if shipped is None:
        return None
    target = RunFolder(weights_dir, prefix).ensemble_json
    if os.path.isfile(target):
        if filecmp.cmp(shipped, target, shallow=False):
            return None
        if not overwrite:
            return (f"kept {target}, which differs from the original's ensemble weights (fitted with "
                    "--optimize 1?); --overwrite replaces it")
    with atomic_path(target) as tmp:
        shutil.copyfile(shipped, tmp)
    return f"wrote {target} (the original's ensemble weights)"


# ----------------------------------------------------------------------------- the GitHub API


Asset = collections.namedtuple("Asset", "name url size sha256")  # sha256: from GitHub's `digest`, or None
Release = collections.namedtuple("Release", "tag page assets")


def list_releases(api, repo, timeout):
    """The repository's published releases, newest first, with their assets, within `timeout` s in all."""
    url = f"{api}/repos/{repo}/releases?per_page=100"
    check_transport(url)
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json",
                                                   "X-GitHub-Api-Version": "2022-11-28", "User-Agent": USER_AGENT})
    token = os.environ.get(TOKEN_ENV)
    if token:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(SafeRedirects)

    def fetch():
        with opener.open(request, timeout=timeout) as response:
            return response.read(MAX_API_BYTES + 1)

    try:
        body = _within(timeout, fetch)
    except urllib.error.HTTPError as err:
        err.close()
        raise UserError(_http_error_message(err, url, repo, bool(token))) from None
    except TimeoutError:
        raise UserError(f"the GitHub API at {api} did not answer within --timeout {timeout:g} s. "
                        f"{_by_hand(repo)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = error_reason(err.reason if isinstance(err, urllib.error.URLError) else err)
        raise UserError(f"cannot reach the GitHub API at {api} ({reason}). {_by_hand(repo)}") from None
    try:
        return _parse_releases(json.loads(body[:MAX_API_BYTES]))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        what = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:300]
        raise UserError(f"unexpected answer from {url}: {what}. Check --github_api (or ${GITHUB_API_ENV})") from None


def _http_error_message(err, url, repo, has_token):
    if err.code in (403, 429) and err.headers.get("X-RateLimit-Remaining") == "0":
        reset = err.headers.get("X-RateLimit-Reset", "")
        when = ""
        if reset.isdigit():
            when = datetime.datetime.fromtimestamp(int(reset), datetime.timezone.utc).strftime(" at %H:%M UTC")
        remedy = ("the limit of the token in GITHUB_TOKEN is used up too: wait" if has_token else
                  "set GITHUB_TOKEN to a GitHub access token (a token without any scope will do) for a "
                  "higher limit, or wait")
        return f"GitHub API rate limit exceeded (HTTP {err.code} from {url}); it resets{when}: {remedy}"
    if err.code == 401:
        return f"GitHub refused the token in GITHUB_TOKEN (HTTP 401 from {url}): renew it or unset GITHUB_TOKEN"
    if err.code == 404:
        return (f"GitHub has no repository {repo} ({url} answered 404): check --github_repo "
                f"(or ${GITHUB_REPO_ENV}); the original is {DEFAULT_GITHUB_REPO}")
    return f"{url} answered HTTP {err.code} {err.reason}. {_by_hand(repo)}"


def _by_hand(repo):
    return (f"Without network: download the .h5 files from https://github.com/{repo}/releases by hand, put "
            "them into the weights folder and run `python convert_weights.py` with the same --dataset and model "
            "flags")


def _parse_releases(obj):
    if not isinstance(obj, list):
        raise ValueError("expected a list of releases")
    releases = []
    for item in obj:
        if not isinstance(item, dict) or not isinstance(item.get("assets"), list):
            raise ValueError("a release without an 'assets' list")
        if item.get("draft"):
            continue
        assets = []
        for asset in item["assets"]:
            if not isinstance(asset, dict):
                raise ValueError(f"an asset that is not an object: {asset!r:.200}")
            name, size, url = asset.get("name"), asset.get("size"), asset.get("browser_download_url")
            if not (isinstance(name, str) and isinstance(url, str) and isinstance(size, int)
                    and not isinstance(size, bool) and size >= 0):
                raise ValueError(f"an asset without a valid name, size and browser_download_url: {asset!r:.200}")
            digest = asset.get("digest")
            match = re.fullmatch(r"sha256:([0-9a-fA-F]{64})", digest) if isinstance(digest, str) else None
            assets.append(Asset(name, url, size, match.group(1).lower() if match else None))
        releases.append(Release(str(item.get("tag_name", "")), str(item.get("html_url", "")), assets))
    return releases


def release_members(releases, prefix, repo):
    """(release, [Best, 1, ..., M] assets) of the newest release holding `prefix`'s weight files.

    M is the original's member count when its ensemble weights ship with us (5 for WRN-16-4), else the
    highest snapshot number present; a missing file is an error naming it.
    """
    pattern = re.compile(re.escape(prefix) + r"-(Best|[1-9]\d{0,17})\.h5")
    for release in releases:
        found = {match.group(1): asset for asset in release.assets if (match := pattern.fullmatch(asset.name))}
        if not found:
            continue
        numbers = [int(tag) for tag in found if tag != "Best"]
        count = 1 + max(numbers, default=0)
        if shipped_ensemble_weights(prefix) is not None:
            with open(shipped_ensemble_weights(prefix)) as fh:
                count = len(json.load(fh)["best_weights"])
        # Counted, not listed: an asset named snapshot 10^9 must not make a list of 10^9 names.
        nb_missing = ("Best" not in found) + count - 1 - sum(1 for number in numbers if number < count)
        if nb_missing:
            tags = itertools.chain(["Best"] if "Best" not in found else [],
                                   (str(i) for i in itertools.count(1) if str(i) not in found))
            missing = [f"{prefix}-{tag}.h5" for tag in itertools.islice(tags, min(nb_missing, 3))]
            more = f" and {nb_missing - len(missing)} more" if nb_missing > len(missing) else ""
            raise UserError(f"the release {release.tag or release.page} of {repo} lacks {', '.join(missing)}{more} "
                            f"(it holds {_listing(sorted(asset.name for asset in release.assets))})")
        return release, [found[tag] for tag in ["Best", *map(str, range(1, count))]]
    member = re.compile(r"(.+)-(?:Best|\d+)\.h5")
    held = sorted({m.group(1) for r in releases for a in r.assets if (m := member.fullmatch(a.name))})
    raise UserError(f"no release of {repo} holds weight files of {prefix} ({prefix}-Best.h5 ...); its releases "
                    f"hold: {_listing(held, 'no weight files')}. The original published WRN-16-4 only "
                    "(--model wrn --wrn_N 2 --wrn_k 4, --dataset cifar10 or cifar100)")


def _listing(names, empty="no files"):
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return shown[:1000] or empty


# ----------------------------------------------------------------------------- the weights folder


def read_record(weights_dir, prefix):
    """{Keras 3 file name: record entry} of an earlier install; {} when there is none or it is unreadable."""
    try:
        with open(RunFolder(weights_dir, prefix).release_record) as fh:
            files = json.load(fh)["files"]
        return {entry["converted_to"]: entry for entry in files}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def own_run_files(weights_dir, prefix, record):
    """Files of `prefix` in `weights_dir` that an earlier install did not write: the user's own run."""
    folder = RunFolder(weights_dir, prefix)
    records = [path for path in [folder.run_record, folder.history, folder.state] if os.path.isfile(path)]
    return sorted(records + [path for path in folder.member_files().values()
                             if (entry := record.get(os.path.basename(path))) is None
                             or sha256_of(path) != entry.get("converted_sha256")])


def install(model_config, dataset, weights_dir, api=None, repo=None, overwrite=False, timeout=DEFAULT_TIMEOUT):
    """Download, verify and convert the original release's files of the network `model_config` (a
    config.ModelConfig) trained on `dataset` into `weights_dir`; returns the lines to print."""
    prefix = model_config.prefix(dataset)
    api, repo = github_api(api), github_repo(repo)
    record = read_record(weights_dir, prefix)
    own = own_run_files(weights_dir, prefix, record)
    if own and not overwrite:
        shown = ", ".join(os.path.basename(p) for p in own[:4]) + (" ..." if len(own) > 4 else "")
        raise UserError(f"{weights_dir} holds a run of {prefix} that is not the release's ({shown}): the release "
                        "would replace it. Use another --weights_dir, or pass --overwrite to replace that run")
    release, assets = release_members(list_releases(api, repo, timeout), prefix, repo)
    for asset in assets:
        check_transport(asset.url)

    lines = []
    run = RunFolder(weights_dir, prefix)
    targets = [run.member(key) for key in ["Best", *range(1, len(assets))]]
    if all(_installed(record, asset, target) for asset, target in zip(assets, targets)):
        lines.append(f"{prefix}: the {len(assets)} release files are already converted in {weights_dir} and "
                     "unchanged in the release; nothing to download")
    else:
        folder = download_folder(repo, release.tag)
        sources = [_download(asset, folder, repo, timeout) for asset in assets]
        for asset, (_, sha) in zip(assets, sources):
            previous = next((e for e in record.values() if e.get("name") == asset.name), None)
            if previous and previous.get("sha256") != sha:
                lines.append(f"{asset.name} changed in the release since the last download "
                             f"(SHA-256 {previous.get('sha256')} -> {sha})")
        lines += _convert(model_config, dataset, weights_dir, assets, sources, targets, repo)
        entries = [{"name": asset.name, "url": asset.url, "size": asset.size, "sha256": sha,
                    "converted_to": os.path.basename(target), "converted_sha256": sha256_of(target)}
                   for asset, (_, sha), target in zip(assets, sources, targets)]
        write_json(run.release_record, {"repository": repo, "release": release.tag, "release_page": release.page,
                                        "files": entries})
        lines.append(f"recorded the sources in {run.release_record}")
    for path in own:  # with --overwrite: the replaced run's record, state, history and extra snapshots
        if path not in targets and os.path.exists(path):
            try:
                os.remove(path)
                lines.append(f"removed {path} (of the replaced run)")
            except OSError as err:
                lines.append(f"could not remove {path} ({error_reason(err)}) of the replaced run: delete it by hand")
    note = install_ensemble_weights(weights_dir, prefix, overwrite)
    if note:
        lines.append(note)
    return lines


def _installed(record, asset, target):
    """Whether `target` is the unchanged conversion of the unchanged `asset` (per the record)."""
    entry = record.get(os.path.basename(target))
    return (entry is not None and os.path.isfile(target) and entry.get("name") == asset.name
            and entry.get("url") == asset.url and entry.get("size") == asset.size
            and (asset.sha256 is None or entry.get("sha256") == asset.sha256)
            and sha256_of(target) == entry.get("converted_sha256"))


def download_folder(repo, tag):
    """Where the Keras 1 files go: the Keras cache ($KERAS_HOME, else ~/.keras), one folder per release."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    # The tag as one plain folder name: never hidden, never "." or ".." (a tag is the API's to choose).
    safe_tag = re.sub(r"[^A-Za-z0-9_.-]|^\.", "_", tag)
    return os.path.join(home, "snapshot-ensembles", repo.replace("/", "+"), safe_tag or "release")


def _download(asset, folder, repo, timeout):
    """(path, SHA-256) of a verified copy of `asset` in `folder`: a copy there of the listed size (and
    digest) is reused, anything else downloaded again."""
    path = os.path.join(folder, asset.name)
    digest = sha256_of(path) if os.path.isfile(path) and os.path.getsize(path) == asset.size else None
    if digest is None or asset.sha256 not in (None, digest):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the download folder {folder} ({error_reason(err)}): set KERAS_HOME "
                            "to a writable folder") from None
        try:
            with atomic_path(path) as tmp:
                _fetch(asset, tmp, repo, timeout)
        except FileWriteError as err:
            disk_full = err.reason in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
            hint = ("free some space there or set KERAS_HOME to another disk" if disk_full
                    else "set KERAS_HOME to a writable folder")
            raise FileWriteError(f"{err}: {hint}", reason=err.reason) from None
        digest = sha256_of(path)
        if asset.sha256 is not None and digest != asset.sha256:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            raise UserError(f"checksum mismatch for {shown_url(asset.url)}: its SHA-256 is {digest}, not "
                            f"{asset.sha256}, the digest GitHub lists; the download was deleted, run again to retry")
    output.say(f"{asset.name}: {asset.size} bytes, SHA-256 {digest}" + (" (GitHub's digest)" if asset.sha256 else ""))
    return path, digest


def _fetch(asset, path, repo, timeout):
    """Write the bytes of `asset` to `path`, never more than one past the listed size: a size mismatch
    or a transfer problem is a UserError, a failed write the OSError."""
    url = shown_url(asset.url)
    received = 0

    def network(action):
        try:
            return action()
        except urllib.error.HTTPError as err:
            err.close()
            raise UserError(f"{url} answered HTTP {err.code} {err.reason}. {_by_hand(repo)}") from None
        except TimeoutError:
            raise UserError(f"download of {url} stalled for --timeout {timeout:g} s after {received} bytes. "
                            f"{_by_hand(repo)}") from None
        except urllib.error.URLError as err:
            raise UserError(f"cannot download {url} ({error_reason(err.reason)}). {_by_hand(repo)}") from None
        except (OSError, http.client.HTTPException) as err:
            raise UserError(f"download of {url} broke off after {received} bytes ({error_reason(err)}). "
                            f"{_by_hand(repo)}") from None

    opener = urllib.request.build_opener(SafeRedirects)
    request = urllib.request.Request(asset.url, headers={"User-Agent": USER_AGENT})
    with network(lambda: opener.open(request, timeout=timeout)) as response, open(path, "wb") as out:
        while received <= asset.size:
            chunk = network(lambda: response.read(min(CHUNK_SIZE, asset.size + 1 - received)))
            if not chunk:
                break
            received += len(chunk)
            out.write(chunk)
    if received != asset.size:
        raise UserError(f"size mismatch for {url}: got {'more than ' if received > asset.size else ''}"
                        f"{received - (received > asset.size)} bytes, GitHub lists {asset.size}; the download was "
                        "deleted, run again to retry")


def _convert(model_config, dataset, weights_dir, assets, sources, targets, repo):
    from snapshot_ensembles.models.build import build_model, nb_classes_of
    from snapshot_ensembles.release.legacy import convert_files

    try:
        os.makedirs(weights_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the weights folder {weights_dir}: {error_reason(err)}") from None
    nb_classes = nb_classes_of(dataset)
    label, hint = model_config.describe(nb_classes)
    model = build_model(model_config, nb_classes)
    labels = [f"{asset.name} of the release of {repo}" for asset in assets]
    convert_files(model, [path for path, _ in sources], targets, model_label=label,
                  hint=f"it is not a Keras 1 weight file of this network ({hint})", labels=labels)
    return [f"wrote {target} (from {asset.name}, {label})" for asset, target in zip(assets, targets)]
