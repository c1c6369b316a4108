"""The on-disk cache shared by the whole suite: where it lives, how entries are named and written,
and what happens to damaged entries and to the leftovers of killed writers.

Every cache of the suite (feature maps and vectors in :mod:`helpers.features`, RoI arrays in
:mod:`helpers.roi`, trained heads in :mod:`helpers.actnet`, ground-truth files in
:mod:`helpers.data`) goes through these functions:

* :func:`cache_root` -- ``$INSTRET_CACHE`` or ``<repo>/cache``; the first call for a root in a process
  removes the temporary files of writers that died (:func:`remove_stale_temporaries`).
* :func:`safe_name` -- one spelling of a key part as a file name.
* :func:`atomic_path` / :func:`atomic_write` -- a file is written under a temporary name in its folder
  and renamed over its final name when complete, so a crash or a concurrent reader never sees half
  a file.
* :func:`read_entry` -- read a cached file; a damaged one (truncated archive, bad JSON, a size that
  does not match its index) is reported with a :class:`DamagedCacheWarning` naming the entry,
  deleted, and read as missing, so the caller rebuilds it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import time
import uuid
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

__all__ = [
    "DamagedCacheError", "DamagedCacheWarning", "atomic_path", "atomic_write", "cache_root", "read_entry",
    "remove_stale_temporaries", "safe_name", "shown_path",
]

T = TypeVar("T")


def shown_path(path) -> str:
    """A path as messages print it: relative to the repository inside it, ``~/...`` inside the home
    folder, otherwise as it is, so that a chapter's committed output names no one machine's folders."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    for base, prefix in ((Path(__file__).resolve().parent.parent, ""), (Path.home().resolve(), "~/")):
        if resolved.is_relative_to(base):
            return prefix + resolved.relative_to(base).as_posix()
    return str(path)

#: Temporary files are named ``.<final name>.<pid>-<random>.tmp`` (see :func:`atomic_path`).
_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\.tmp$")
#: A temporary file older than this is stale even if its pid is alive (pids are reused, and a
#: cache on a shared disk sees other machines' pids).
STALE_AFTER_S = 24 * 3600
_cleaned_roots: set[str] = set()


class DamagedCacheWarning(UserWarning):
    """A cache entry could not be read; it was deleted and will be rebuilt."""


class DamagedCacheError(ValueError):
    """Raised by a cache reader for a file that is readable but inconsistent (e.g. its size does not
    match its index); :func:`read_entry` treats it like any other damage."""


#: What reading a damaged file raises (truncated zip/npz, bad JSON, short pickle, torch's zip reader).
DAMAGE_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError,
                 pickle.UnpicklingError, RuntimeError, DamagedCacheError)


def cache_root() -> Path:
    """``$INSTRET_CACHE`` or ``<repo>/cache``. The first call for a root in this process removes
    the temporary files that killed writers left there."""
    env = os.environ.get("INSTRET_CACHE")
    root = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "cache"
    if str(root) not in _cleaned_roots:
        _cleaned_roots.add(str(root))
        remove_stale_temporaries(root)
    return root


def safe_name(text) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_.=+-]`` replaced by ``_`` (a file-name part)."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", str(text))


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(root) -> list[Path]:
    """Delete the temporary files under ``root`` whose writer process is gone (or that are older than
    :data:`STALE_AFTER_S`); returns what was deleted."""
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    now = time.time()
    for folder, _, files in os.walk(root):
        for name in files:
            match = _TEMPORARY.match(name)
            if not match:
                continue
            path = Path(folder) / name
            try:
                old = now - path.stat().st_mtime > STALE_AFTER_S
                if old or not _writer_alive(int(match.group(1))):
                    path.unlink()
                    removed.append(path)
            except OSError:  # removed meanwhile by another cleaner
                continue
    return removed


@contextmanager
def atomic_path(path):
    """A temporary path in the folder of ``path`` for the ``with`` block to write; when the block
    ends without an exception the file replaces ``path`` in one step, otherwise it is removed.

    The temporary file is not created here but by the writer: re-opening an existing empty file
    with ``"wb"`` truncates it, and on ext4 a truncated file is flushed to disk when it is closed,
    which would make every cache write wait for the disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path, write: Callable[[str], object]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder, which then
    replaces ``path`` (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)


def read_entry(path, read: Callable[[Path], T], what: str = "cache entry", remove=()) -> T | None:
    """``read(path)``, or None when ``path`` is missing or damaged.

    A damaged file (any of :data:`DAMAGE_ERRORS` while reading it) is reported with a
    :class:`DamagedCacheWarning` that names it and says it will be rebuilt; it is deleted together
    with the files in ``remove`` (the other files of the same entry), so the caller's rebuild starts
    clean.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read(path)
    except DAMAGE_ERRORS as exc:
        warnings.warn(f"unreadable cache file {path} ({what}; {type(exc).__name__}: {exc}): the entry is "
                      "damaged, deleted and will be rebuilt", DamagedCacheWarning, stacklevel=3)
        for p in (path, *remove):
            try:
                Path(p).unlink()
            except FileNotFoundError:
                pass
        return None
