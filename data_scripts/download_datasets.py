"""Download a public retrieval benchmark into the layout ``helpers.data.load_dataset`` reads.

Usage::

    python data_scripts/download_datasets.py NAME [NAME ...] [--root DIR] [--keep-archives]
    python data_scripts/download_datasets.py --list

NAME is one of oxford5k, paris6k, roxford5k, rparis6k, holidays, ukbench (see
``helpers.downloads.DATASET_SOURCES`` for the URLs). The data root defaults to ``$INSTRET_DATA`` or
``<repo>/data``. A file is kept only once its length, its pinned SHA-256 or a full read of the archive
proves it complete; until then it stays ``<name>.part``, and the next run resumes it where the server
sends an ETag or Last-Modified validator (otherwise, or when the file changed on the server, it is
downloaded again from the start). Files whose SHA-256 is not pinned in the registry are printed with
their digest so that you can pin them. The demo sets are not downloaded:
they are generated on first use (or with ``python data_scripts/make_demo.py``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.data import data_root, load_dataset  # noqa: E402
from helpers.downloads import DATASET_SOURCES, DownloadError, UnsafeArchiveError, install_dataset  # noqa: E402


class ProgressPrinter:
    """Prints "done / total MB" to stderr at most twice a second."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < self.interval_s and (total is None or done < total):
            return
        self.last = now
        mb = done / 2**20
        text = f"{mb:9.1f} / {total / 2**20:.1f} MB" if total else f"{mb:9.1f} MB"
        print(f"\r  {text}", end="" if total is None or done < total else "\n", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(DATASET_SOURCES)}")
    parser.add_argument("--root", type=Path, default=None, help="data root (default: $INSTRET_DATA or <repo>/data)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives after unpacking")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    parser.add_argument("--list", action="store_true", help="list the datasets and their URLs")
    args = parser.parse_args(argv)
    if not args.list and not args.names:
        parser.error("give at least one dataset NAME (or --list)")
    for name in args.names:
        if name in ("demo", "demo-train"):
            parser.error(f"{name!r} is generated, not downloaded: python data_scripts/make_demo.py")
        if name not in DATASET_SOURCES:
            parser.error(f"unknown dataset {name!r}; choose from {', '.join(DATASET_SOURCES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for source in DATASET_SOURCES.values():
            print(f"{source.name}: {source.notes}")
            for remote in source.files:
                print(f"    {remote.url}  ({remote.size_hint or '?'}, sha256 {remote.sha256 or 'not pinned'})")
        return 0
    root = args.root if args.root is not None else data_root()
    status = 0
    for name in args.names:
        print(f"== {name} -> {root}")
        try:
            digests = install_dataset(name, root, keep_archives=args.keep_archives, timeout=args.timeout,
                                      progress=ProgressPrinter())
        except DownloadError as err:
            print(f"error: {err}", file=sys.stderr)
            print("To retry, run the same command again: files proven complete are kept, an interrupted "
                  "download resumes where the server allows it and starts over where it does not.",
                  file=sys.stderr)
            status = 1
            continue
        except UnsafeArchiveError as err:
            print(f"error: refusing an unsafe archive: {err}", file=sys.stderr)
            status = 1
            continue
        pinned = {r.filename: r.sha256 for r in DATASET_SOURCES[name].files}
        for filename, digest in digests.items():
            if not pinned.get(filename):
                print(f"  sha256 {filename} = {digest}   (not pinned: add it to helpers/downloads.py to verify "
                      "future downloads)")
        try:
            dataset = load_dataset(name, root)
        except Exception as err:  # report, but the files are on disk
            print(f"error: downloaded, but load_dataset({name!r}) fails: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"  ok: {dataset.summary()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
