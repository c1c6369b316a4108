"""Downloading and unpacking the public benchmarks: resumable, verified, safe.

* :func:`download` streams a URL to ``dest.part``, resumes an interrupted transfer with an HTTP Range
  request (and starts over when the server ignores it), checks the SHA-256 when one is given and
  moves the file into place atomically. urllib only; http, https and ftp URLs.
* :func:`safe_extract` unpacks tar (with ``tarfile``'s ``"data"`` filter) and zip archives after
  checking every member first, so that an archive with an absolute path, a ``..`` component or a
  link pointing out of the destination writes nothing at all.
* :data:`DATASET_SOURCES` lists the published URLs of each dataset and where their content goes; the
  layout is the one :func:`helpers.data.load_dataset` reads. :func:`install_dataset` does the whole job
  and ``python data_scripts/download_datasets.py NAME`` is its command line.

Checksums. The SHA-256 of the published files could not be recorded here (the project was written
without internet access), so every ``sha256`` in the registry is ``None`` and the files are checked
only for their length (when the server sends one) and for being readable archives. After a download,
the script prints each file's SHA-256; paste it into :data:`DATASET_SOURCES` to pin the file. The
ground-truth pickles are additionally read with a restricted unpickler (:mod:`helpers.data`), so a
tampered pickle cannot run code even when no checksum is pinned.

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

import hashlib
import http.client
import os
import shutil
import socket
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

USER_AGENT = "instret-download/1.0 (+python urllib)"
DEFAULT_TIMEOUT_S = 60.0
CHUNK_SIZE = 1 << 20

#: Paris 6k files that are HTML error pages, not JPEGs (https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/corrupt.txt).
PARIS6K_CORRUPT_IMAGES = (
    "paris_louvre_000136.jpg", "paris_louvre_000146.jpg", "paris_moulinrouge_000422.jpg",
    "paris_museedorsay_001059.jpg", "paris_notredame_000188.jpg", "paris_pantheon_000284.jpg",
    "paris_pantheon_000960.jpg", "paris_pantheon_000974.jpg", "paris_pompidou_000195.jpg",
    "paris_pompidou_000196.jpg", "paris_pompidou_000201.jpg", "paris_pompidou_000467.jpg",
    "paris_pompidou_000640.jpg", "paris_sacrecoeur_000299.jpg", "paris_sacrecoeur_000330.jpg",
    "paris_sacrecoeur_000353.jpg", "paris_triomphe_000662.jpg", "paris_triomphe_000833.jpg",
    "paris_triomphe_000863.jpg", "paris_triomphe_000867.jpg",
)


# ------------------------------------------------------------------------------------------ errors
class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, short transfer); the ``.part`` file is kept for resuming."""


class ChecksumMismatchError(DownloadError):
    """The downloaded file's SHA-256 is not the expected one (the file has been deleted)."""

    def __init__(self, path, expected: str, actual: str):
        self.path, self.expected, self.actual = str(path), expected, actual
        super().__init__(f"SHA-256 mismatch for {self.path}: expected {expected}, got {actual}; "
                         "the file was deleted (corrupt transfer or a changed file on the server)")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination (absolute path, '..', link, device)."""


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


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range_start(value: str | None) -> int | None:
    """Start offset of a ``Content-Range: bytes START-END/TOTAL`` header."""
    if not value or not value.strip().startswith("bytes "):
        return None
    try:
        return int(value.strip()[6:].split("-", 1)[0])
    except ValueError:
        return None


def _kept(part: Path) -> str:
    if part.is_file() and part.stat().st_size > 0:
        return f" The partial file {part} is kept and the next run resumes it."
    return ""


def download(url: str, dest, sha256: str | None = None, resume: bool = True, *,
             timeout: float = DEFAULT_TIMEOUT_S, progress: Callable[[int, int | None], None] | None = None,
             chunk_size: int = CHUNK_SIZE) -> Downloaded:
    """Download ``url`` to ``dest`` through ``dest.part``; resume, verify, then move into place.

    * ``dest`` already exists: nothing is transferred if ``sha256`` is None or matches; on a mismatch the
      file is downloaded again.
    * ``resume`` and a non-empty ``dest.part``: asks for the rest with ``Range: bytes=N-``. A 206 reply
      whose Content-Range starts at N is appended; a 200 reply (server ignores Range, or FTP) restarts
      from zero; a 416 reply (nothing left to send, or a stale part) restarts from zero.
    * A short transfer (fewer bytes than Content-Length) raises :class:`DownloadError` and keeps the part.
    * ``sha256`` given and different: the part is deleted and :class:`ChecksumMismatchError` raised.
    * ``progress(done_bytes, total_bytes_or_None)`` is called after every chunk.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        digest = sha256_file(dest)
        if expected is None or digest == expected:
            return Downloaded(dest, digest, already_present=True)
        dest.unlink()  # wrong content under the final name: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if resume and part.is_file() else 0
    if not resume and part.exists():
        part.unlink()

    try:
        try:
            response = _open(url, start, timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and start > 0:  # the part is complete or larger than the file: start over
                part.unlink()
                start = 0
                response = _open(url, 0, timeout)
            else:
                raise
        with response:
            status = getattr(response, "status", None)
            offset = 0
            if start > 0 and status == 206:
                offset = _content_range_start(response.headers.get("Content-Range"))
                if offset != start:
                    raise DownloadError(f"{url}: asked to resume at byte {start}, server sent Content-Range "
                                        f"{response.headers.get('Content-Range')!r}; delete {part} and retry")
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
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
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"{url}: cannot connect ({err.reason}). Are you offline?{_kept(part)}") from err
    except (socket.timeout, TimeoutError) as err:
        raise DownloadError(f"{url}: no data for {timeout:.0f} s (timeout).{_kept(part)}") from err
    except (OSError, http.client.HTTPException) as err:  # connection reset, short read, disk full
        raise DownloadError(f"{url}: transfer interrupted ({type(err).__name__}: {err}).{_kept(part)}") from err

    if total is not None and done != total:
        raise DownloadError(f"{url}: received {done} of {total} bytes.{_kept(part)}")
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink()
        raise ChecksumMismatchError(dest, expected, digest)
    os.replace(part, dest)
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


def safe_extract(archive, dest) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``dest``; returns the extracted file paths.

    Every member is checked before anything is written: tar members for absolute paths, then through
    ``tarfile.data_filter`` (``..``, links leaving ``dest``, devices and special files are refused), zip
    members for absolute paths, ``..`` components and symbolic links. Refusals raise
    :class:`UnsafeArchiveError` naming the member.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    dest_real = Path(os.path.realpath(dest))
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
    raise ValueError(f"{archive} is neither a tar nor a zip archive (is the download an HTML error page?)")


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
    sha256: str | None = None
    action: str = "extract"
    target: str = ""
    suffixes: tuple[str, ...] = (".jpg",)
    size_hint: str = ""

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


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


def known_sha256(filename: str) -> str | None:
    """The SHA-256 pinned in :data:`DATASET_SOURCES` for a file name, or None."""
    for source in DATASET_SOURCES.values():
        for remote in source.files:
            if remote.filename == filename and remote.sha256:
                return remote.sha256
    return None


def _count_images(folder: Path, suffixes=(".jpg", ".jpeg")) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in suffixes)


def install_dataset(source: DatasetSource | str, root, *, keep_archives: bool = False,
                    timeout: float = DEFAULT_TIMEOUT_S, log: Callable[[str], None] = print,
                    progress: Callable[[int, int | None], None] | None = None) -> dict[str, str]:
    """Download, verify and unpack one dataset under the data root ``root``.

    Archives go to ``<root>/_downloads/`` (kept there until unpacked, so an interrupted run resumes),
    are unpacked into a temporary folder with :func:`safe_extract`, and their images / ground-truth
    files are collected flat into the target folder. Image archives are skipped when the image folder
    already holds ``expected_images`` images. Returns {file name: SHA-256} of what was downloaded now.
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
                              progress=progress)
            digests[remote.filename] = result.sha256
            continue
        if remote.action != "extract":
            raise ValueError(f"{remote.filename}: unknown action {remote.action!r}")
        log(f"downloading {remote.url} ({remote.size_hint or 'size unknown'}) -> {downloads / remote.filename}")
        result = download(remote.url, downloads / remote.filename, remote.sha256, timeout=timeout,
                          progress=progress)
        digests[remote.filename] = result.sha256
        tmp = root / f"_extract_{remote.filename}"
        if tmp.exists():
            shutil.rmtree(tmp)
        log(f"extracting {remote.filename}")
        safe_extract(result.path, tmp)
        counts = collect_files(tmp, target, remote.suffixes)
        shutil.rmtree(tmp)
        log(f"{remote.filename}: {counts['moved']} files into {target}"
            + (f" ({counts['duplicates']} duplicate names, kept the larger)" if counts["duplicates"] else ""))
        if counts["moved"] == 0 and counts["duplicates"] == 0:
            raise DownloadError(f"{remote.filename} contained no {'/'.join(remote.suffixes)} files")
        if not keep_archives:
            result.path.unlink()
    return digests
