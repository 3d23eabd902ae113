"""Fetch trained weights from a published release, and describe a folder of weights as a release.

A release is a base location (https:// URL, loopback http:// URL, file:// URL or local folder)
holding `manifest.json`:

    {"files": [{"name": "WRN-CIFAR10-16-4-Best.weights.h5", "size": 123, "sha256": "..."}, ...]}

and the listed files beside it. Every file is streamed to a hidden partial name in the weights
folder, resumed with an HTTP Range request after a cut connection, checked against the manifest's
size and SHA-256, and only then renamed to its final name: a final name never holds a partial or
corrupt file.

Standard library only, so the download script starts at once (no Keras/TensorFlow import).
"""

import http.client
import ipaddress
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from snapshot_ensembles import output
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import sha256_of, write_json
from snapshot_ensembles.run_folder import RunFolder

RELEASE_URL_ENV = "SNAPSHOT_RELEASE_URL"
MANIFEST_NAME = "manifest.json"
DEFAULT_TIMEOUT = 30.0
CHUNK_SIZE = 1 << 16
# A manifest lists a few dozen files; anything far larger is not a manifest.
MAX_MANIFEST_BYTES = 4 << 20


def release_url(url=None):
    """The release base: `--url`, else $SNAPSHOT_RELEASE_URL, else None (the original's GitHub release)."""
    return url or os.environ.get(RELEASE_URL_ENV) or None


def partial_name(name):
    """Hidden and never ending in `.weights.h5`, so neither Keras nor a manifest mistakes it for weights."""
    return f".{name}.download"


# ----------------------------------------------------------------------------- release sources


def open_release(url, timeout=DEFAULT_TIMEOUT):
    """An HttpRelease or FolderRelease for `url`; refuses plain http to anything but loopback."""
    parsed = urllib.parse.urlparse(url)
    scheme = parsed.scheme
    if scheme in ("http", "https"):
        check_transport(url)
        return HttpRelease(url, timeout)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"file:// URL {url} names host {parsed.netloc!r}; only local files can be read")
        return FolderRelease(urllib.request.url2pathname(parsed.path))
    # No scheme is a local path; a one-letter "scheme" is a Windows drive letter (C:\weights).
    if scheme == "" or len(scheme) == 1:
        return FolderRelease(url)
    raise UserError(f"unsupported release location {url}: use an https:// URL, a file:// URL or a folder")


def check_transport(url):
    """Plain http would let anyone on the path swap the manifest together with its checksums."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "https":
        return
    host = parsed.hostname or ""
    if not _is_loopback(host):
        raise UserError(f"refusing plain http:// to {host or url}: the release (and its checksums) could be "
                        f"altered in transit; use https://, or http:// only for 127.0.0.1/localhost/::1")


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub release assets redirect to a CDN), but never down to plain http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_transport(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpRelease:
    def __init__(self, base_url, timeout):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(SafeRedirects)

    def location(self, name):
        return f"{self.base_url}/{urllib.parse.quote(name)}"

    def open(self, name, offset=0):
        """(response, offset, end): `offset` is the one honoured, 0 when the server sent the whole file;
        `end` is where the data it announced ends (None when it announced no length)."""
        url = self.location(name)
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and offset:
                # Our partial is at least as long as the server's file: it is stale, start over.
                return self.open(name, 0)
            if err.code == 404:
                raise UserError(f"{name} not found: {url} answered 404 Not Found") from None
            raise UserError(f"{url} answered HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise UserError(f"cannot reach {url}: {error_reason(err.reason)}. Check the network connection and "
                            f"--url (or ${RELEASE_URL_ENV})") from None
        except (OSError, http.client.HTTPException) as err:
            raise UserError(f"cannot fetch {url}: {error_reason(err)}") from None
        if offset and not (response.status == 206 and _range_start(response) == offset):
            if response.status == 206:  # a range other than the one asked for: trust nothing, restart
                response.close()
                return self.open(name, 0)
            offset = 0  # 200: the server ignored Range and sends the file from its first byte
        length = response.headers.get("Content-Length", "")
        return response, offset, offset + int(length) if length.isdigit() else None


def _range_start(response):
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def error_reason(err):
    """The useful words of a socket/HTTP error: 'Connection refused', 'timed out', ..."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


class FolderRelease:
    def __init__(self, folder):
        self.folder = folder

    def location(self, name):
        return os.path.join(self.folder, name)

    def open(self, name, offset=0):
        path = self.location(name)
        if not os.path.isdir(self.folder):
            raise UserError(f"release folder {self.folder} does not exist")
        try:
            stream = open(path, "rb")
        except FileNotFoundError:
            raise UserError(f"{name} not found: no file {path}") from None
        except OSError as err:
            raise UserError(f"cannot read {path}: {error_reason(err)}") from None
        stream.seek(offset)
        return stream, offset, os.fstat(stream.fileno()).st_size


# ----------------------------------------------------------------------------- the manifest


class ManifestEntry:
    def __init__(self, name, size, sha256):
        self.name, self.size, self.sha256 = name, size, sha256


def read_manifest(release):
    """The manifest's entries, validated: a bad manifest is one clear error, not a crash later."""
    where = release.location(MANIFEST_NAME)
    if isinstance(release, FolderRelease) and os.path.isdir(release.folder) and not os.path.exists(where):
        raise UserError(f"no {MANIFEST_NAME} in {release.folder}; a maintainer makes one with: "
                        f"python download_weights.py --make_manifest {release.folder}")
    stream, _, _ = release.open(MANIFEST_NAME)
    with stream:
        try:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
        except (OSError, http.client.HTTPException) as err:
            raise UserError(f"reading {where} failed: {error_reason(err)}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise UserError(f"malformed manifest {where}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return parse_manifest(json.loads(data))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"malformed manifest {where}: {err}") from None


def parse_manifest(obj):
    """ManifestEntry list from the decoded JSON; ValueError saying what is wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("files"), list):
        raise ValueError('expected an object with a "files" list')
    entries, seen = [], set()
    for i, item in enumerate(obj["files"]):
        if not isinstance(item, dict):
            raise ValueError(f"files[{i}] is not an object")
        name, size, sha256 = item.get("name"), item.get("size"), item.get("sha256")
        if not _is_plain_name(name):
            # Names become paths under the weights folder: no separators, no hidden or parent names.
            raise ValueError(f"files[{i}] has an invalid name {name!r}")
        if name in seen:
            raise ValueError(f"{name} is listed twice")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{name} has an invalid size {size!r}")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ValueError(f"{name} has an invalid sha256 {sha256!r}")
        seen.add(name)
        entries.append(ManifestEntry(name, size, sha256.lower()))
    return entries


def _is_plain_name(name):
    return (isinstance(name, str) and name != "" and not name.startswith(".")
            and name != MANIFEST_NAME and not re.search(r"[/\\\x00-\x1f]", name))


# ----------------------------------------------------------------------------- files of a model


def _member_rank(name, prefix):
    """Download order of `name` among the files of `prefix` (Best, 1..M, JSONs), None if not one."""
    folder = RunFolder("", prefix)
    key = folder.member_key(name)
    if key is not None:
        return (0, 0) if key == "Best" else (1, key)
    extras = folder.shared_file_names()
    return (2, extras.index(name)) if name in extras else None


def files_for_prefix(entries, prefix):
    members = [(rank, entry) for entry in entries if (rank := _member_rank(entry.name, prefix)) is not None]
    return [entry for _, entry in sorted(members, key=lambda pair: pair[0])]


def release_prefixes(entries):
    """The model prefixes a release holds, for the 'not in this release' message."""
    return sorted({prefix for entry in entries if (prefix := RunFolder.prefix_of(entry.name)) is not None})


# ----------------------------------------------------------------------------- progress


class Progress:
    """One live line on a terminal; otherwise (logs, pipes) one line per file."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.shown = output.verbosity() >= output.NORMAL  # nothing with --quiet
        self.live = self.shown and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._line_len = 0
        self._drawn_name, self._drawn_at = None, 0.0  # redraw a file's line at most every 0.1 s

    def note(self, text):
        self._write_line(text)

    def update(self, name, done, total):
        now = time.monotonic()
        if not self.live or (name == self._drawn_name and now - self._drawn_at < 0.1 and done < total):
            return
        self._drawn_name, self._drawn_at = name, now
        percent = 100 * done // total if total else 100
        self._draw(f"{name}  {_size(done)} / {_size(total)}  {percent:3d}%")

    def end_line(self):
        """Leave a half-drawn progress line, so that an error message starts on a line of its own."""
        if self.live and self._line_len:
            self.stream.write("\n")
            self.stream.flush()
            self._line_len = 0

    def _draw(self, text):
        self.stream.write("\r" + text.ljust(self._line_len))
        self.stream.flush()
        self._line_len = len(text)

    def _write_line(self, text):
        if self.live and self._line_len:
            self._draw(text)
            self.stream.write("\n")
            self._line_len = 0
        elif self.shown:
            print(text, file=self.stream, flush=True)


def _size(nbytes):
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


# ----------------------------------------------------------------------------- downloading


def download_model(prefix, weights_dir, url=None, timeout=DEFAULT_TIMEOUT, progress=None, overwrite=False):
    """Fetch every release file of `prefix` into `weights_dir`.

    A file of `prefix` already there that differs from the release's (the user's own run) is refused
    unless `overwrite`. Returns [(name, "downloaded" | "present")] in download order; raises UserError
    on any failure.
    """
    progress = progress or Progress()
    base = release_url(url)
    if base is None:
        raise UserError(f"no release location: pass --url or set ${RELEASE_URL_ENV}")
    release = open_release(base, timeout)
    manifest = read_manifest(release)
    entries = files_for_prefix(manifest, prefix)
    if not entries:
        raise UserError(_missing_prefix_message(prefix, release, manifest))
    others = [entry.name for entry in entries
              if os.path.isfile(os.path.join(weights_dir, entry.name)) and not _matches(
                  os.path.join(weights_dir, entry.name), entry)]
    if others and not overwrite:
        raise UserError(f"{weights_dir} already holds {', '.join(others)}, different from the release's: your own "
                        f"run of {prefix}? Use another --weights_dir, or pass --overwrite to replace them")
    try:
        os.makedirs(weights_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create weights folder {weights_dir}: {error_reason(err)}") from None
    try:
        return [(entry.name, fetch_file(release, entry, weights_dir, progress)) for entry in entries]
    finally:
        progress.end_line()


def _missing_prefix_message(prefix, release, entries):
    prefixes = release_prefixes(entries)
    held = ", ".join(prefixes) if prefixes else "no model files at all"
    return f"the release at {release.location(MANIFEST_NAME)} has no files for {prefix}; it holds: {held}"


def fetch_file(release, entry, weights_dir, progress):
    """Make `weights_dir/entry.name` a verified copy of the release file; "downloaded" or "present"."""
    final = os.path.join(weights_dir, entry.name)
    partial = os.path.join(weights_dir, partial_name(entry.name))
    if os.path.isfile(final):
        if _matches(final, entry):
            remove_if_present(partial)  # a leftover from an earlier, superseded download
            progress.note(f"{entry.name}: already present and verified, skipped")
            return "present"
        progress.note(f"{entry.name}: present but differs from the release, downloading again")

    resumed = _transfer(release, entry, partial, _resumable_size(partial, entry.size), progress)
    if resumed and not _matches(partial, entry):
        # The kept partial may stem from an older release whose file has changed since: one clean try.
        progress.note(f"{entry.name}: resumed data did not verify, downloading again from the start")
        remove_if_present(partial)
        resumed = _transfer(release, entry, partial, 0, progress)
    _verify(partial, entry, release)
    try:
        os.replace(partial, final)
    except OSError as err:
        raise UserError(f"cannot write {final}: {error_reason(err)}") from None
    how = "resumed and verified" if resumed else "downloaded and verified"
    progress.note(f"{entry.name}: {_size(entry.size)} {how}")
    return "downloaded"


def _resumable_size(partial, expected_size):
    """Bytes of `partial` worth continuing from; a partial longer than the file is stale and removed."""
    try:
        size = os.path.getsize(partial)
    except OSError:
        return 0
    if size > expected_size:
        remove_if_present(partial)
        return 0
    return size


def _transfer(release, entry, partial, offset, progress):
    """Append the release file from byte `offset` to `partial` until the manifest size is reached.

    Returns whether earlier bytes were kept (False when starting from 0, also when the server ignored
    the Range request). A cut connection raises UserError and keeps the partial for the next run.
    """
    if offset and offset == entry.size:  # an earlier run received everything but stopped before verifying
        return True
    stream, offset, end = release.open(entry.name, offset)
    received = offset
    try:
        with stream, open(partial, "ab" if offset else "wb") as out:
            # Read one chunk past the expected size: EOF confirms it, extra bytes fail verification.
            while received <= entry.size:
                chunk = _read_chunk(stream, entry, received, release)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                progress.update(entry.name, min(received, entry.size), entry.size)
            out.flush()
            os.fsync(out.fileno())
    except OSError as err:
        raise UserError(f"cannot write {partial}: {error_reason(err)}") from None
    # Short of the manifest size but all the source announced: the source's file is wrong, which
    # _verify reports; short of what it announced: the transfer was cut, resumable.
    if received < entry.size and (end is None or received < end):
        raise UserError(_interrupted(entry, received, release, "the connection closed early"))
    return offset > 0


def _read_chunk(stream, entry, received, release):
    try:
        return stream.read(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as err:
        raise UserError(_interrupted(entry, received, release, error_reason(err))) from None


def _interrupted(entry, received, release, why):
    return (f"download of {release.location(entry.name)} stopped after {received} of {entry.size} bytes "
            f"({why}); run the same command again to resume")


def _verify(partial, entry, release):
    """Size, then SHA-256; a partial that fails either is deleted, never resumed."""
    size = os.path.getsize(partial)
    if size != entry.size:
        remove_if_present(partial)
        raise UserError(f"size mismatch for {release.location(entry.name)}: got {size} bytes, the manifest says "
                        f"{entry.size}; the download was deleted")
    digest = sha256_of(partial)
    if digest != entry.sha256:
        remove_if_present(partial)
        raise UserError(f"checksum mismatch for {release.location(entry.name)}: SHA-256 {digest}, the manifest "
                        f"says {entry.sha256}; the download was deleted")


def _matches(path, entry):
    return os.path.getsize(path) == entry.size and sha256_of(path) == entry.sha256


def remove_if_present(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------- publishing


def make_manifest(folder):
    """Write `folder/manifest.json` listing every regular file there except hidden ones (partials).

    Returns (manifest path, number of files).
    """
    if not os.path.isdir(folder):
        raise UserError(f"--make_manifest: {folder} is not a folder")
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and _is_plain_name(entry.name))
    if not names:
        raise UserError(f"--make_manifest: {folder} holds no files to publish")
    files = [{"name": name, "size": os.path.getsize(os.path.join(folder, name)),
              "sha256": sha256_of(os.path.join(folder, name))} for name in names]
    path = os.path.join(folder, MANIFEST_NAME)
    try:
        write_json(path, {"files": files})
    except OSError as err:
        raise UserError(f"cannot write {path}: {error_reason(err)}") from None
    return path, len(files)
