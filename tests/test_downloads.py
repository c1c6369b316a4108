"""Tests for helpers.downloads and data_scripts/download_datasets.py, offline.

The network code runs against a small HTTP server on 127.0.0.1 (started in a thread, serving files
from tmp_path) that sends ETags, honours Range / If-Range requests (or ignores them when told to), and
can cut a transfer short, with or without a Content-Length.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import pickle
import random
import socket
import tarfile
import threading
import time
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import data, downloads
from helpers.downloads import (
    DATASET_SOURCES,
    ChecksumMismatchError,
    CorruptFileError,
    DatasetSource,
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    collect_files,
    download,
    install_dataset,
    safe_extract,
    sha256_file,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ local server
def _etag(content: bytes) -> str:
    return '"%s"' % hashlib.sha256(content).hexdigest()[:16]


class _Handler(BaseHTTPRequestHandler):
    """GET files from ``server.folder`` with an ETag (unless ``server.send_etag`` is False) and
    ``server.last_modified`` (when set); Range support unless ``server.ignore_range``, evaluated
    against If-Range like a real server (a validator that does not match the current file gets the
    whole file, 200). ``server.mode``: "short" announces the full length but sends half and closes;
    "no_length" sends half without a Content-Length and closes; "no_length_full" sends it all
    without a Content-Length; "chunked" / "chunked_cut" send it chunked, whole or cut in the middle.
    ``server.requests`` records (path, Range), ``server.seen`` every request's headers."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        try:
            self._respond()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def _respond(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.seen.append(dict(self.headers))
        if self.path.startswith("/stall/"):
            time.sleep(1.0)  # longer than the client's timeout in the test
        path = server.folder / self.path.split("/")[-1]
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        body = path.read_bytes()
        etag = _etag(body) if server.send_etag else None
        validators = [v for v in (etag, server.last_modified) if v]
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and not server.ignore_range and (if_range is None or if_range in validators):
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        if etag:
            self.send_header("ETag", etag)
        if server.last_modified:
            self.send_header("Last-Modified", server.last_modified)
        mode = server.mode
        if mode in ("chunked", "chunked_cut"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body) // 2 if mode == "chunked_cut" else len(body), 4096):
                block = body[i:i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            if mode == "chunked":
                self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        if mode not in ("no_length", "no_length_full"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode in ("short", "no_length") else body)
        self.close_connection = True


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.folder, httpd.requests, httpd.seen, httpd.ignore_range = folder, [], [], False
    httpd.send_etag, httpd.last_modified, httpd.mode = True, None, None
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve(server, name: str, content: bytes) -> str:
    (server.folder / name).write_bytes(content)
    return f"{server.url}/{name}"


PAYLOAD = bytes(range(256)) * 400  # 100 kB


# ------------------------------------------------------------------------------ download
def test_full_download_verifies_and_reports_digest(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    seen = []
    result = download(url, tmp_path / "out" / "file.bin", sha256=digest, chunk_size=8192,
                      progress=lambda done, total: seen.append((done, total)))
    assert result.path.read_bytes() == PAYLOAD and result.sha256 == digest
    assert result.resumed_from == 0 and not result.already_present
    assert not (tmp_path / "out" / "file.bin.part").exists()
    assert not (tmp_path / "out" / "file.bin.part.json").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) > 1


def test_part_without_validator_is_not_resumed(server, tmp_path):
    """A part with no sidecar (no ETag / Last-Modified to send in If-Range) could be spliced with a
    changed file: it is truncated and the file fetched whole."""
    url = _serve(server, "file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:30000])
    result = download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert result.resumed_from == 0 and dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/file.bin", None)


def _interrupted(server, url: str, dest: Path) -> int:
    """One transfer cut in the middle (the server announces the length, sends half and closes);
    returns the bytes kept in the part."""
    server.mode = "short"
    with pytest.raises(DownloadError):
        download(url, dest)
    server.mode = None
    part, _ = downloads.partial_paths(dest)
    return part.stat().st_size


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    kept = _interrupted(server, url, tmp_path / "file.bin")
    server.ignore_range = True
    result = download(url, tmp_path / "file.bin")
    assert server.requests[-1] == ("/file.bin", f"bytes={kept}-")  # asked, got 200: truncated, not appended
    assert result.resumed_from == 0 and (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_stale_part_longer_than_file_restarts(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    part, meta = downloads.partial_paths(tmp_path / "file.bin")
    part.write_bytes(b"x" * (len(PAYLOAD) + 10))
    meta.write_text(json.dumps({"url": url, "etag": _etag(PAYLOAD), "total": len(PAYLOAD)}))
    result = download(url, tmp_path / "file.bin")  # 416, then a full download
    assert [r for _, r in server.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD and result.resumed_from == 0


def test_no_resume_discards_the_part(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    _interrupted(server, url, tmp_path / "file.bin")
    download(url, tmp_path / "file.bin", resume=False)
    assert server.requests[-1][1] is None and (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_and_names_both_digests(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as info:
        download(url, tmp_path / "file.bin", sha256=wrong)
    assert wrong in str(info.value) and hashlib.sha256(PAYLOAD).hexdigest() in str(info.value)
    assert url in str(info.value)
    assert not (tmp_path / "file.bin").exists() and not (tmp_path / "file.bin.part").exists()


def test_existing_file_is_not_downloaded_again(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    result = download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert result.already_present and server.requests == []
    dest.write_bytes(b"stale")  # wrong content under the final name: reported and fetched again
    logs = []
    assert download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                    log=logs.append).path.read_bytes() == PAYLOAD
    assert len(logs) == 1 and str(dest) in logs[0] and "SHA-256" in logs[0]


def test_short_transfer_keeps_part_and_then_resumes(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    server.mode = "short"
    with pytest.raises(DownloadError, match="resumes") as info:
        download(url, dest)
    assert dest.name in str(info.value) and url in str(info.value)
    part, meta = downloads.partial_paths(dest)
    kept = part.stat().st_size if part.is_file() else 0
    assert 0 < kept < len(PAYLOAD) and not dest.exists()
    assert json.loads(meta.read_text()) == {"url": url, "etag": _etag(PAYLOAD), "last_modified": None,
                                            "total": len(PAYLOAD)}
    server.mode = None
    result = download(url, dest)
    assert result.resumed_from == kept and dest.read_bytes() == PAYLOAD
    assert not part.exists() and not meta.exists()


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_resume_sends_if_range_with_the_stored_validator(server, tmp_path, validator):
    if validator == "last_modified":
        server.send_etag, server.last_modified = False, "Wed, 21 Oct 2015 07:28:00 GMT"
    url = _serve(server, "file.bin", PAYLOAD)
    dest = tmp_path / "file.bin"
    kept = _interrupted(server, url, dest)
    result = download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert server.requests[-1] == ("/file.bin", f"bytes={kept}-")
    assert server.seen[-1]["If-Range"] == (_etag(PAYLOAD) if validator == "etag" else server.last_modified)
    assert result.resumed_from == kept and dest.read_bytes() == PAYLOAD  # 206: the rest appended


def test_resume_after_the_file_changed_restarts_instead_of_splicing(server, tmp_path):
    old = PAYLOAD
    new = bytes(reversed(PAYLOAD))  # same length: a splice would pass any length check
    url = _serve(server, "file.bin", old)
    dest = tmp_path / "file.bin"
    kept = _interrupted(server, url, dest)
    _serve(server, "file.bin", new)  # the file changed on the server between the two runs
    result = download(url, dest)
    assert dest.read_bytes() == new and result.resumed_from == 0
    assert server.requests[-1] == ("/file.bin", f"bytes={kept}-")
    assert server.seen[-1]["If-Range"] == _etag(old)  # no match: the server sent the whole new file


def _random_tgz(path: Path, size: int = 60000) -> bytes:
    """A .tgz whose content does not compress, so that half the file is half the data."""
    return _tar(path, {"jpg/a.jpg": random.Random(0).randbytes(size), "jpg/b.jpg": b"\xff\xd8b"}).read_bytes()


def _random_zip(path: Path, size: int = 60000) -> bytes:
    return _zip(path, {"jpg/a.jpg": random.Random(1).randbytes(size), "jpg/b.jpg": b"\xff\xd8b"}).read_bytes()


@pytest.mark.parametrize("name", ["file.bin", "imgs.tgz", "gnd.pkl"])
@pytest.mark.parametrize("send_etag", [True, False])
def test_server_closing_early_without_length_is_not_accepted(server, tmp_path, name, send_etag):
    """No Content-Length and an early close look like the end of the file: the half file stays a
    part, and the next run (server fixed) completes it, by resuming when a validator allows it."""
    content = {"file.bin": PAYLOAD, "imgs.tgz": _random_tgz(tmp_path / "x.tgz"),
               "gnd.pkl": pickle.dumps({"imlist": [f"im{i}" for i in range(5000)]})}[name]
    server.send_etag = send_etag
    url = _serve(server, name, content)
    dest = tmp_path / "out" / name
    server.mode = "no_length"
    with pytest.raises(DownloadError, match="no length") as info:
        download(url, dest)
    assert name in str(info.value) and url in str(info.value)
    assert ("resumes" if send_etag else "from the start") in str(info.value)
    part, meta = downloads.partial_paths(dest)
    assert not dest.exists() and part.stat().st_size == len(content) // 2
    assert json.loads(meta.read_text())["etag"] == (_etag(content) if send_etag else None)
    server.mode = None
    result = download(url, dest)
    assert dest.read_bytes() == content and not part.exists() and not meta.exists()
    assert result.resumed_from == (len(content) // 2 if send_etag else 0)
    assert download(url, dest).already_present


def test_without_length_only_a_full_read_or_checksum_proves_a_file(server, tmp_path):
    server.mode = "no_length_full"
    tgz = _random_tgz(tmp_path / "x.tgz")
    gnd = pickle.dumps({"gnd": [1, 2, 3]})
    assert download(_serve(server, "imgs.tgz", tgz), tmp_path / "imgs.tgz").path.read_bytes() == tgz
    assert download(_serve(server, "gnd.pkl", gnd), tmp_path / "gnd.pkl").path.read_bytes() == gnd
    url = _serve(server, "file.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="nothing proves"):
        download(url, tmp_path / "file.bin")  # a format that cannot tell, and no checksum
    assert not (tmp_path / "file.bin").exists()
    result = download(url, tmp_path / "file.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert result.path.read_bytes() == PAYLOAD


def test_chunked_body_is_complete_only_with_its_last_chunk(server, tmp_path):
    url = _serve(server, "file.bin", PAYLOAD)
    server.mode = "chunked_cut"
    with pytest.raises(DownloadError, match="interrupted"):
        download(url, tmp_path / "file.bin")
    assert not (tmp_path / "file.bin").exists()
    server.ignore_range, server.mode = True, "chunked"
    assert download(url, tmp_path / "file.bin").path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("make", [_random_tgz, _random_zip])
def test_truncated_archive_under_final_name_is_downloaded_again(server, tmp_path, make):
    content = make(tmp_path / "x")
    name = "imgs.zip" if make is _random_zip else "imgs.tgz"
    url = _serve(server, name, content)
    dest = tmp_path / name
    dest.write_bytes(content[: len(content) // 2])  # e.g. left by a server that closed early
    logs = []
    result = download(url, dest, log=logs.append)
    assert not result.already_present and dest.read_bytes() == content
    assert len(logs) == 1 and str(dest) in logs[0] and "incomplete" in logs[0]
    assert download(url, dest, log=logs.append).already_present and len(logs) == 1


def test_install_replaces_a_truncated_archive_found_on_disk(server, tmp_path):
    names = [f"ukbench{i:05d}.jpg" for i in range(4)]
    archive = _tar(tmp_path / "u.tgz", {f"full/{n}": random.Random(i).randbytes(20000)
                                        for i, n in enumerate(names)}).read_bytes()
    source = DatasetSource("ukbench", (RemoteFile(_serve(server, "ukbench.tgz", archive), target="ukbench/jpg"),),
                           images_target="ukbench/jpg", expected_images=4)
    root = tmp_path / "data"
    (root / "_downloads").mkdir(parents=True)
    (root / "_downloads" / "ukbench.tgz").write_bytes(archive[: len(archive) // 2])
    logs = []
    install_dataset(source, root, log=logs.append)
    assert sorted(p.name for p in (root / "ukbench" / "jpg").iterdir()) == names
    assert any("incomplete" in line for line in logs)


def test_corrupt_archives_raise_one_error_naming_the_archive(server, tmp_path):
    tgz = _random_tgz(tmp_path / "x.tgz")
    (tmp_path / "cut.tgz").write_bytes(tgz[: len(tgz) // 2])
    (tmp_path / "cut.zip").write_bytes(_random_zip(tmp_path / "y.zip")[:-30])
    for cut in (tmp_path / "cut.tgz", tmp_path / "cut.zip"):
        with pytest.raises(CorruptFileError) as info:
            safe_extract(cut, tmp_path / "out", url="http://127.0.0.1/x")
        assert str(cut) in str(info.value) and "http://127.0.0.1/x" in str(info.value)
        assert "Delete" in str(info.value) and isinstance(info.value, DownloadError)
    # served whole but itself cut: its length proves the transfer, extraction finds the damage
    names = [f"ukbench{i:05d}.jpg" for i in range(2)]
    good = _tar(tmp_path / "u.tgz", {f"full/{n}": random.Random(i).randbytes(20000) for i, n in enumerate(names)})
    url = _serve(server, "ukbench.tgz", good.read_bytes()[:25000])
    source = DatasetSource("ukbench", (RemoteFile(url, target="ukbench/jpg"),),
                           images_target="ukbench/jpg", expected_images=2)
    root = tmp_path / "data"
    with pytest.raises(CorruptFileError) as info:
        install_dataset(source, root, log=lambda line: None)
    message = str(info.value)
    assert "ukbench.tgz" in message and url in message and "deleted" in message and "again" in message
    assert not (root / "_downloads" / "ukbench.tgz").exists()
    assert not any(p.name.startswith("_extract") for p in root.iterdir())
    _serve(server, "ukbench.tgz", good.read_bytes())  # fixed on the server: the next run succeeds
    install_dataset(source, root, log=lambda line: None)
    assert sorted(p.name for p in (root / "ukbench" / "jpg").iterdir()) == names


def test_http_errors_and_offline(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(f"{server.url}/absent.bin", tmp_path / "a.bin")
    assert "a.bin" in str(info.value) and f"{server.url}/absent.bin" in str(info.value)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="offline") as info:
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", timeout=5)
    assert "x.bin from http://127.0.0.1" in str(info.value)


def test_timeout(server, tmp_path):
    _serve(server, "file.bin", PAYLOAD)
    with pytest.raises(DownloadError, match="timeout"):
        download(f"{server.url}/stall/file.bin", tmp_path / "file.bin", timeout=0.3)


# ------------------------------------------------------------------------------ safe_extract
def _tar(path: Path, members: dict[str, bytes], symlinks: dict[str, str] = None, mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(zipfile.ZipInfo(name), content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_normal_archives_extract(tmp_path):
    members = {"jpg/a.jpg": b"A", "jpg/sub/b.jpg": b"BB", "readme.txt": b"hi"}
    for archive in (_tar(tmp_path / "x.tgz", members), _tar(tmp_path / "x.tar", members, mode="w"),
                    _zip(tmp_path / "x.zip", members)):
        dest = tmp_path / f"out_{archive.name}"
        files = safe_extract(archive, dest)
        assert (dest / "jpg" / "sub" / "b.jpg").read_bytes() == b"BB"
        assert sorted(p.relative_to(dest.resolve()).as_posix() for p in files) == sorted(members)


@pytest.mark.parametrize("make, bad", [
    (lambda p: _tar(p / "evil.tgz", {"ok.jpg": b"1", "../evil": b"x"}), "../evil"),
    (lambda p: _tar(p / "abs.tgz", {"ok.jpg": b"1", str(p / "abs_evil"): b"x"}), "abs_evil"),
    (lambda p: _tar(p / "link.tgz", {"ok.jpg": b"1"}, symlinks={"link": "../../outside"}), "link"),
    (lambda p: _zip(p / "evil.zip", {"ok.jpg": b"1", "../evil": b"x"}), "../evil"),
    (lambda p: _zip(p / "abs.zip", {"ok.jpg": b"1", "/abs_evil": b"x"}), "/abs_evil"),
    (lambda p: _zip(p / "win.zip", {"ok.jpg": b"1", "..\\evil": b"x"}), "evil"),
    (lambda p: _zip(p / "link.zip", {"ok.jpg": b"1"}, symlinks={"link": "../../outside"}), "link"),
])
def test_unsafe_archives_write_nothing(tmp_path, make, bad):
    archive = make(tmp_path)
    dest = tmp_path / "deep" / "dest"
    before = _files_under(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=bad.replace("\\", "\\\\").replace(".", r"\.")):
        safe_extract(archive, dest)
    assert _files_under(dest) == set()  # every member is checked before anything is written
    assert _files_under(tmp_path) - before <= {"deep", "deep/dest"}
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()


def test_not_an_archive(tmp_path):
    page = tmp_path / "page.tgz"
    page.write_text("<html>302 Found</html>")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        safe_extract(page, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        safe_extract(tmp_path / "absent.tgz", tmp_path / "out")


def test_collect_files_flattens_and_keeps_the_larger_duplicate(tmp_path):
    src = tmp_path / "src"
    for rel, content in {"paris/defense/a.jpg": b"1", "paris/eiffel/b.JPG": b"22", "med/c.jpg": b"3",
                         "full/c.jpg": b"333", "paris/._a.jpg": b"mac", "notes.txt": b"t"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(content)
    counts = collect_files(src, tmp_path / "jpg", (".jpg",))
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == ["a.jpg", "b.JPG", "c.jpg"]
    assert (tmp_path / "jpg" / "c.jpg").read_bytes() == b"333" and counts == {"moved": 3, "duplicates": 1}


# ------------------------------------------------------------------------------ registry
def test_registry_agrees_with_the_loaders_layout(tmp_path):
    root = tmp_path / "data"
    assert set(DATASET_SOURCES) == set(data.DATASET_NAMES) - {"demo", "demo-train"}
    for name, source in DATASET_SOURCES.items():
        assert root / source.images_target == data.images_dir(name, root), name
        for remote in source.files:
            assert remote.url.startswith(("http://", "https://", "ftp://")) and remote.action in ("save", "extract")
            if remote.action == "save" or ".jpg" not in remote.suffixes:
                assert root / remote.target / (remote.filename if remote.action == "save" else "") \
                    == data.ground_truth_path(name, root), (name, remote.filename)
    assert downloads.known_sha256("gnd_roxford5k.pkl") is None  # not pinned: see the module docstring
    assert len(downloads.PARIS6K_CORRUPT_IMAGES) == 20


def _images_tgz(path: Path, names, nested="paris/general") -> bytes:
    return _tar(path, {f"{nested}/{n}": b"\xff\xd8jpeg" for n in names}).read_bytes()


def test_install_revisited_dataset_end_to_end(server, tmp_path):
    """A miniature roxford5k: image archive (nested folders) + revisitop pickle, served locally."""
    names = [f"all_souls_{i:06d}" for i in range(5)]
    tgz = _images_tgz(tmp_path / "imgs.tgz", [n + ".jpg" for n in names], nested="oxbuild/deep")
    gnd = {"imlist": names, "qimlist": ["all_souls_000001"],
           "gnd": [{"easy": [0, 2], "hard": [3], "junk": [4], "bbx": [1.0, 2.0, 30.0, 40.0]}]}
    source = replace(
        DATASET_SOURCES["roxford5k"], expected_images=5,
        files=(replace(DATASET_SOURCES["roxford5k"].files[0], url=_serve(server, "oxbuild_images-v1.tgz", tgz)),
               replace(DATASET_SOURCES["roxford5k"].files[1],
                       url=_serve(server, "gnd_roxford5k.pkl", pickle.dumps(gnd)))))
    root = tmp_path / "data"
    logs = []
    digests = install_dataset(source, root, log=logs.append)
    assert digests == {"oxbuild_images-v1.tgz": hashlib.sha256(tgz).hexdigest(),
                       "gnd_roxford5k.pkl": hashlib.sha256(pickle.dumps(gnd)).hexdigest()}
    ds = data.load_dataset("roxford5k", root=root)
    assert ds.n_db == 5 and ds.db_path(4).is_file() and ds.gnd[0]["hard"] == [3]
    assert not (root / "_downloads" / "oxbuild_images-v1.tgz").exists()
    assert not any(p.name.startswith("_extract") for p in root.iterdir())
    # second run: images already unpacked, the archive is not fetched again
    server.requests.clear()
    logs.clear()
    (root / "roxford5k" / "gnd_roxford5k.pkl").unlink()
    install_dataset(source, root, log=logs.append)
    assert [p for p, _ in server.requests] == ["/gnd_roxford5k.pkl"]
    assert any("skipped" in line for line in logs)


def test_install_classic_dataset_end_to_end(server, tmp_path):
    names = ["paris_defense_000001.jpg", "paris_defense_000002.jpg", "paris_eiffel_000001.jpg"]
    images = _images_tgz(tmp_path / "p1.tgz", names)
    gt = _tar(tmp_path / "gt.tgz", {
        "defense_1_query.txt": b"paris_defense_000001 1 2 30 40\n", "defense_1_good.txt": b"",
        "defense_1_ok.txt": b"paris_defense_000001\nparis_defense_000002\n", "defense_1_junk.txt": b""}).read_bytes()
    base = DATASET_SOURCES["paris6k"]
    source = replace(base, expected_images=3, files=(
        replace(base.files[0], url=_serve(server, "paris_1-v1.tgz", images)),
        replace(base.files[2], url=_serve(server, "paris_120310.tgz", gt), sha256=hashlib.sha256(gt).hexdigest())))
    root = tmp_path / "data"
    install_dataset(source, root, log=lambda line: None, keep_archives=True)
    assert (root / "_downloads" / "paris_1-v1.tgz").is_file()
    ds = data.load_dataset("paris6k", root=root)
    assert ds.imlist == sorted(names) and ds.gnd[0]["hard"] == [0, 1] and ds.gnd[0]["bbx"] == [1.0, 2.0, 30.0, 40.0]


def test_install_rejects_an_archive_without_images(server, tmp_path):
    tgz = _tar(tmp_path / "x.tgz", {"readme.txt": b"nothing here"}).read_bytes()
    source = DatasetSource("ukbench", (RemoteFile(_serve(server, "ukbench.zip", tgz), target="ukbench/jpg"),),
                           images_target="ukbench/jpg", expected_images=4)
    with pytest.raises(DownloadError, match="contained no .jpg files"):
        install_dataset(source, tmp_path / "data", log=lambda line: None)
    with pytest.raises(ValueError, match="no download source"):
        install_dataset("demo", tmp_path / "data")


# ------------------------------------------------------------------------------ the script
def _script():
    spec = importlib.util.spec_from_file_location("download_datasets", REPO / "data_scripts" / "download_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_downloads_and_prints_digest(server, tmp_path, monkeypatch, capsys):
    script = _script()
    names = [f"ukbench{i:05d}.jpg" for i in range(4)]
    archive = _zip(tmp_path / "u.zip", {f"full/{n}": b"\xff\xd8" for n in names}).read_bytes()
    monkeypatch.setitem(DATASET_SOURCES, "ukbench", replace(
        DATASET_SOURCES["ukbench"], expected_images=4,
        files=(replace(DATASET_SOURCES["ukbench"].files[0], url=_serve(server, "ukbench.zip", archive)),)))
    assert script.main(["ukbench", "--root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert f"sha256 ukbench.zip = {hashlib.sha256(archive).hexdigest()}" in out
    assert "ok: ukbench: 4 database images, 4 queries" in out


def test_script_offline_and_bad_names(tmp_path, monkeypatch, capsys):
    script = _script()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(DATASET_SOURCES, "holidays", replace(
        DATASET_SOURCES["holidays"],
        files=(replace(DATASET_SOURCES["holidays"].files[0], url=f"http://127.0.0.1:{port}/jpg1.tar.gz"),)))
    assert script.main(["holidays", "--root", str(tmp_path / "data"), "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert "offline" in err and "run the same command again" in err
    for argv, message in ((["demo"], "generated"), (["imagenet"], "unknown dataset"), ([], "at least one")):
        with pytest.raises(SystemExit):
            script.main(argv)
        assert message in capsys.readouterr().err
    assert script.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "gnd_rparis6k.pkl" in listing and "not pinned" in listing


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(PAYLOAD).hexdigest()
