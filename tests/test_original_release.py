"""download_weights.py against a loopback server that answers like GitHub's releases API.

The server lists the original's release (assets with name, size, browser_download_url and digest),
redirects each browser_download_url to a second path that serves the bytes, as GitHub does, and
serves Keras 1.1.1 files of the original WRN-16-4 written by tests/keras1_reference.py.
"""

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import urllib.parse

import numpy as np
import pytest
from conftest import USER_ERROR, assert_clean_failure, predict_argv, run_script

import download_weights
import keras1_reference
from snapshot_ensembles import release as original_release
from snapshot_ensembles.errors import UserError

REPO = original_release.DEFAULT_GITHUB_REPO
TAG = "v1.0"
MEMBERS = ["Best", "1", "2", "3", "4", "5"]
PREFIXES = {"cifar10": ("WRN-CIFAR10-16-4", 10), "cifar100": ("WRN-CIFAR100-16-4", 100)}


def keras1_wrn_16_4(path, nb_classes, seed):
    order = keras1_reference.fill_weights(keras1_reference.original_wrn(N=2, k=4, nb_classes=nb_classes), seed=seed)
    keras1_reference.write_keras1_file(path, order)
    with open(path, "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def release_assets(tmp_path_factory):
    """{asset name: bytes}: the original's twelve WRN-16-4 files, Keras 1 format, distinct weights."""
    folder = tmp_path_factory.mktemp("keras1")
    assets = {}
    for dataset, (prefix, nb_classes) in PREFIXES.items():
        for seed, member in enumerate(MEMBERS):
            name = f"{prefix}-{member}.h5"
            assets[name] = keras1_wrn_16_4(str(folder / name), nb_classes, seed)
    return assets


class GitHub:
    """What the fake GitHub serves and what it saw; tests change it between runs."""

    def __init__(self, assets):
        self.files = dict(assets)
        self.listed = {name: len(data) for name, data in assets.items()}  # the sizes the API announces
        self.digests = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in assets.items()}
        self.rate_limited = False
        self.raw_answer = None  # bytes served instead of the releases JSON
        self.download_urls = {}  # name -> browser_download_url other than the default
        self.requests = []  # (path, Authorization header)
        self.tag = TAG  # the tag_name the API lists
        self.api_redirect = None  # Location the releases call is redirected to

    def releases(self):
        assets = []
        for name in self.listed:
            url = self.download_urls.get(name, f"{self.url}/{REPO}/releases/download/{TAG}/{name}")
            asset = {"name": name, "size": self.listed[name], "browser_download_url": url}
            if name in self.digests:
                asset["digest"] = self.digests[name]
            assets.append(asset)
        return [{"tag_name": self.tag, "html_url": f"{self.url}/{REPO}/releases/tag/{TAG}", "draft": False,
                 "assets": assets}]


class GitHubHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Authorization")))
        path = urllib.parse.urlsplit(self.path).path
        if path == f"/repos/{REPO}/releases":
            if state.api_redirect and "moved" not in self.path:
                self._send(302, b"", {"Location": state.api_redirect})
            elif state.rate_limited:
                reset = str(int(time.time()) + 600)
                self._send(403, b'{"message": "API rate limit exceeded"}',
                           {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
            else:
                body = state.raw_answer if state.raw_answer is not None else json.dumps(state.releases()).encode()
                self._send(200, body, {"Content-Type": "application/json"})
        elif path.startswith(f"/{REPO}/releases/download/{TAG}/"):
            self._send(302, b"", {"Location": f"{state.url}/objects/{path.rsplit('/', 1)[1]}"})
        elif path.startswith("/objects/") and path[len("/objects/"):] in state.files:
            self._send(200, state.files[path[len("/objects/"):]], {"Content-Type": "application/octet-stream"})
        else:
            self._send(404, b'{"message": "Not Found"}', {})

    def _send(self, status, body, headers):
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def github(release_assets):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GitHubHandler)
    httpd.state = GitHub(release_assets)
    httpd.state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def api_env(github, monkeypatch):
    monkeypatch.setenv(original_release.GITHUB_API_ENV, github.url)
    monkeypatch.delenv(original_release.TOKEN_ENV, raising=False)
    return github


def download(weights_dir, *flags):
    download_weights.main(["--weights_dir", str(weights_dir), *flags])


def asset_requests(github):
    return [path for path, _ in github.requests if path.startswith("/objects/")]


def shipped_weights(prefix):
    with open(original_release.shipped_ensemble_weights(prefix)) as fh:
        weights = np.asarray(json.load(fh)["best_weights"])
    return weights / weights.sum()


# --- the whole path: download with no model flags, then predict -------------------------------

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_download_then_predict_with_the_originals_ensemble_weights(github, tmp_path, dataset, request):
    prefix, _ = PREFIXES[dataset]
    data_dir, sha = request.getfixturevalue(f"{dataset}_dir")
    weights = tmp_path / "weights"
    flags = [] if dataset == "cifar10" else ["--dataset", "cifar100"]
    env = {original_release.GITHUB_API_ENV: github.url, original_release.TOKEN_ENV: "token-123",
           "KERAS_HOME": str(tmp_path / "keras_home")}

    result = run_script("download_weights.py", *flags, "--weights_dir", weights, env=env)
    assert result.returncode == 0, result.stderr
    assert github.requests[0] == (f"/repos/{REPO}/releases?per_page=100", "Bearer token-123")
    for member in MEMBERS:
        digest = hashlib.sha256(github.files[f"{prefix}-{member}.h5"]).hexdigest()
        assert f"{prefix}-{member}.h5: {len(github.files[f'{prefix}-{member}.h5'])} bytes, SHA-256 {digest}" \
            in result.stdout
    expected_files = {f"{prefix}-{m}.weights.h5" for m in MEMBERS} | {
        f"Ensemble-weights-{prefix}.json", f"{prefix}-release.json"}
    assert set(os.listdir(weights)) == expected_files  # no Keras 1 file, no partial
    with open(original_release.shipped_ensemble_weights(prefix), "rb") as fh:
        assert (weights / f"Ensemble-weights-{prefix}.json").read_bytes() == fh.read()
    record = json.loads((weights / f"{prefix}-release.json").read_text())
    assert [(e["name"], e["url"], e["size"], e["sha256"]) for e in record["files"]] == [
        (f"{prefix}-{m}.h5", f"{github.url}/{REPO}/releases/download/{TAG}/{prefix}-{m}.h5",
         len(github.files[f"{prefix}-{m}.h5"]), hashlib.sha256(github.files[f"{prefix}-{m}.h5"]).hexdigest())
        for m in MEMBERS]

    script = "predict_cifar_10.py" if dataset == "cifar10" else "predict_cifar_100.py"
    data_flags = ["--weights_dir", weights, "--data_dir", data_dir, "--data_sha256", sha]
    result = run_script(script, "--optimize", "0", *data_flags)
    assert result.returncode == 0, result.stderr
    assert f"ensemble {prefix} with 6 members (Best, snapshots 1..5)" in result.stdout
    assert f"weighted ensemble (saved in Ensemble-weights-{prefix}.json)" in result.stdout
    assert "  weights [" + ", ".join(f"{w:.4f}" for w in shipped_weights(prefix)) + "]" in result.stdout
    assert "Accuracy : " in result.stdout

    argv = [str(flag) for flag in data_flags]
    equal = predict_argv(dataset, ["--optimize", "-1", *argv])
    assert equal["networks_run"] == []  # every member came from the cache of the run above
    fitted = predict_argv(dataset, ["--optimize", "1", *argv])
    assert len(fitted["weights"]) == 6 and abs(sum(fitted["weights"]) - 1) < 1e-6


def test_a_second_run_downloads_nothing_and_a_changed_release_file_is_noticed(api_env, tmp_path, capsys,
                                                                             tmp_path_factory):
    prefix, _ = PREFIXES["cifar10"]
    download(tmp_path)
    capsys.readouterr()
    api_env.requests.clear()

    download(tmp_path)
    assert "already converted" in capsys.readouterr().out
    assert asset_requests(api_env) == []

    name = f"{prefix}-3.h5"
    before = (tmp_path / f"{prefix}-3.weights.h5").read_bytes()
    api_env.files[name] = keras1_wrn_16_4(str(tmp_path_factory.mktemp("new") / name), 10, seed=99)
    api_env.listed[name] = len(api_env.files[name])
    api_env.digests[name] = "sha256:" + hashlib.sha256(api_env.files[name]).hexdigest()
    download(tmp_path)
    assert f"{name} changed in the release since the last download" in capsys.readouterr().out
    assert (tmp_path / f"{prefix}-3.weights.h5").read_bytes() != before


def test_assets_without_digest_are_checked_by_size(api_env, tmp_path, capsys):
    api_env.digests.clear()
    download(tmp_path)
    assert "GitHub's digest" not in capsys.readouterr().out
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")]) == 6


# --- failures: one error line, nothing under a final name ------------------------------------

def assert_nothing_installed(weights_dir):
    assert not os.path.exists(weights_dir) or os.listdir(weights_dir) == []


def test_no_network_says_where_the_files_are_and_how_to_convert_by_hand(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_script("download_weights.py", "--weights_dir", tmp_path / "weights",
                        env={original_release.GITHUB_API_ENV: f"http://127.0.0.1:{port}"})
    assert_clean_failure(result, USER_ERROR, "cannot reach the GitHub API", f"https://github.com/{REPO}/releases",
                         "python convert_weights.py")
    assert_nothing_installed(tmp_path / "weights")


def test_rate_limit_says_so_and_names_github_token(api_env, tmp_path):
    api_env.rate_limited = True
    with pytest.raises(UserError, match=r"GitHub API rate limit exceeded \(HTTP 403 .*resets at \d\d:\d\d UTC: "
                                        r"set GITHUB_TOKEN"):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")


def test_asset_missing_from_the_release_is_named(api_env, tmp_path):
    del api_env.listed["WRN-CIFAR10-16-4-3.h5"]
    with pytest.raises(UserError, match=r"the release v1.0 of titu1994/Snapshot-Ensembles lacks WRN-CIFAR10-16-4-3.h5"):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")


def test_model_the_release_does_not_hold_is_refused(api_env, tmp_path):
    with pytest.raises(UserError, match=r"no release of .* holds weight files of WRN-CIFAR10-28-10 .* "
                                        r"WRN-CIFAR10-16-4, WRN-CIFAR100-16-4"):
        download(tmp_path / "weights", "--wrn_N", "4", "--wrn_k", "10")


@pytest.mark.parametrize("fault", ["size", "digest"])
def test_size_or_digest_mismatch_deletes_the_download(api_env, tmp_path, fault):
    name = "WRN-CIFAR10-16-4-2.h5"
    if fault == "size":
        api_env.listed[name] += 1
        api_env.digests.pop(name)
        message = rf"size mismatch for .*{name}: got \d+ bytes, GitHub lists"
    else:
        api_env.digests[name] = "sha256:" + "0" * 64
        message = rf"checksum mismatch for .*{name}"
    with pytest.raises(UserError, match=message):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")
    cache = original_release.download_folder(REPO, TAG)
    assert name not in os.listdir(cache)


@pytest.mark.parametrize("content", ["cifar100-network", "not-hdf5"])
def test_file_that_is_not_a_keras1_file_of_this_network_is_refused(api_env, tmp_path, content):
    name = "WRN-CIFAR10-16-4-4.h5"
    if content == "cifar100-network":
        api_env.files[name] = api_env.files["WRN-CIFAR100-16-4-4.h5"]
        message = (r"WRN-CIFAR10-16-4-4.h5 of the release .*: layer \d+ with weights: dense_1 .* "
                   r"not a Keras 1 weight file")
    else:
        api_env.files[name] = b"<html>not a weight file</html>"
        message = r"WRN-CIFAR10-16-4-4.h5 of the release .* cannot be read as an HDF5 file"
    api_env.listed[name] = len(api_env.files[name])
    api_env.digests[name] = "sha256:" + hashlib.sha256(api_env.files[name]).hexdigest()
    with pytest.raises(UserError, match=message):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")


def test_a_folder_holding_the_users_own_run_is_refused_unless_overwrite(api_env, tmp_path, capsys):
    prefix, _ = PREFIXES["cifar10"]
    weights = tmp_path / "weights"
    weights.mkdir()
    own = {f"{prefix}-run.json": b'{"val_split": 0.1}', f"{prefix}-Best.weights.h5": b"my own training",
           f"{prefix}-6.weights.h5": b"my sixth snapshot"}
    for name, data in own.items():
        (weights / name).write_bytes(data)

    with pytest.raises(UserError, match=rf"holds a run of {prefix} that is not the release's .*--overwrite"):
        download(weights)
    assert {name: (weights / name).read_bytes() for name in own} == own
    assert api_env.requests == []  # refused before asking GitHub anything

    download(weights, "--overwrite")
    out = capsys.readouterr().out
    assert f"removed {weights / f'{prefix}-run.json'}" in out
    assert sorted(os.listdir(weights)) == sorted({f"{prefix}-{m}.weights.h5" for m in MEMBERS} | {
        f"Ensemble-weights-{prefix}.json", f"{prefix}-release.json"})


def test_ensemble_weights_the_user_fitted_are_kept(api_env, tmp_path, capsys):
    prefix, _ = PREFIXES["cifar10"]
    download(tmp_path)
    fitted = b'{"best_weights": [0, 0.2, 0.2, 0.2, 0.2, 0.2]}'
    (tmp_path / f"Ensemble-weights-{prefix}.json").write_bytes(fitted)
    download(tmp_path)
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / f"Ensemble-weights-{prefix}.json").read_bytes() == fitted


@pytest.mark.parametrize("refusal", ["rate-limit", "missing-file", "not-keras1", "own-run"])
def test_each_refusal_through_the_script_is_one_line_and_exit_2(api_env, tmp_path, refusal):
    """README bad-input rows of download_weights.py, as a user meets them: the real script in a subprocess."""
    weights = tmp_path / "weights"
    name = "WRN-CIFAR10-16-4-4.h5"
    if refusal == "rate-limit":
        api_env.rate_limited = True
        fragments = ["GitHub API rate limit exceeded", "GITHUB_TOKEN"]
    elif refusal == "missing-file":
        del api_env.listed[name]
        fragments = ["the release v1.0 of titu1994/Snapshot-Ensembles lacks", name]
    elif refusal == "not-keras1":
        api_env.files[name] = b"<html>not a weight file</html>"
        api_env.listed[name] = len(api_env.files[name])
        api_env.digests[name] = "sha256:" + hashlib.sha256(api_env.files[name]).hexdigest()
        fragments = [name, "cannot be read as an HDF5 file"]
    else:
        weights.mkdir()
        (weights / "WRN-CIFAR10-16-4-Best.weights.h5").write_bytes(b"my own training")
        fragments = ["holds a run of WRN-CIFAR10-16-4 that is not the release's", "--overwrite"]
    result = run_script("download_weights.py", "--weights_dir", weights)
    assert_clean_failure(result, USER_ERROR, *fragments)
    if refusal == "own-run":
        assert os.listdir(weights) == ["WRN-CIFAR10-16-4-Best.weights.h5"]
    else:
        assert_nothing_installed(weights)


@pytest.mark.parametrize("answer, message", [
    (b"not json", "unexpected answer from"),
    (b'{"message": "Moved"}', "expected a list of releases"),
    (b'[{"tag_name": "v1"}]', "a release without an 'assets' list"),
    (b'[{"assets": [{"name": "x.h5", "size": "12", "browser_download_url": "https://x"}]}]', "an asset without"),
    (b'[{"assets": ["x"]}]', "an asset that is not an object"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
], ids=["not-json", "not-a-list", "no-assets", "size-type", "asset-not-an-object", "nested-200000-deep"])
def test_unexpected_api_answer_is_one_clear_error(api_env, tmp_path, answer, message):
    api_env.raw_answer = answer
    with pytest.raises(UserError, match=message):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")


def test_asset_url_on_plain_http_to_a_remote_host_is_refused(api_env, tmp_path):
    api_env.download_urls["WRN-CIFAR10-16-4-Best.h5"] = "http://example.com/WRN-CIFAR10-16-4-Best.h5"
    with pytest.raises(UserError, match="refusing plain http:// to example.com"):
        download(tmp_path / "weights")
    assert asset_requests(api_env) == []


def test_quiet_download_prints_the_result_lines_only(api_env, tmp_path, capsys):
    download(tmp_path / "normal")
    normal = capsys.readouterr()
    assert "WRN-CIFAR10-16-4-Best.h5: " in normal.out  # a line per downloaded file
    download(tmp_path / "quiet", "--quiet")
    quiet = capsys.readouterr()
    assert "WRN-CIFAR10-16-4-Best.h5: " not in quiet.out and quiet.err == ""
    assert quiet.out.splitlines()[0].startswith(f"wrote {tmp_path / 'quiet'}")  # the result, even when quiet
    assert sorted(os.listdir(tmp_path / "quiet")) == sorted(os.listdir(tmp_path / "normal"))


# --- hostile or broken servers (issue 25): loopback servers only -------------------------------

class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's `respond(handler)`; records (path, Authorization)."""

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.server.respond(self)

    def head(self, status, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the client hanging up on a stalled or endless answer is the point


@pytest.fixture
def loopback():
    """start(respond) -> server on another 127.0.0.1 port, with .url, .seen and .stop (an Event)."""
    servers = []

    def start(respond):
        httpd = QuietServer(("127.0.0.1", 0), ScriptedHandler)
        httpd.respond, httpd.seen, httpd.stop = respond, [], threading.Event()
        httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return httpd

    yield start
    for httpd in servers:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()


def test_the_token_goes_to_the_same_origin_only_when_the_api_redirects(api_env, loopback, tmp_path, monkeypatch):
    monkeypatch.setenv(original_release.TOKEN_ENV, "secret-token")

    def releases(handler):
        body = json.dumps(api_env.releases()).encode()
        handler.head(200, {"Content-Length": str(len(body))})
        handler.wfile.write(body)

    elsewhere = loopback(releases)  # another port: another origin
    api_env.api_redirect = f"{elsewhere.url}/repos/{REPO}/releases?per_page=100"
    download(tmp_path / "first")
    assert elsewhere.seen == [(f"/repos/{REPO}/releases?per_page=100", None)]
    assert len(os.listdir(tmp_path / "first")) == 8  # the answer from there was used

    api_env.requests.clear()
    api_env.api_redirect = f"{api_env.url}/repos/{REPO}/releases?per_page=100&moved=1"
    download(tmp_path / "second")
    assert api_env.requests[:2] == [(f"/repos/{REPO}/releases?per_page=100", "Bearer secret-token"),
                                    (f"/repos/{REPO}/releases?per_page=100&moved=1", "Bearer secret-token")]


def test_a_silent_asset_server_times_out_after_timeout_seconds(api_env, loopback, tmp_path):
    def silent(handler):
        handler.head(200, {"Content-Length": "1000"})
        handler.wfile.write(b"x")
        handler.wfile.flush()
        handler.server.stop.wait(20)

    name = "WRN-CIFAR10-16-4-Best.h5"
    api_env.download_urls[name] = f"{loopback(silent).url}/{name}"
    started = time.monotonic()
    with pytest.raises(UserError, match=rf"download of .*{name} stalled for --timeout 1 s after \d+ bytes"):
        download(tmp_path / "weights", "--timeout", "1")
    assert time.monotonic() - started < 8
    assert_nothing_installed(tmp_path / "weights")
    assert name not in os.listdir(original_release.download_folder(REPO, TAG))


def test_an_endless_asset_is_cut_at_its_listed_size(api_env, loopback, tmp_path):
    def endless(handler):  # no Content-Length: the body ends when the server closes, here after 64 MiB
        handler.head(200, {"Connection": "close"})
        for _ in range(1024):
            handler.wfile.write(b"\0" * 65536)
        handler.server.sent = True

    name = "WRN-CIFAR10-16-4-Best.h5"
    server = loopback(endless)
    api_env.download_urls[name] = f"{server.url}/{name}"
    with pytest.raises(UserError, match=rf"size mismatch for .*{name}: got more than {api_env.listed[name]} bytes"):
        download(tmp_path / "weights")
    assert not getattr(server, "sent", False)  # the client hung up long before the 64 MiB
    assert name not in os.listdir(original_release.download_folder(REPO, TAG))
    assert_nothing_installed(tmp_path / "weights")


def test_an_asset_redirected_to_plain_http_on_another_host_is_refused(api_env, loopback, tmp_path):
    def to_plain_http(handler):
        handler.head(302, {"Location": "http://example.com/weights.h5", "Content-Length": "0"})

    name = "WRN-CIFAR10-16-4-Best.h5"
    api_env.download_urls[name] = f"{loopback(to_plain_http).url}/{name}"
    with pytest.raises(UserError, match="refusing plain http:// to example.com"):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")


def test_an_api_answer_trickling_a_byte_at_a_time_is_bounded_by_timeout(api_env, loopback, tmp_path):
    def trickle(handler):
        body = json.dumps(api_env.releases()).encode()
        handler.head(200, {"Content-Length": str(len(body))})
        for byte in body[:150]:  # 15 s at most, then the connection closes
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if handler.server.stop.wait(0.1):
                return

    started = time.monotonic()
    with pytest.raises(UserError, match=r"the GitHub API at .* did not answer within --timeout 1 s"):
        download(tmp_path / "weights", "--timeout", "1", "--github_api", loopback(trickle).url)
    assert time.monotonic() - started < 5


def test_an_asset_of_snapshot_one_billion_is_a_missing_file_error(api_env, tmp_path):
    api_env.listed = {"WRN-CIFAR10-28-10-Best.h5": 10, "WRN-CIFAR10-28-10-1000000000.h5": 10}
    with pytest.raises(UserError, match=r"lacks WRN-CIFAR10-28-10-1.h5, WRN-CIFAR10-28-10-2.h5, "
                                        r"WRN-CIFAR10-28-10-3.h5 and 999999996 more"):
        download(tmp_path / "weights", "--wrn_N", "4", "--wrn_k", "10")


def test_a_tag_named_dot_dot_stays_in_the_repositorys_download_folder(api_env, tmp_path):
    api_env.tag = ".."
    download(tmp_path / "weights")
    downloads = os.path.join(os.environ["KERAS_HOME"], "snapshot-ensembles")
    assert os.listdir(downloads) == ["titu1994+Snapshot-Ensembles"]
    assert os.listdir(os.path.join(downloads, "titu1994+Snapshot-Ensembles")) == ["_."]


def test_a_password_in_a_url_is_never_echoed(api_env, tmp_path):
    url = api_env.url.replace("http://", "http://user:hunter2@")
    with pytest.raises(UserError, match=r"--github_api http://\*\*\*@127.0.0.1:\d+ holds a user name or password") \
            as refused:
        download(tmp_path / "weights", "--github_api", url)
    name = "WRN-CIFAR10-16-4-Best.h5"
    api_env.download_urls[name] = "http://user:hunter2@127.0.0.1:9/x.h5"  # nothing listens on port 9
    with pytest.raises(UserError, match=r"cannot download http://\*\*\*@127.0.0.1:9/x.h5") as failed:
        download(tmp_path / "weights")
    assert "hunter2" not in str(refused.value) + str(failed.value)


@pytest.fixture
def small_keras_home(tmp_path, monkeypatch, request):
    """KERAS_HOME on a real 1 MiB tmpfs (read-only with the parameter "ro"); skipped where mount is refused."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    options = "size=1m" + (",ro" if getattr(request, "param", "") == "ro" else "")
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o {options} tmpfs {mount_point} 2>/dev/null") != 0:
        pytest.skip("needs root and mount for a small tmpfs")
    monkeypatch.setenv("KERAS_HOME", str(mount_point))
    yield mount_point
    os.system(f"umount {mount_point}")


def test_a_full_disk_under_keras_home_says_so(api_env, small_keras_home, tmp_path):
    with pytest.raises(UserError, match=r"cannot write .*WRN-CIFAR10-16-4-Best.h5 \(No space left on device\).*"
                                        r"free some space there or set KERAS_HOME") as failed:
        download(tmp_path / "weights")
    assert failed.value.exit_code == 1  # the environment failed, as for a full disk in training
    assert "Without network" not in str(failed.value)
    assert_nothing_installed(tmp_path / "weights")


@pytest.mark.parametrize("small_keras_home", ["ro"], indirect=True)
def test_a_read_only_keras_home_says_so(api_env, small_keras_home, tmp_path):
    with pytest.raises(UserError, match=r"cannot create the download folder .*Read-only file system.*"
                                        r"set KERAS_HOME to a writable folder"):
        download(tmp_path / "weights")
    assert_nothing_installed(tmp_path / "weights")
