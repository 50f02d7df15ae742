"""The first CIFAR-10 download into a data root: once for concurrent processes, nothing half-written.

Real torchvision download code (``torchvision.datasets.CIFAR10``: a redirect probe, the GET, md5 of
the archive, extraction, md5 of every file) against a real HTTP server on 127.0.0.1 that serves a
small archive in CIFAR-10's format. Each child process is a small launcher that points CIFAR10's
class constants (``url``, ``tgz_md5``, ``train_list``, ``test_list``, ``meta``) at that archive and
then runs ``core.data.load_source("cifar10", ROOT)`` under ``core.errors.cli_main``, as every
command does.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

FOLDER = "cifar-10-batches-py"          # torchvision's CIFAR10.base_folder
ARCHIVE = "cifar-10-python.tar.gz"      # torchvision's CIFAR10.filename
PER_BATCH, N_TEST = 20, 30
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

LAUNCHER = '''
import json, os, sys, time
from pathlib import Path

sys.path.insert(0, sys.argv[4])           # the repository, for tests.test_download
from tests.test_download import patch_cifar10, summary

patch_cifar10(json.loads(Path(sys.argv[1]).read_text()), setattr)
from core.data import load_source
from core.errors import cli_main


@cli_main
def main():
    if len(sys.argv) > 3 and sys.argv[3]:  # start together: say ready, wait for the go file
        go = Path(sys.argv[3])
        Path(f"{go}.ready.{os.getpid()}").touch()
        while not go.exists():
            time.sleep(0.01)
    print(json.dumps(summary(*load_source("cifar10", sys.argv[2]))))


main()
'''


def patch_cifar10(spec: dict, setattr_) -> None:
    """Point torchvision's CIFAR10 constants at the small archive (``setattr_``: ``setattr`` or a
    monkeypatch's)."""
    from torchvision.datasets import CIFAR10

    for key in ("url", "tgz_md5", "train_list", "test_list", "meta"):
        setattr_(CIFAR10, key, spec[key])


def summary(train, test, classes) -> dict:
    """What a process loaded: a digest of every image, label and class name, and the sizes."""
    blob = b"".join(t.numpy().tobytes() for t in (train.images, train.labels, test.images, test.labels))
    return {"digest": hashlib.sha256(blob + json.dumps(classes).encode()).hexdigest(),
            "train": len(train), "test": len(test)}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _make_archive(seed: int):
    """A CIFAR-10-format archive (five training batches, a test batch, batches.meta) and the
    digest that the launcher prints for it."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": PER_BATCH for i in range(1, 6)} | {"test_batch": N_TEST}
    files, arrays = {}, {}
    for name, n in batches.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        files[name] = pickle.dumps({"batch_label": name, "labels": labels, "data": data})
        arrays[name] = (data, labels)
    files["batches.meta"] = pickle.dumps({"label_names": CLASSES, "num_vis": 3072})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    archive = buf.getvalue()

    def split(names):
        data = np.concatenate([arrays[n][0] for n in names]).reshape(-1, 3, 32, 32)
        labels = np.array([v for n in names for v in arrays[n][1]], dtype=np.int64)
        return data, labels

    train, test = split([f"data_batch_{i}" for i in range(1, 6)]), split(["test_batch"])
    blob = b"".join(a.tobytes() for a in (*train, *test))
    digest = hashlib.sha256(blob + json.dumps(CLASSES).encode()).hexdigest()
    md5s = {name: _md5(content) for name, content in files.items()}
    return archive, md5s, digest


class _Server(ThreadingHTTPServer):
    """Serves ``body`` at /ARCHIVE; ``mode``: ok, drop (half the body, then close), slow (a drip
    over ``seconds``); records every request. torchvision's download makes two GETs: a probe for
    redirects (its header ``Method: HEAD``; the body is not read), then the download."""

    daemon_threads = True

    def __init__(self, body: bytes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body, self.mode, self.seconds = body, "ok", 0.0
        self.requests: list[tuple[str, str, bool]] = []   # method, path, redirect probe

    @property
    def downloads(self) -> int:
        """GETs of the archive that were downloads, not redirect probes."""
        assert all(path == f"/{ARCHIVE}" for _, path, _ in self.requests), self.requests
        return sum(1 for method, _, probe in self.requests if method == "GET" and not probe)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def _head(self) -> bool:
        self.server.requests.append((self.command, self.path, self.headers.get("Method") == "HEAD"))
        if self.path != f"/{ARCHIVE}":
            self.send_error(404)
            return False
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        return True

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        if not self._head():
            return
        body, mode = self.server.body, self.server.mode
        try:
            if mode == "drop":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            elif mode == "slow":
                chunks = 20
                step = -(-len(body) // chunks)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    time.sleep(self.server.seconds / chunks)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed
            pass


@pytest.fixture(scope="module")
def archive():
    return _make_archive(seed=1)


@pytest.fixture
def server(archive):
    srv = _Server(archive[0])
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def spec(server, archive) -> dict:
    _, md5s, _ = archive
    return {"url": f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}", "tgz_md5": _md5(server.body),
            "train_list": [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)],
            "test_list": [["test_batch", md5s["test_batch"]]],
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": md5s["batches.meta"]}}


@pytest.fixture
def launch(tmp_path, spec):
    """``launch(root, go="")`` -> a Popen of the launcher: a new process loading CIFAR-10 from ``root``."""
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "launcher.py").write_text(LAUNCHER)

    def start(root: Path, go: str = "") -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "spec.json"),
                                 str(root), go, str(REPO)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    return start


@pytest.fixture
def load_here(spec, monkeypatch, capsys):
    """``load_here(root)`` -> (exit status, stdout, stderr): the launcher's work in this process
    (a later run, or a failing one; no process start, so seconds faster)."""
    from core.data import load_source
    from core.errors import cli_main

    patch_cifar10(spec, monkeypatch.setattr)

    @cli_main
    def main(root):
        print(json.dumps(summary(*load_source("cifar10", str(root)))))

    def run(root: Path) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(root)
            rc = 0
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _assert_loaded(rc: int, out: str, err: str, digest: str) -> None:
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"digest": digest, "train": 5 * PER_BATCH, "test": N_TEST}


def _leftovers(root: Path) -> list[str]:
    """What is in the data root besides the lock file."""
    return sorted(p.name for p in root.iterdir() if p.name != ".cifar-10.lock") if root.exists() else []


def test_four_processes_starting_together_download_once_and_load_the_same_data(tmp_path, server, launch, load_here,
                                                                                 archive):
    root = tmp_path / "data"
    server.mode, server.seconds = "slow", 3.0  # the download outlasts the others' start
    go = tmp_path / "go"
    procs = [launch(root, go=str(go)) for _ in range(4)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < 4:
        assert time.monotonic() < deadline, "launchers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    results = [_finish(p) for p in procs]
    for rc, out, err in results:
        _assert_loaded(rc, out, err, archive[2])
    assert server.downloads == 1, server.requests
    waited = [err for _, _, err in results if "waiting for another process downloading CIFAR-10" in err]
    assert len(waited) == 3, [err for _, _, err in results]
    assert _leftovers(root) == [FOLDER]   # the archive and the temporary folder are gone
    # a later run uses the copy: no request at all
    _assert_loaded(*load_here(root), archive[2])
    assert server.downloads == 1


@pytest.mark.parametrize("failure", ["drop", "bad_md5"])
def test_failed_download_is_one_error_line_leaves_nothing_and_a_later_run_downloads(tmp_path, server, load_here,
                                                                                    archive, failure):
    root = tmp_path / "new" / "data"
    good = server.body
    if failure == "drop":
        server.mode = "drop"                          # the connection closes half-way
    else:
        server.body = _make_archive(seed=2)[0]        # another archive: its md5 is not the expected one
    rc, out, err = load_here(root)
    assert rc == 2 and out == "" and "Traceback" not in err
    # torchvision's progress bar comes first; then the error, on one line
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert errors[0].startswith(f"error: data: could not download CIFAR-10 into '{root}' (")
    assert errors[0].endswith("pass --data-root with an existing copy, --data PATH for an image folder or .tar.gz, "
                              "or --data fake")
    assert not root.exists()                          # it created the root: nothing of it is left
    assert (tmp_path / "new").is_dir()
    assert server.downloads == 1

    server.mode, server.body = "ok", good
    _assert_loaded(*load_here(root), archive[2])
    assert server.downloads == 2                           # nothing of the failed one was taken as complete
    assert _leftovers(root) == [FOLDER]


def test_killed_download_leaves_nothing_complete_and_the_next_run_cleans_up(tmp_path, server, launch, load_here,
                                                                             archive):
    root = tmp_path / "data"
    root.mkdir()
    server.mode, server.seconds = "slow", 60.0
    proc = launch(root)
    deadline = time.monotonic() + 120
    partial = []
    while not any(p.stat().st_size > 0 for p in partial):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.1)
        partial = list(root.glob(f".cifar-10-download-*/{ARCHIVE}"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (root / FOLDER).exists()
    assert _leftovers(root) == [partial[0].parent.name]   # only the killed download's temporary folder

    server.mode = "ok"
    _assert_loaded(*load_here(root), archive[2])
    assert server.downloads == 2
    assert _leftovers(root) == [FOLDER]                    # the stale temporary folder is gone


def test_a_download_keeps_an_incomplete_copy_it_did_not_make(tmp_path, load_here, archive):
    """An incomplete cifar-10-batches-py found in the data root (maybe the user's) is moved aside to
    ``cifar-10-batches-py.incomplete-*`` after a complete one is downloaded, never deleted."""
    root = tmp_path / "data"
    mine = root / "cifar-10-batches-py"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's\n")
    (mine / "data_batch_1").write_bytes(b"half")
    rc, out, err = load_here(root)
    assert rc == 0, err
    kept = list(root.glob("cifar-10-batches-py.incomplete-*"))
    assert len(kept) == 1 and (kept[0] / "notes.txt").read_text() == "the user's\n", "the incomplete copy was deleted"
    assert f"was moved to {str(kept[0])!r}" in err
