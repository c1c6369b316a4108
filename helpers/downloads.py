"""Downloading and unpacking the public benchmarks: resumable, verified, safe.

* :func:`download` streams a URL to ``dest.part`` and gives it its final name ``dest`` only once it
  is proven complete: by its length (the Content-Length, the total of a Content-Range, or a chunked
  body read to its last chunk), by its pinned SHA-256, or, when the server sent no length, by a full
  read of its content (:func:`check_complete`: every member of a tar or zip archive read to the end,
  a pickle walked to its STOP opcode). A server that closes the connection early without a length
  therefore leaves a ``.part``, never a half file under the final name. Beside the part, the sidecar
  ``dest.part.json`` records the URL, the validator (ETag or Last-Modified) and the expected length.
* Resuming sends ``Range`` with ``If-Range: <ETag, else Last-Modified>``, so a file that changed on
  the server between two runs comes back whole (200) and replaces the part instead of being spliced
  onto it; a 200 from a server without range support also restarts from zero, and a part without a
  validator is not resumed at all. urllib only; http, https and ftp URLs (FTP: no resuming).
* A file already under its final name is checked again (pinned SHA-256, else a full read of an
  archive or pickle); one that fails is reported and downloaded again.
* :func:`safe_extract` unpacks tar (with ``tarfile``'s ``"data"`` filter) and zip archives after
  checking every member first, so that an archive with an absolute path, a ``..`` component or a
  link pointing out of the destination writes nothing at all.
* Errors: every :class:`DownloadError` names the file and its URL and says what happens next (the
  next run resumes the part, or downloads the file again). A truncated or corrupt archive
  (``EOFError``, ``tarfile.ReadError``, ``zipfile.BadZipFile``, decompression errors) is raised as
  :class:`CorruptFileError`; :func:`install_dataset` deletes such an archive so that the next run
  fetches it anew.
* :data:`DATASET_SOURCES` lists the published URLs of each dataset and where their content goes; the
  layout is the one :func:`helpers.data.load_dataset` reads. :func:`install_dataset` does the whole job
  and ``python data_scripts/download_datasets.py NAME`` is its command line.

Checksums. The SHA-256 of the published files could not be recorded here (the project was written
without internet access), so every ``sha256`` in the registry is ``None`` and the files are proven
complete by their length or by reading them to the end, as above. After a download, the script prints
each file's SHA-256; paste it into :data:`DATASET_SOURCES` to pin the file. A plain (uncompressed)
tar cut exactly between two members reads as complete; the registry's archives are all compressed,
whose streams end with a trailer. The ground-truth pickles are additionally read with a restricted
unpickler (:mod:`helpers.data`), so a tampered pickle cannot run code even when no checksum is pinned.

Sources (as published by the dataset authors; mirrors change, check them if a download fails):

* Oxford 5k / Paris 6k images and classic ground truth: https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/
  and .../parisbuildings/ (the ``-v1`` archives are the ones revisitop and cnnimageretrieval-pytorch
  use). Paris 6k contains 20 corrupt files, :data:`PARIS6K_CORRUPT_IMAGES` (the list in
  https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/corrupt.txt); they are kept on disk, the image
  loader raises ``ImageReadError`` on them and the feature extractor skips them.
* Revisited ground truth (Radenovic et al., CVPR 2018): http://cmp.felk.cvut.cz/revisitop/
  (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``); the images are the Oxford / Paris ones, downloaded once
  into ``oxford5k/jpg`` / ``paris6k/jpg`` and shared.
* INRIA Holidays: ``jpg1.tar.gz`` and ``jpg2.tar.gz`` on ftp://ftp.inrialpes.fr/pub/lear/douze/data/
  (FTP: no resuming).
* UKBench: https://archive.org/download/ukbench/ukbench.zip, the best-known mirror since the original
  site (vis.uky.edu/~stewe/ukbench) went offline; its inner layout is not documented, so every
  ``ukbenchNNNNN.jpg`` found in it is collected.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import lzma
import os
import pickletools
import re
import shutil
import socket
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from helpers.data import PARIS6K_CORRUPT_IMAGES, known_sha256  # noqa: F401 (re-exported)

USER_AGENT = "instret-download/1.0 (+python urllib)"
DEFAULT_TIMEOUT_S = 60.0
CHUNK_SIZE = 1 << 20



# ------------------------------------------------------------------------------------------ errors
class DownloadError(RuntimeError):
    """A download failed or could not be proven complete; the message names the file and its URL and
    says what the next run does (resume the ``.part`` file, or download it again)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded file's SHA-256 is not the expected one (the file has been deleted)."""

    def __init__(self, path, expected: str, actual: str, url: str | None = None):
        self.path, self.expected, self.actual, self.url = str(path), expected, actual, url
        source = f" (from {url})" if url else ""
        super().__init__(f"SHA-256 mismatch for {self.path}{source}: expected {expected}, got {actual}; "
                         "the file was deleted (corrupt transfer or a changed file on the server) and the "
                         "next run downloads it again")


class CorruptFileError(DownloadError, ValueError):
    """A file cannot be read to its end: a truncated or corrupt tar / zip archive or pickle, or a file
    that is not an archive at all. Every ``EOFError``, ``tarfile.ReadError``, ``zipfile.BadZipFile`` or
    decompression error met while reading an archive is raised as this class. It is a
    :class:`DownloadError` (the cure is another download) and a ``ValueError`` (the file is bad input)."""

    def __init__(self, path, reason: str, url: str | None = None, remedy: str | None = None):
        self.path, self.reason, self.url = str(path), reason, url
        source = f" (from {url})" if url else ""
        remedy = remedy or f"Delete {self.path} and run data_scripts/download_datasets.py again."
        super().__init__(f"{self.path}{source} is truncated or corrupt: {reason}. {remedy}")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination (absolute path, '..', link, device)."""


# ------------------------------------------------------------------------------------------ verify
#: Names that promise an archive: such a file must read to its end as a tar or zip archive.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")

# What reading a cut or damaged archive raises (gzip.BadGzipFile: a damaged gzip header or CRC).
_CORRUPT_ARCHIVE_ERRORS = (EOFError, tarfile.ReadError, tarfile.CompressionError, tarfile.HeaderError,
                           zipfile.BadZipFile, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def _read_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()  # reads every member to its end and checks its CRC
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad!r} is corrupt (CRC or data error)")


def _read_tar(path: Path) -> None:
    with tarfile.open(path) as tf:
        for member in tf:
            if member.isfile():
                with tf.extractfile(member) as f:
                    while f.read(CHUNK_SIZE):
                        pass
        # The end of the tar data is not the end of a compressed stream: reading on to EOF checks the
        # gzip / bz2 / xz trailer, so a file cut after the last member is caught too.
        while tf.fileobj.read(CHUNK_SIZE):
            pass


def check_complete(path, *, name: str | None = None, url: str | None = None) -> bool:
    """Read ``path`` to its end when its format can tell whether it is complete.

    A zip archive (every member read, CRCs checked), a tar archive of any compression (every member
    and the compressed stream read to the end) and a pickle (its opcodes walked to STOP with
    :func:`pickletools.genops`, which runs nothing) return True when they read to the end. A file
    whose ``name`` (default: the file's own; pass the final name for a ``.part`` file) has an
    :data:`ARCHIVE_SUFFIXES` ending must be one of those archives. Any other file returns False:
    its format cannot prove it complete. A read that fails raises :class:`CorruptFileError` naming
    ``path`` and ``url``.
    """
    path = Path(path)
    name = (name or path.name).lower()
    try:
        if zipfile.is_zipfile(path):
            _read_zip(path)
        elif name.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path):
            _read_tar(path)
        elif name.endswith(".pkl"):
            try:
                with open(path, "rb") as f:
                    for _ in pickletools.genops(f):
                        pass
            except ValueError as err:  # genops: "pickle exhausted before seeing STOP", unknown opcode
                raise EOFError(str(err)) from err
        else:
            return False
    except _CORRUPT_ARCHIVE_ERRORS + (OSError,) as err:  # OSError: bz2's "Invalid data stream"
        raise CorruptFileError(path, f"{type(err).__name__}: {err}", url=url) from err
    return True


# ------------------------------------------------------------------------------------------ download
@dataclass(frozen=True)
class Downloaded:
    """Result of :func:`download`: final path, its SHA-256, bytes already present when resuming
    (0 for a fresh transfer), and whether the file was already complete (nothing transferred)."""
    path: Path
    sha256: str
    resumed_from: int = 0
    already_present: bool = False


def sha256_file(path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def partial_paths(dest) -> tuple[Path, Path]:
    """``(dest.part, dest.part.json)``: the file being downloaded and its sidecar (URL, ETag,
    Last-Modified and expected total length, as JSON)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def _read_sidecar(meta: Path) -> dict:
    try:
        state = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_sidecar(meta: Path, state: dict) -> None:
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, meta)


def _validator(state: dict) -> str | None:
    """The If-Range value of a sidecar: its ETag, else its Last-Modified date. A weak ETag (``W/...``)
    is not allowed in If-Range (RFC 9110, 13.1.5), so the date stands in for it."""
    etag = state.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    modified = state.get("last_modified")
    return modified if isinstance(modified, str) and modified else None


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _open(url: str, start: int, validator: str | None, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        # If-Range: the server sends the rest (206) only while the file is the version the part holds,
        # otherwise the whole new file (200).
        headers["Range"] = f"bytes={start}-"
        headers["If-Range"] = validator
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) of ``Content-Range: bytes START-END/TOTAL`` (total None for ``*``)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if match is None:
        return None, None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _next_run(part: Path, meta: Path, url: str) -> str:
    """What the next run does with the partial file, for error messages."""
    if not (part.is_file() and part.stat().st_size > 0):
        return " The next run downloads it again."
    state = _read_sidecar(meta)
    if state.get("url") == url and _validator(state):
        return f" The partial file {part} is kept and the next run resumes it."
    return (f" The next run downloads it again from the start: the server sent neither an ETag nor a "
            f"Last-Modified date, so {part} cannot be resumed safely.")


def _present(dest: Path, expected: str | None, url: str, log) -> Downloaded | None:
    """``Downloaded`` for a final-name file that verifies (pinned SHA-256, else a full read where the
    format allows one); a file that fails is reported, deleted, and None returned."""
    if expected is not None:
        digest = sha256_file(dest)
        if digest == expected:
            return Downloaded(dest, digest, already_present=True)
        problem = f"its SHA-256 {digest} is not the pinned {expected}"
    else:
        try:
            # A file whose format cannot be checked got its final name only once its length proved it.
            check_complete(dest, url=url)
        except CorruptFileError as err:
            problem = err.reason
        else:
            return Downloaded(dest, sha256_file(dest), already_present=True)
    if log is not None:
        log(f"{dest} is incomplete or corrupt ({problem}); downloading it again from {url}")
    dest.unlink()
    return None


def download(url: str, dest, sha256: str | None = None, resume: bool = True, *,
             timeout: float = DEFAULT_TIMEOUT_S, progress: Callable[[int, int | None], None] | None = None,
             chunk_size: int = CHUNK_SIZE, log: Callable[[str], None] | None = print) -> Downloaded:
    """Download ``url`` to ``dest`` through ``dest.part``; move it into place once proven complete.

    * ``dest`` already exists: kept (nothing transferred) if it matches ``sha256``, or, with no
      ``sha256``, if :func:`check_complete` reads it to the end (archives, pickles) or cannot check its
      format. Otherwise ``log`` reports it and it is downloaded again.
    * The transfer goes to ``dest.part``; its sidecar ``dest.part.json`` (:func:`partial_paths`)
      records the URL, the ETag / Last-Modified validator and the total length as soon as the reply's
      headers arrive.
    * Resuming (``resume`` and a part whose sidecar has this URL and a validator) sends
      ``Range: bytes=N-`` with ``If-Range: <ETag, else Last-Modified>``. A 206 whose Content-Range
      starts at N is appended; a 200 (the file changed, or no range support) or a 416 restarts from
      zero. A part without a validator is never resumed: it is truncated and the file fetched whole.
    * The part becomes ``dest`` only when proven complete: by its length (Content-Length, the total
      of Content-Range, or a chunked body read to its last chunk), by ``sha256``, or, when the server
      sent no length, by :func:`check_complete`. A short or unproven transfer raises
      :class:`DownloadError` and keeps the part and its sidecar for the next run.
    * ``sha256`` given and different: the part is deleted and :class:`ChecksumMismatchError` raised.
    * Every error names ``dest`` and ``url``. ``progress(done_bytes, total_bytes_or_None)`` is called
      after every chunk.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        present = _present(dest, expected, url, log)
        if present is not None:
            return present
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta = partial_paths(dest)
    what = f"{dest.name} from {url}"
    state = _read_sidecar(meta) if resume else {}
    validator = _validator(state) if state.get("url") == url else None
    start = part.stat().st_size if validator and part.is_file() else 0
    if start == 0:  # nothing that can be resumed safely: start from zero
        _discard(part, meta)
        state = {}

    try:
        try:
            response = _open(url, start, validator, timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and start > 0:  # the part is complete or larger than the file: start over
                _discard(part, meta)
                start, state = 0, {}
                response = _open(url, 0, None, timeout)
            else:
                raise
        with response:
            headers = response.headers
            length = headers.get("Content-Length")
            length = int(length) if length and length.strip().isdigit() else None
            if getattr(response, "status", None) == 206:
                offset, total = _content_range(headers.get("Content-Range"))
                if offset != start:
                    raise DownloadError(f"{what}: asked to resume at byte {start}, the server sent Content-Range "
                                        f"{headers.get('Content-Range')!r}; delete {part} and run again")
                if total is None and length is not None:
                    total = start + length
            else:  # 200 (validator mismatch or no range support), FTP: the whole file from byte 0
                offset, total, state = 0, length, {}
            state = {"url": url, "etag": headers.get("ETag") or state.get("etag"),
                     "last_modified": headers.get("Last-Modified") or state.get("last_modified"),
                     "total": total}
            _write_sidecar(meta, state)
            framed = bool(getattr(response, "chunked", False))  # http.client raises if a chunk is cut
            done = offset
            with open(part, "ab" if offset else "wb") as out:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{what}: HTTP {err.code} {err.reason}.{_next_run(part, meta, url)}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"{what}: cannot connect ({err.reason}). Are you offline?"
                            f"{_next_run(part, meta, url)}") from err
    except (socket.timeout, TimeoutError) as err:
        raise DownloadError(f"{what}: no data for {timeout:.0f} s (timeout).{_next_run(part, meta, url)}") from err
    except (OSError, http.client.HTTPException) as err:  # connection reset, cut chunk, disk full
        raise DownloadError(f"{what}: transfer interrupted ({type(err).__name__}: {err})."
                            f"{_next_run(part, meta, url)}") from err

    if total is not None and done != total:
        raise DownloadError(f"{what}: received {done} of {total} bytes.{_next_run(part, meta, url)}")
    digest = sha256_file(part)
    if expected is not None:
        if digest != expected:
            _discard(part, meta)
            raise ChecksumMismatchError(dest, expected, digest, url=url)
    elif total is None and not framed:
        # The server closed the connection without announcing a length: an early close looks the same
        # as the end of the file, so only a full read of the content can tell.
        try:
            proven = check_complete(part, name=dest.name, url=url)
        except CorruptFileError as err:
            raise DownloadError(f"{what}: the server sent no length and closed the connection after {done} "
                                f"bytes; {part} does not read to its end ({err.reason})."
                                f"{_next_run(part, meta, url)}") from err
        if not proven:
            raise DownloadError(f"{what}: the server sent no length and closed the connection after {done} "
                                f"bytes; nothing proves {part} complete (pin its SHA-256 in DATASET_SOURCES "
                                f"to accept it).{_next_run(part, meta, url)}")
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return Downloaded(dest, digest, resumed_from=offset)


# ------------------------------------------------------------------------------------------ extract
def _is_within(base: Path, target: Path) -> bool:
    base, target = os.path.realpath(base), os.path.realpath(target)
    return os.path.commonpath([base, target]) == base


def _is_absolute(name: str) -> bool:
    name = name.replace("\\", "/")
    return name.startswith("/") or (len(name) > 1 and name[1] == ":")


def _check_zip_member(info: zipfile.ZipInfo, dest: Path) -> None:
    name = info.filename.replace("\\", "/")
    pure = PurePosixPath(name)
    if _is_absolute(name):
        raise UnsafeArchiveError(f"zip member {info.filename!r} has an absolute path")
    if ".." in pure.parts:
        raise UnsafeArchiveError(f"zip member {info.filename!r} has a '..' component")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        # zipfile would write the link target as a small text file; we accept no links at all
        raise UnsafeArchiveError(f"zip member {info.filename!r} is a symbolic link")
    if not _is_within(dest, dest / name):
        raise UnsafeArchiveError(f"zip member {info.filename!r} would be written outside {dest}")


def safe_extract(archive, dest, *, url: str | None = None) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``dest``; returns the extracted file paths.

    Every member is checked before anything is written: tar members for absolute paths, then through
    ``tarfile.data_filter`` (``..``, links leaving ``dest``, devices and special files are refused), zip
    members for absolute paths, ``..`` components and symbolic links. Refusals raise
    :class:`UnsafeArchiveError` naming the member. A truncated or corrupt archive, or a file that is
    no archive at all, raises :class:`CorruptFileError` naming ``archive`` and ``url`` (where it came
    from, for the message); what was extracted before the error stays in ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        files = _extract(archive, Path(os.path.realpath(dest)))
    except _CORRUPT_ARCHIVE_ERRORS as err:
        raise CorruptFileError(archive, f"{type(err).__name__}: {err}", url=url) from err
    if files is None:
        raise CorruptFileError(archive, "it is neither a tar nor a zip archive (is the download an HTML "
                                        "error page?)", url=url)
    return files


def _extract(archive: Path, dest_real: Path) -> list[Path] | None:
    """:func:`safe_extract`'s work; None when ``archive`` is neither a zip nor a tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_zip_member(info, dest_real)
            zf.extractall(dest_real)
            return [dest_real / i.filename for i in infos if not i.is_dir()]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                if _is_absolute(member.name):  # data_filter would strip the slash; we refuse outright
                    raise UnsafeArchiveError(f"tar member {member.name!r} has an absolute path")
                try:
                    tarfile.data_filter(member, str(dest_real))
                except tarfile.FilterError as err:
                    raise UnsafeArchiveError(f"tar member {member.name!r} refused: {err}") from None
            tf.extractall(dest_real, filter="data")
            return [dest_real / m.name for m in members if m.isfile()]
    return None


def collect_files(src, dest, suffixes: Iterable[str]) -> dict:
    """Move every file under ``src`` whose suffix is in ``suffixes`` (case-insensitive) flat into ``dest``.

    The dataset archives nest their images in different folders (``paris/<landmark>/``, ``jpg/``, ...)
    while the loaders expect one flat folder. Two files with the same name: the larger one is kept
    (a full-resolution copy beats a reduced one). Returns counts: ``moved``, ``duplicates``.
    """
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    suffixes = {s.lower() for s in suffixes}
    moved = duplicates = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix.lower() not in suffixes or path.name.startswith("._"):  # skip macOS resource forks
            continue
        target = dest / path.name
        if target.exists():
            duplicates += 1
            if path.stat().st_size <= target.stat().st_size:
                continue
        os.replace(path, target)
        moved += 1
    return {"moved": moved, "duplicates": duplicates}


# ------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``action``: "save" (keep as is in the dataset folder) or "extract" (unpack,
    then collect the files with ``suffixes`` flat into ``target``, relative to the data root)."""
    url: str
    #: pinned here, or else in :data:`helpers.data.PINNED_SHA256` (the one table of checksums)
    sha256: str | None = None
    action: str = "extract"
    target: str = ""
    suffixes: tuple[str, ...] = (".jpg",)
    size_hint: str = ""

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __post_init__(self):
        if self.sha256 is None:
            object.__setattr__(self, "sha256", known_sha256(self.filename))


@dataclass(frozen=True)
class DatasetSource:
    """How to obtain one dataset: files, and the image folder with the expected image count, used to
    skip the image archives when they are already unpacked (e.g. roxford5k after oxford5k)."""
    name: str
    files: tuple[RemoteFile, ...]
    images_target: str = ""
    expected_images: int | None = None
    notes: str = ""


_OX = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
_PA = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
_REVISITOP = "http://cmp.felk.cvut.cz/revisitop/data/datasets"

_OXFORD_IMAGES = RemoteFile(f"{_OX}/oxbuild_images-v1.tgz", target="oxford5k/jpg", size_hint="GB-scale image archive")
_PARIS_IMAGES = (RemoteFile(f"{_PA}/paris_1-v1.tgz", target="paris6k/jpg", size_hint="GB-scale image archive"),
                 RemoteFile(f"{_PA}/paris_2-v1.tgz", target="paris6k/jpg", size_hint="GB-scale image archive"))

DATASET_SOURCES: dict[str, DatasetSource] = {
    "oxford5k": DatasetSource(
        "oxford5k",
        (_OXFORD_IMAGES,
         RemoteFile(f"{_OX}/gt_files_170407.tgz", target="oxford5k/gt", suffixes=(".txt",), size_hint="small")),
        images_target="oxford5k/jpg", expected_images=5063,
        notes="Philbin et al., CVPR 2007: 5063 images, 55 queries (11 landmarks x 5)."),
    "paris6k": DatasetSource(
        "paris6k",
        _PARIS_IMAGES + (RemoteFile(f"{_PA}/paris_120310.tgz", target="paris6k/gt", suffixes=(".txt",),
                                    size_hint="small"),),
        images_target="paris6k/jpg", expected_images=6392,
        notes="Philbin et al., CVPR 2008: 6412 files (20 of them corrupt), 55 queries. expected_images is "
              "6412 - 20 so that a folder cleaned of the corrupt files counts as complete."),
    "roxford5k": DatasetSource(
        "roxford5k",
        (_OXFORD_IMAGES,
         RemoteFile(f"{_REVISITOP}/roxford5k/gnd_roxford5k.pkl", action="save", target="roxford5k",
                    size_hint="small")),
        images_target="oxford5k/jpg", expected_images=5063,
        notes="Radenovic et al., CVPR 2018: 4993 images, 70 queries; images shared with oxford5k."),
    "rparis6k": DatasetSource(
        "rparis6k",
        _PARIS_IMAGES + (RemoteFile(f"{_REVISITOP}/rparis6k/gnd_rparis6k.pkl", action="save", target="rparis6k",
                                    size_hint="small"),),
        images_target="paris6k/jpg", expected_images=6392,
        notes="Radenovic et al., CVPR 2018: 6322 images, 70 queries; images shared with paris6k."),
    "holidays": DatasetSource(
        "holidays",
        (RemoteFile("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg1.tar.gz", target="holidays/jpg", size_hint="GB-scale image archive"),
         RemoteFile("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg2.tar.gz", target="holidays/jpg", size_hint="GB-scale image archive")),
        images_target="holidays/jpg", expected_images=1491,
        notes="Jegou et al., ECCV 2008: 1491 images in 500 groups; some photos are stored rotated."),
    "ukbench": DatasetSource(
        "ukbench",
        (RemoteFile("https://archive.org/download/ukbench/ukbench.zip", target="ukbench/jpg", size_hint="GB-scale image archive"),),
        images_target="ukbench/jpg", expected_images=10200,
        notes="Nister and Stewenius, CVPR 2006: 10200 images in groups of 4 (archive.org mirror)."),
}


def _count_images(folder: Path, suffixes=(".jpg", ".jpeg")) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in suffixes)


def install_dataset(source: DatasetSource | str, root, *, keep_archives: bool = False,
                    timeout: float = DEFAULT_TIMEOUT_S, log: Callable[[str], None] = print,
                    progress: Callable[[int, int | None], None] | None = None) -> dict[str, str]:
    """Download, verify and unpack one dataset under the data root ``root``.

    Archives go to ``<root>/_downloads/`` through :func:`download` (kept there until unpacked, so an
    interrupted run resumes, and checked again when found there), are unpacked into a temporary folder
    with :func:`safe_extract`, and their images / ground-truth files are collected flat into the target
    folder. An archive that does not unpack to its end is deleted and :class:`CorruptFileError` raised
    (the next run downloads it again). Image archives are skipped when the image folder already holds
    ``expected_images`` images. ``log`` receives the progress lines and the reports of files found
    incomplete on disk. Returns {file name: SHA-256} of the files downloaded or verified now.
    """
    if isinstance(source, str):
        if source not in DATASET_SOURCES:
            raise ValueError(f"no download source for {source!r}; known: {', '.join(DATASET_SOURCES)}")
        source = DATASET_SOURCES[source]
    root = Path(root)
    downloads = root / "_downloads"
    digests: dict[str, str] = {}
    images_done = (source.expected_images is not None and source.images_target
                   and _count_images(root / source.images_target) >= source.expected_images)
    for remote in source.files:
        target = root / remote.target
        if remote.action == "extract" and images_done and remote.target == source.images_target:
            log(f"{remote.filename}: skipped, {target} already holds the images")
            continue
        if remote.action == "save":
            log(f"downloading {remote.url} -> {target / remote.filename}")
            result = download(remote.url, target / remote.filename, remote.sha256, timeout=timeout,
                              progress=progress, log=log)
            digests[remote.filename] = result.sha256
            continue
        if remote.action != "extract":
            raise ValueError(f"{remote.filename}: unknown action {remote.action!r}")
        log(f"downloading {remote.url} ({remote.size_hint or 'size unknown'}) -> {downloads / remote.filename}")
        result = download(remote.url, downloads / remote.filename, remote.sha256, timeout=timeout,
                          progress=progress, log=log)
        digests[remote.filename] = result.sha256
        tmp = root / f"_extract_{remote.filename}"
        if tmp.exists():
            shutil.rmtree(tmp)
        log(f"extracting {remote.filename}")
        try:
            safe_extract(result.path, tmp, url=remote.url)
        except CorruptFileError as err:
            # Its length or checksum matched, yet it does not read: useless on disk, so fetched anew.
            shutil.rmtree(tmp, ignore_errors=True)
            result.path.unlink(missing_ok=True)
            raise CorruptFileError(result.path, err.reason, url=remote.url,
                                   remedy="It was deleted: run data_scripts/download_datasets.py again to "
                                          "download it anew.") from err
        counts = collect_files(tmp, target, remote.suffixes)
        shutil.rmtree(tmp)
        log(f"{remote.filename}: {counts['moved']} files into {target}"
            + (f" ({counts['duplicates']} duplicate names, kept the larger)" if counts["duplicates"] else ""))
        if counts["moved"] == 0 and counts["duplicates"] == 0:
            raise DownloadError(f"{result.path} (from {remote.url}) contained no {'/'.join(remote.suffixes)} "
                                "files: is the URL in DATASET_SOURCES still the dataset's archive?")
        if not keep_archives:
            result.path.unlink()
    return digests
