"""The release download flow against a real HTTP server on 127.0.0.1 (and file:// / folder releases)."""

import hashlib
import http.server
import io
import json
import os
import re
import socket
import threading
import urllib.parse

import pytest

import download_weights
from conftest import USER_ERROR, assert_clean_failure, run_script
from snapshot_ensembles import downloads
from snapshot_ensembles.errors import UserError

PREFIX = "WRN-CIFAR10-16-4"  # what `--dataset cifar10 --model wrn --wrn_N 2 --wrn_k 4` names
OTHER_PREFIX = "DenseNet-CIFAR100-40-12"


def _payload(seed, size):
    """Deterministic bytes, several chunks long so that streaming and resuming are exercised."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def release_files():
    return {
        f"{PREFIX}-Best.weights.h5": _payload("best", 300_000),
        f"{PREFIX}-1.weights.h5": _payload("s1", 200_001),
        f"{PREFIX}-2.weights.h5": _payload("s2", 150_000),
        f"Ensemble-weights-{PREFIX}.json": b'{"best_weights": [0.4, 0.3, 0.3]}\n',
        f"{PREFIX}-training.json": b'{"loss": [2.3, 1.1]}\n',
        f"{OTHER_PREFIX}-Best.weights.h5": _payload("other", 1000),
    }


def manifest_for(files):
    return {"files": [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                      for name, data in files.items()]}


class ReleaseState:
    """What the server serves and what it saw; tests change it between runs."""

    def __init__(self):
        self.files = release_files()
        self.manifest = manifest_for(self.files)  # served as manifest.json unless files holds one
        self.requests = []          # (name, Range header or None)
        self.cut_once = set()       # names whose first response stops after half the body
        self.stall = set()          # names whose response stalls after half the body
        self.ignore_range = False   # answer 200 with the whole file even to a Range request
        self.redirects = {}         # name -> Location
        self.release_stalls = threading.Event()

    def fetched(self, name):
        return [rng for seen, rng in self.requests if seen == name]


class ReleaseHandler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 so that Content-Length, not the closed socket, marks the end: closing early is a cut.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        state = self.server.state
        name = urllib.parse.unquote(self.path.removeprefix("/release/"))
        range_header = self.headers.get("Range")
        state.requests.append((name, range_header))
        if name in state.redirects:
            self._head(302, {"Location": state.redirects[name], "Content-Length": "0"})
            return
        if name in state.files:
            data = state.files[name]
        elif name == downloads.MANIFEST_NAME:
            data = json.dumps(state.manifest).encode()
        else:
            self._head(404, {"Content-Length": "0"})
            return
        status, start, headers = 200, 0, {}
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self._head(416, {"Content-Length": "0", "Content-Range": f"bytes */{len(data)}"})
                return
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        self._head(status, {**headers, "Content-Length": str(len(body))})
        if name in state.cut_once or name in state.stall:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            if name in state.stall:
                state.release_stalls.wait(10)
            state.cut_once.discard(name)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _head(self, status, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *args):  # keep test output clean
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the client hanging up on a stalled response is expected


@pytest.fixture
def server():
    httpd = QuietServer(("127.0.0.1", 0), ReleaseHandler)
    httpd.state = ReleaseState()
    httpd.state.url = f"http://127.0.0.1:{httpd.server_address[1]}/release"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.state.release_stalls.set()
    httpd.shutdown()
    httpd.server_close()


def download(url, weights_dir, prefix=PREFIX, timeout=5.0):
    return downloads.download_model(prefix, str(weights_dir), url, timeout=timeout,
                                    progress=downloads.Progress(io.StringIO()))


def prefix_files(state):
    return {name: data for name, data in state.files.items() if not name.startswith(OTHER_PREFIX)}


def assert_complete(weights_dir, state):
    """Exactly the prefix's files, byte-identical, and nothing hidden (no partial) left over."""
    expected = prefix_files(state)
    assert sorted(os.listdir(weights_dir)) == sorted(expected)
    for name, data in expected.items():
        with open(os.path.join(weights_dir, name), "rb") as fh:
            assert fh.read() == data


def test_full_download_fetches_and_verifies_every_file_of_the_prefix(server, tmp_path):
    weights = tmp_path / "weights"
    results = download(server.url, weights)
    assert results == [(f"{PREFIX}-Best.weights.h5", "downloaded"), (f"{PREFIX}-1.weights.h5", "downloaded"),
                       (f"{PREFIX}-2.weights.h5", "downloaded"), (f"Ensemble-weights-{PREFIX}.json", "downloaded"),
                       (f"{PREFIX}-training.json", "downloaded")]
    assert_complete(weights, server)
    assert not server.fetched(f"{OTHER_PREFIX}-Best.weights.h5")


def test_present_verified_files_are_skipped(server, tmp_path):
    download(server.url, tmp_path)
    server.requests.clear()
    progress_out = io.StringIO()
    results = downloads.download_model(PREFIX, str(tmp_path), server.url, progress=downloads.Progress(progress_out))
    assert {outcome for _, outcome in results} == {"present"}
    assert [name for name, _ in server.requests] == [downloads.MANIFEST_NAME]
    assert "already present and verified, skipped" in progress_out.getvalue()


def test_present_file_that_differs_is_refused_unless_overwrite(server, tmp_path):
    download(server.url, tmp_path)
    best = tmp_path / f"{PREFIX}-Best.weights.h5"
    best.write_bytes(b"the user's own training")
    server.requests.clear()
    with pytest.raises(UserError, match=rf"already holds {PREFIX}-Best.weights.h5, different from the release's: "
                                        r"your own run .*--overwrite"):
        download(server.url, tmp_path)
    assert best.read_bytes() == b"the user's own training"
    assert [name for name, _ in server.requests] == [downloads.MANIFEST_NAME]

    results = dict(downloads.download_model(PREFIX, str(tmp_path), server.url, timeout=5.0, overwrite=True,
                                            progress=downloads.Progress(io.StringIO())))
    assert results[best.name] == "downloaded"
    assert server.fetched(best.name) == [None]
    assert_complete(tmp_path, server)


def test_checksum_mismatch_leaves_neither_final_file_nor_partial(server, tmp_path):
    name = f"{PREFIX}-1.weights.h5"
    server.manifest["files"][1]["sha256"] = "0" * 64
    with pytest.raises(UserError, match=f"checksum mismatch for .*{re.escape(name)}"):
        download(server.url, tmp_path)
    assert not (tmp_path / name).exists()
    assert not (tmp_path / downloads.partial_name(name)).exists()
    assert sorted(os.listdir(tmp_path)) == [f"{PREFIX}-Best.weights.h5"]  # the one before it verified


def test_server_file_shorter_than_manifest_is_a_size_mismatch(server, tmp_path):
    name = f"{PREFIX}-Best.weights.h5"
    server.files[name] = server.files[name][:1000]
    with pytest.raises(UserError, match="size mismatch .* got 1000 bytes"):
        download(server.url, tmp_path)
    assert os.listdir(tmp_path) == []


def test_missing_file_is_named_in_the_error(server, tmp_path):
    name = f"{PREFIX}-2.weights.h5"
    del server.files[name]
    with pytest.raises(UserError, match=f"{re.escape(name)} not found: .*404"):
        download(server.url, tmp_path)
    assert not (tmp_path / name).exists()


def test_cut_transfer_keeps_the_partial_and_the_rerun_resumes_with_a_range_request(server, tmp_path):
    name = f"{PREFIX}-Best.weights.h5"
    size = len(server.files[name])
    server.cut_once.add(name)
    with pytest.raises(UserError, match=f"stopped after {size // 2} of {size} bytes.*run the same command again"):
        download(server.url, tmp_path)
    partial = tmp_path / downloads.partial_name(name)
    assert partial.stat().st_size == size // 2
    assert not (tmp_path / name).exists()

    download(server.url, tmp_path)
    assert server.fetched(name) == [None, f"bytes={size // 2}-"]
    assert_complete(tmp_path, server)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    name = f"{PREFIX}-Best.weights.h5"
    server.cut_once.add(name)
    with pytest.raises(UserError):
        download(server.url, tmp_path)
    server.ignore_range = True
    download(server.url, tmp_path)
    assert server.fetched(name)[-1] is not None  # it asked for a range, got 200 and the whole file
    assert_complete(tmp_path, server)


def test_stale_partial_that_fails_verification_is_downloaded_from_scratch(server, tmp_path):
    name = f"{PREFIX}-Best.weights.h5"
    (tmp_path / downloads.partial_name(name)).write_bytes(b"x" * 1000)  # from some older release
    download(server.url, tmp_path)
    assert server.fetched(name) == ["bytes=1000-", None]
    assert_complete(tmp_path, server)


def test_stalled_connection_times_out_and_keeps_the_partial(server, tmp_path):
    name = f"{PREFIX}-Best.weights.h5"
    server.stall.add(name)
    with pytest.raises(UserError, match="stopped after .*timed out.*run the same command again"):
        download(server.url, tmp_path, timeout=0.3)
    assert (tmp_path / downloads.partial_name(name)).exists()
    assert not (tmp_path / name).exists()


def write_release_files(folder):
    """The release files written into a new `folder`; returns (folder, {name: bytes})."""
    folder.mkdir()
    files = release_files()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_folder_and_file_url_sources(tmp_path, as_url):
    release, files = write_release_files(tmp_path / "release")
    (release / downloads.MANIFEST_NAME).write_text(json.dumps(manifest_for(files)))
    download(release.as_uri() if as_url else str(release), tmp_path / "weights")
    assert sorted(os.listdir(tmp_path / "weights")) == sorted(
        name for name in files if not name.startswith(OTHER_PREFIX))


def test_plain_http_to_a_remote_host_is_refused_before_connecting(tmp_path):
    with pytest.raises(UserError, match="refusing plain http:// to example.com"):
        download("http://example.com/release", tmp_path)


def test_redirect_down_to_plain_http_is_refused(server, tmp_path):
    server.redirects[downloads.MANIFEST_NAME] = "http://example.com/release/manifest.json"
    with pytest.raises(UserError, match="refusing plain http:// to example.com"):
        download(server.url, tmp_path)


def test_unreachable_host_is_one_clear_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError, match=f"cannot reach http://127.0.0.1:{port}/.*manifest.json"):
        download(f"http://127.0.0.1:{port}/release", tmp_path)
    assert os.listdir(tmp_path) == []


def test_unknown_prefix_lists_what_the_release_holds(server, tmp_path):
    with pytest.raises(UserError, match=f"no files for WRN-CIFAR100-28-10; it holds: {OTHER_PREFIX}, {PREFIX}"):
        download(server.url, tmp_path, prefix="WRN-CIFAR100-28-10")


@pytest.mark.parametrize("manifest", [
    b"not json",
    b"[]",
    {"files": [{"name": "../escape.weights.h5", "size": 1, "sha256": "0" * 64}]},
    {"files": [{"name": f"{PREFIX}-1.weights.h5", "size": "1", "sha256": "0" * 64}]},
    {"files": [{"name": f"{PREFIX}-1.weights.h5", "size": 1, "sha256": "abc"}]},
], ids=["not-json", "no-files", "path-escape", "size-type", "sha-form"])
def test_malformed_manifest_is_one_clear_error(server, tmp_path, manifest):
    server.files[downloads.MANIFEST_NAME] = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    with pytest.raises(UserError, match="malformed manifest"):
        download(server.url, tmp_path)
    assert os.listdir(tmp_path) == []


def test_release_url_comes_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(downloads.RELEASE_URL_ENV, server.url)
    download(None, tmp_path)
    assert_complete(tmp_path, server)


def test_progress_on_a_terminal_is_one_live_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    progress = downloads.Progress(term)
    progress.update("f.weights.h5", 500_000, 2_000_000)
    progress.note("f.weights.h5: 2.0 MB downloaded and verified")
    assert term.getvalue().startswith("\rf.weights.h5  500.0 kB / 2.0 MB   25%\r")
    assert term.getvalue().count("\n") == 1
    progress.update("g.weights.h5", 1_000_000, 2_000_000)
    progress.end_line()  # a failure mid-file: the error message must not share the progress line
    assert term.getvalue().endswith("50%\n")


def test_make_manifest_round_trip(tmp_path, capsys):
    release, files = write_release_files(tmp_path / "trained")
    (release / downloads.partial_name(f"{PREFIX}-3.weights.h5")).write_bytes(b"half")  # unfinished: not listed
    (release / "subfolder").mkdir()

    download_weights.main(["--make_manifest", str(release)])
    assert "wrote" in capsys.readouterr().out
    manifest = json.loads((release / downloads.MANIFEST_NAME).read_text())
    assert manifest == {"files": sorted(manifest_for(files)["files"], key=lambda entry: entry["name"])}

    weights = tmp_path / "weights"
    download_weights.main(["--dataset", "cifar10", "--model", "wrn", "--wrn_N", "2", "--wrn_k", "4",
                           "--url", str(release), "--weights_dir", str(weights)])
    assert f"{PREFIX}: 5 files verified" in capsys.readouterr().out
    assert len(os.listdir(weights)) == 5


def test_quiet_download_prints_the_result_line_only(tmp_path, capsys):
    release, _ = write_release_files(tmp_path / "trained")
    download_weights.main(["--make_manifest", str(release), "--quiet"])
    assert capsys.readouterr().out.startswith("wrote ")  # the result, even when quiet
    flags = ["--dataset", "cifar10", "--model", "wrn", "--wrn_N", "2", "--wrn_k", "4", "--url", str(release)]
    download_weights.main([*flags, "--weights_dir", str(tmp_path / "normal")])
    normal = capsys.readouterr()
    assert f"{PREFIX}-Best.weights.h5" in normal.err  # a line per file
    download_weights.main([*flags, "--weights_dir", str(tmp_path / "quiet"), "--quiet"])
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == normal.out.replace("normal", "quiet")
    assert sorted(os.listdir(tmp_path / "quiet")) == sorted(os.listdir(tmp_path / "normal"))


def test_without_url_the_originals_github_release_is_the_source(tmp_path, monkeypatch):
    monkeypatch.delenv(downloads.RELEASE_URL_ENV, raising=False)
    monkeypatch.setenv("SNAPSHOT_GITHUB_API", "http://127.0.0.1:9/unreachable")
    with pytest.raises(UserError, match="cannot reach the GitHub API at http://127.0.0.1:9/unreachable"):
        download_weights.main(["--weights_dir", str(tmp_path)])


def test_entry_script_offline_is_one_error_line_and_exit_2(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_script("download_weights.py", "--dataset", "cifar10", "--url", f"http://127.0.0.1:{port}/x",
                        "--weights_dir", tmp_path / "weights")
    assert_clean_failure(result, USER_ERROR, "cannot reach")
    assert result.stderr.strip().splitlines()[0].startswith("error: ")
    assert not (tmp_path / "weights").exists() or os.listdir(tmp_path / "weights") == []


@pytest.mark.parametrize("breakage,fragments", [
    ("missing", ["not found", "404"]),
    ("short", ["size mismatch", f"{PREFIX}-Best.weights.h5"]),
    ("checksum", ["checksum mismatch", f"{PREFIX}-Best.weights.h5"]),
])
def test_entry_script_download_failures_name_the_file_and_exit_2(server, tmp_path, breakage, fragments):
    name = f"{PREFIX}-Best.weights.h5"
    if breakage == "missing":
        del server.files[name]
    elif breakage == "short":
        server.files[name] = server.files[name][:1000]
    else:
        server.manifest["files"][0]["sha256"] = "0" * 64
    weights = tmp_path / "weights"
    result = run_script("download_weights.py", "--dataset", "cifar10", "--wrn_N", "2", "--wrn_k", "4",
                        "--url", server.url, "--weights_dir", weights)
    line = assert_clean_failure(result, USER_ERROR, *fragments)
    assert name in line
    assert not (weights / name).exists()  # nothing under a final name
