"""Retrieval datasets in one ground-truth format (revisitop's), and the registry that loads them.

Every dataset, whatever its origin, becomes a :class:`RetrievalDataset`: a list of database images
(``imlist``), a list of query images (``qimlist``) and, per query, a dict ``gnd[q]`` with int lists
``"easy"``, ``"hard"``, ``"junk"`` (0-based indices into ``imlist``) and ``"bbx"`` (the query box
``[x1, y1, x2, y2]`` in original-image pixels, or ``None`` for the whole image). This is the format of
the revisited Oxford and Paris benchmarks (Radenovic et al., "Revisiting Oxford and Paris: Large-scale
image retrieval benchmarking", CVPR 2018); ``protocol`` tells :mod:`helpers.evaluate` how to read it:

* ``"revisited"`` -- roxford5k / rparis6k: the Easy / Medium / Hard settings of the paper.
* ``"classic"``   -- oxford5k / paris6k (Philbin et al., CVPR 2007 / 2008): "good" is stored as easy,
  "ok" as hard, "junk" as junk; positives = good + ok.
* ``"holidays"``  -- INRIA Holidays (Jegou et al., ECCV 2008) and ``folder:PATH``: positives = the other
  images of the query's group, the query itself is in the database and listed as junk.
* ``"ukbench"``   -- UKBench (Nister and Stewenius, CVPR 2006): groups of 4, every image is a query.

Registry (:func:`load_dataset`) and where the files live under the data root (:func:`data_root`,
``$INSTRET_DATA`` or ``<repo>/data``); ``python data_scripts/download_datasets.py NAME`` produces it::

    demo/gnd_demo.json, demo/gnd_demo-train.json, demo/jpg/...   python data_scripts/make_demo.py
    oxford5k/jpg/*.jpg  oxford5k/gt/<landmark>_<k>_{query,good,ok,junk}.txt
    paris6k/jpg/*.jpg   paris6k/gt/<landmark>_<k>_{query,good,ok,junk}.txt
    roxford5k/gnd_roxford5k.pkl   images: roxford5k/jpg/ if present, else oxford5k/jpg/
    rparis6k/gnd_rparis6k.pkl     images: rparis6k/jpg/ if present, else paris6k/jpg/
    holidays/jpg/100000.jpg ...   (1491 images, 500 queries)
    ukbench/jpg/ukbench00000.jpg ...   (10200 images, all queries)
    folder:PATH  any folder with one subfolder per instance

Known problems of the public data that the loaders deliberately leave alone:

* Paris 6k contains 20 corrupt files (HTML error pages saved as .jpg; listed in
  :data:`PARIS6K_CORRUPT_IMAGES`). They stay in the classic image list (revisitop's
  rparis6k list already excludes them); :func:`helpers.images.load_image` raises ``ImageReadError`` on
  them and the feature extractor skips them with a warning.
* INRIA Holidays: a few percent of the photos are stored rotated by 90 degrees without an EXIF
  orientation tag. Several papers report results on a hand-rotated copy ("Holidays, rotated"); we use
  the files as published. :func:`helpers.images.load_image` applies the EXIF orientation when a file
  has one, and nothing else.

The ground-truth pickles of revisitop (``gnd_*.pkl``) are read with a restricted unpickler that only
admits plain containers and numpy arrays (:func:`load_ground_truth_pickle`), after checking the
file's SHA-256 when the download registry knows it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from helpers.cache import atomic_write

PROTOCOLS = ("revisited", "classic", "holidays", "ukbench")
GROUND_TRUTH_KEYS = ("easy", "hard", "junk")
#: File extensions the "folder:" loader treats as images (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Prefix of the query names in the classic Oxford ground-truth files; the image files lack it.
OXFORD_QUERY_PREFIX = "oxc1_"
DOWNLOAD_SCRIPT = "data_scripts/download_datasets.py"

#: The datasets that :func:`load_dataset` knows by name (plus ``"folder:PATH"``).
DATASET_NAMES = ("demo", "demo-train", "oxford5k", "paris6k", "roxford5k", "rparis6k", "holidays", "ukbench")
DEMO_NAMES = ("demo", "demo-train")
CLASSIC_NAMES = ("oxford5k", "paris6k")
REVISITED_NAMES = ("roxford5k", "rparis6k")
#: The classic set whose images a revisited set uses when it has no ``jpg/`` folder of its own.
REVISITED_IMAGES_FROM = {"roxford5k": "oxford5k", "rparis6k": "paris6k"}
#: Training set used to learn whitening / heads for an evaluated set (never the evaluated set).
_TRAIN_PARTNER = {"roxford5k": "rparis6k", "rparis6k": "roxford5k", "oxford5k": "paris6k", "paris6k": "oxford5k"}
FOLDER_PREFIX = "folder:"

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

#: SHA-256 of published files, where the publisher states one (the one table of checksums: the
#: downloader verifies against it, and the loaders check ground-truth files with it). revisitop
#: publishes none for its ``gnd_*.pkl`` files, so they are checked by the restricted unpickler only.
PINNED_SHA256: dict[str, str] = {}


def known_sha256(filename: str) -> str | None:
    """The SHA-256 pinned for a published file name (:data:`PINNED_SHA256`), or None."""
    return PINNED_SHA256.get(filename)


# ---------------------------------------------------------------------------------------- errors
class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset is not on disk; the message names the expected path and the download command."""

    def __init__(self, name: str, expected: Path | str, command: str | None = None, detail: str = ""):
        self.name = name
        self.expected = str(expected)
        self.command = command
        self.detail = detail
        message = f"dataset {name!r} not found: expected {self.expected}"
        if detail:
            message += f" ({detail})"
        if command:
            message += f". Download it with:  {command}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.name, self.expected, self.command, self.detail))


class UnsafePickleError(pickle.UnpicklingError):
    """A ground-truth pickle asked for something other than plain containers and numpy arrays."""


# ------------------------------------------------------------------------------------ data root
def repo_root() -> Path:
    """The repository root (parent of the ``helpers`` package directory)."""
    return Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """``$INSTRET_DATA`` if set, else ``<repo root>/data``."""
    env = os.environ.get("INSTRET_DATA")
    return Path(env).expanduser() if env else repo_root() / "data"


def _resolve_root(root) -> Path:
    return Path(root).expanduser() if root is not None else data_root()


def download_command(name: str, root=None) -> str:
    """The shell command that downloads dataset ``name`` (into ``root`` when it is not the default)."""
    command = f"python {DOWNLOAD_SCRIPT} {name}"
    if root is not None and Path(root).expanduser().resolve() != data_root().resolve():
        command += f" --root {root}"
    return command


# ------------------------------------------------------------------------------------ validation
def _as_int_list(values, what: str) -> list[int]:
    if values is None:
        return []
    if hasattr(values, "tolist"):  # numpy arrays and scalars
        values = values.tolist()
    if isinstance(values, (int,)) and not isinstance(values, bool):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{what} must be a list of integers, got {type(values).__name__}") from None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f"{what} must contain integers, found {v!r}")
        out.append(int(v))
    return out


def _as_bbx(bbx, what: str) -> list[float] | None:
    """A well-formed box [x1, y1, x2, y2] (finite, x1 < x2, y1 < y2) as floats, or None.

    Coordinates are not checked against the image size (that needs the image); cropping clips.
    """
    if bbx is None:
        return None
    if hasattr(bbx, "tolist"):
        bbx = bbx.tolist()
    try:
        coords = [float(c) for c in bbx]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: bbx must be 4 numbers [x1, y1, x2, y2] or None, got {bbx!r}") from None
    if len(coords) == 0:
        return None  # revisitop stores "no box" as an empty array in some files
    if len(coords) != 4:
        raise ValueError(f"{what}: bbx must have 4 numbers [x1, y1, x2, y2], got {len(coords)}: {bbx!r}")
    if not all(c == c and abs(c) != float("inf") for c in coords):
        raise ValueError(f"{what}: bbx has a non-finite coordinate: {coords}")
    x1, y1, x2, y2 = coords
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"{what}: bbx must satisfy x1 < x2 and y1 < y2, got {coords}")
    return coords


def normalize_ground_truth(gnd: Sequence[Mapping], n_db: int, n_queries: int) -> list[dict]:
    """Validated copy of ``gnd`` with plain Python ints / floats (numpy arrays accepted on input).

    Checks: one entry per query, indices in ``[0, n_db)``, no duplicates and easy / hard / junk
    pairwise disjoint (what :func:`helpers.evaluate.compute_map` requires), bbx well formed.
    Missing "easy"/"hard"/"junk" keys are taken as empty; a missing "bbx" as None.
    """
    if not isinstance(gnd, (list, tuple)):
        raise ValueError(f"gnd must be a list with one dict per query, got {type(gnd).__name__}")
    if len(gnd) != n_queries:
        raise ValueError(f"gnd has {len(gnd)} entries but there are {n_queries} queries")
    out = []
    for q, entry in enumerate(gnd):
        if not isinstance(entry, Mapping):
            raise ValueError(f"gnd[{q}] must be a dict, got {type(entry).__name__}")
        unknown = set(entry) - set(GROUND_TRUTH_KEYS) - {"bbx", "ok"}
        if unknown:
            raise ValueError(f"gnd[{q}] has unknown keys {sorted(unknown)}; expected easy, hard, junk, bbx")
        if "ok" in entry:
            raise ValueError(f"gnd[{q}] has an 'ok' list (old cirtorch format); store good as 'easy' "
                             "and ok as 'hard'")
        clean: dict[str, Any] = {}
        for key in GROUND_TRUTH_KEYS:
            indices = _as_int_list(entry.get(key), f"gnd[{q}][{key!r}]")
            bad = [i for i in indices if not 0 <= i < n_db]
            if bad:
                raise ValueError(f"gnd[{q}][{key!r}] has indices out of range [0, {n_db}): {bad[:5]}")
            if len(set(indices)) != len(indices):
                raise ValueError(f"gnd[{q}][{key!r}] lists an image more than once")
            clean[key] = indices
        for a, b in (("easy", "hard"), ("easy", "junk"), ("hard", "junk")):
            both = set(clean[a]) & set(clean[b])
            if both:
                raise ValueError(f"gnd[{q}]: images {sorted(both)[:5]} are both {a!r} and {b!r}; "
                                 "the lists must be disjoint")
        clean["bbx"] = _as_bbx(entry.get("bbx"), f"gnd[{q}]")
        out.append(clean)
    return out


def _check_image_list(names, what: str) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{what} must be a list of relative image paths, got {type(names).__name__}")
    out = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} must contain non-empty strings, found {name!r}")
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise ValueError(f"{what} entries must be relative paths inside the dataset root: {name!r}")
        out.append(name)
    return out


def _check_labels(labels, n: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(v) for v in labels]
    if len(labels) != n:
        raise ValueError(f"{what} has {len(labels)} entries, expected {n}")
    return labels


# ------------------------------------------------------------------------------------- dataset
@dataclass
class RetrievalDataset:
    """A retrieval benchmark in revisitop's ground-truth format (see the module docstring).

    ``imlist`` / ``qimlist`` are paths relative to ``root``, with extension. ``gnd[q]`` holds int
    lists "easy", "hard", "junk" (indices into ``imlist``) and "bbx" ([x1, y1, x2, y2] floats or None).
    ``instance_labels`` / ``query_labels`` name the instance of each database / query image where it
    is known (demo and folder sets); None for the public benchmarks. Validated on construction.
    """

    name: str
    root: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]
    protocol: str
    instance_labels: list[str] | None = None
    query_labels: list[str] | None = None
    #: identity of the image *contents* where the loader knows it (the demo's manifest digest, a hash
    #: of the bytes of a folder's files); part of :attr:`key`
    content_id: str = ""
    #: images that could not be decoded, ``{full path: reason}``, filled by :mod:`helpers.features`
    #: (:meth:`mark_unreadable`); the evaluation leaves them out of the ground truth
    unreadable: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"dataset name must be a non-empty string, got {self.name!r}")
        self.root = Path(self.root)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        self.imlist = _check_image_list(self.imlist, "imlist")
        self.qimlist = _check_image_list(self.qimlist, "qimlist")
        if len(set(self.imlist)) != len(self.imlist):
            seen, dup = set(), None
            for name in self.imlist:
                if name in seen:
                    dup = name
                    break
                seen.add(name)
            raise ValueError(f"imlist lists {dup!r} more than once")
        self.gnd = normalize_ground_truth(self.gnd, len(self.imlist), len(self.qimlist))
        self.instance_labels = _check_labels(self.instance_labels, len(self.imlist), "instance_labels")
        self.query_labels = _check_labels(self.query_labels, len(self.qimlist), "query_labels")

    @property
    def n_db(self) -> int:
        return len(self.imlist)

    @property
    def n_queries(self) -> int:
        return len(self.qimlist)

    def db_path(self, i: int) -> Path:
        """Full path of database image ``i``."""
        return self.root / self.imlist[i]

    def query_path(self, i: int) -> Path:
        """Full path of query image ``i`` (uncropped; its box is ``gnd[i]["bbx"]``)."""
        return self.root / self.qimlist[i]

    def query_bbx(self, i: int) -> list[float] | None:
        return self.gnd[i]["bbx"]

    def mark_unreadable(self, path, reason: str) -> None:
        """Record that the image file ``path`` could not be decoded (see :attr:`unreadable`)."""
        self.unreadable[str(path)] = str(reason)

    def unreadable_indices(self) -> tuple[list[int], list[int]]:
        """(database indices, query indices) whose image file is in :attr:`unreadable`."""
        bad = self.unreadable
        return ([i for i in range(self.n_db) if str(self.db_path(i)) in bad],
                [q for q in range(self.n_queries) if str(self.query_path(q)) in bad])

    def image_files(self) -> set[str]:
        """The resolved paths of every database and query file (what two datasets share)."""
        return {os.path.realpath(p) for p in [*map(self.db_path, range(self.n_db)),
                                               *map(self.query_path, range(self.n_queries))]}

    @property
    def key(self) -> str:
        """Short stable identity for the feature cache: the name plus a hash of what the features depend on.

        The hash covers imlist, qimlist, the query boxes and :attr:`content_id`, so that a changed image
        list, box or (where the loader can tell) regenerated image is a different cache entry; the root directory and the ground-truth labels are left out
        (moving the data or fixing a label does not invalidate features).
        """
        payload = json.dumps({"imlist": self.imlist, "qimlist": self.qimlist,
                              "bbx": [g["bbx"] for g in self.gnd], "content": self.content_id},
                             separators=(",", ":"))
        digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]
        return f"{_safe_name(self.name)}-{digest}"

    def to_dict(self) -> dict:
        """The JSON-able ground truth (what :func:`save_gnd_json` writes)."""
        return {"imlist": list(self.imlist), "qimlist": list(self.qimlist),
                "gnd": [dict(g) for g in self.gnd], "protocol": self.protocol,
                "instance_labels": self.instance_labels, "query_labels": self.query_labels}

    def summary(self) -> str:
        """One-line summary: size, protocol, positives per query, boxes, root."""
        n_pos = [len(g["easy"]) + len(g["hard"]) for g in self.gnd]
        mean_pos = sum(n_pos) / len(n_pos) if n_pos else 0.0
        n_boxes = sum(g["bbx"] is not None for g in self.gnd)
        labels = f", {len(set(self.instance_labels))} instance labels" if self.instance_labels else ""
        return (f"{self.name}: {self.n_db} database images, {self.n_queries} queries{labels}, "
                f"protocol {self.protocol!r}, {mean_pos:.1f} positives per query, "
                f"{n_boxes} query boxes, images in {self._shown_root()}")

    def _shown_root(self) -> str:
        """The images folder relative to the data root when it lies there (so that printed summaries
        name no path of the machine that printed them), else as given."""
        try:
            return self.root.resolve().relative_to(data_root().resolve()).as_posix()
        except ValueError:
            return str(self.root)


def _safe_name(name: str) -> str:
    """A file-name-safe version of a dataset name (``folder:/a/b`` -> ``folder_b``)."""
    if name.startswith(FOLDER_PREFIX):
        name = "folder_" + Path(name[len(FOLDER_PREFIX):].rstrip("/\\")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:48] or "dataset"


# ------------------------------------------------------------------------------------- JSON files
def _validated_dict(d: Mapping) -> dict:
    """Check a ground-truth dict (as stored in gnd_*.json) and return a clean copy."""
    missing = {"imlist", "qimlist", "gnd", "protocol"} - set(d)
    if missing:
        raise ValueError(f"ground-truth dict lacks keys {sorted(missing)}")
    ds = RetrievalDataset(name="check", root=Path("."), imlist=list(d["imlist"]), qimlist=list(d["qimlist"]),
                          gnd=list(d["gnd"]), protocol=d["protocol"],
                          instance_labels=d.get("instance_labels"), query_labels=d.get("query_labels"))
    return ds.to_dict()


def save_gnd_json(path, dataset_dict) -> Path:
    """Validate and write a ground truth (dict with keys imlist, qimlist, gnd, protocol, instance_labels,
    query_labels; or a :class:`RetrievalDataset`) as JSON, atomically. numpy values are converted."""
    if isinstance(dataset_dict, RetrievalDataset):
        dataset_dict = dataset_dict.to_dict()
    clean = _validated_dict(dataset_dict)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(clean, indent=1), encoding="utf-8"))
    return path


def load_gnd_json(path) -> dict:
    """Read and validate a ground-truth JSON written by :func:`save_gnd_json`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read ground-truth JSON {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    try:
        return _validated_dict(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# --------------------------------------------------------------------------------- safe unpickling
#: Globals a revisitop ground-truth pickle may reference: numpy array / scalar reconstruction only.
SAFE_PICKLE_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytes"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles (Python 2 era) store numpy's raw bytes through it
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside :data:`SAFE_PICKLE_GLOBALS`.

    A pickle can name any importable callable (``os.system``, ``subprocess.Popen``...) and have it
    called while loading; plain dicts, lists, strings and numbers need no global at all, and numpy
    arrays need only the reconstruction functions listed above (the same short list that
    ``torch.load(weights_only=True)`` admits for them). Objects inside object arrays go through this
    same ``find_class``.
    """

    def find_class(self, module, name):
        if module == "__builtin__":  # protocol < 3 pickles name the builtins module as Python 2 did
            module = "builtins"
        if (module, name) in SAFE_PICKLE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to unpickle global {module}.{name}: ground-truth pickles may only "
                                "contain dicts, lists, strings, numbers and numpy arrays")


def load_ground_truth_pickle(path, expected_sha256: str | None = None):
    """Load a revisitop-style pickle safely: SHA-256 check (when known), then :class:`RestrictedUnpickler`."""
    path = Path(path)
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise ValueError(f"{path}: SHA-256 {actual} does not match the recorded {expected_sha256}; "
                             "the file is corrupt or not the published one. Delete it and download it again.")
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except Exception as err:  # truncated or not a pickle at all
        raise ValueError(f"{path}: not a readable ground-truth pickle ({type(err).__name__}: {err})") from err


def revisited_from_pickle(raw: Mapping) -> dict:
    """revisitop's pickle dict (imlist / qimlist without extension, gnd with easy/hard/junk/bbx) -> our dict."""
    if not isinstance(raw, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(raw):
        keys = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(f"a revisitop ground truth has keys imlist, qimlist, gnd; got {keys}")

    def with_ext(name) -> str:
        name = str(name)
        return name if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name + ".jpg"

    gnd = []
    for q, entry in enumerate(raw["gnd"]):
        if not isinstance(entry, Mapping):
            raise ValueError(f"gnd[{q}] must be a dict, got {type(entry).__name__}")
        gnd.append({key: entry.get(key, []) for key in GROUND_TRUTH_KEYS} | {"bbx": entry.get("bbx")})
    return {"imlist": [with_ext(n) for n in raw["imlist"]], "qimlist": [with_ext(n) for n in raw["qimlist"]],
            "gnd": gnd, "protocol": "revisited", "instance_labels": None, "query_labels": None}


# ------------------------------------------------------------------------------- classic Oxford/Paris
_CLASSIC_GT_FILE = re.compile(r"^(?P<landmark>.+)_(?P<k>\d+)_(?P<kind>query|good|ok|junk)\.txt$")


def _read_names(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()]


def parse_classic_ground_truth(gt_dir, imlist: Sequence[str] | None = None,
                               image_ext: str = ".jpg") -> dict:
    """Parse Philbin et al.'s ``<landmark>_<k>_{query,good,ok,junk}.txt`` files into our format.

    good -> easy, ok -> hard, junk -> junk. The query file holds one line ``name x1 y1 x2 y2``; the
    Oxford names carry an ``oxc1_`` prefix that the image files do not, which is stripped. Queries are
    ordered by landmark, then by k (the order of revisitop's lists).

    ``imlist``: the database (relative file names with extension), normally the sorted contents of the
    ``jpg/`` folder. When None it is built from the union of all names in the ground-truth files
    (sorted) -- enough to study the ground truth without the images, not the full benchmark (the real
    database also holds distractors that no list mentions). Names missing from ``imlist`` are dropped
    with a warning; a query image missing from it is an error (in the classic benchmarks the query
    images are database images). An image in two lists of one query keeps the first of good, ok, junk.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder {gt_dir} does not exist")
    files: dict[tuple[str, int], dict[str, Path]] = {}
    for path in gt_dir.iterdir():
        m = _CLASSIC_GT_FILE.match(path.name)
        if m:
            files.setdefault((m["landmark"], int(m["k"])), {})[m["kind"]] = path
    if not files:
        raise ValueError(f"{gt_dir} holds no <landmark>_<k>_query.txt ground-truth files")
    for (landmark, k), kinds in sorted(files.items()):
        missing = {"query", "good", "ok", "junk"} - set(kinds)
        if missing:
            raise ValueError(f"{gt_dir}: query {landmark}_{k} lacks the files {sorted(missing)}")

    queries = []
    for (landmark, k), kinds in sorted(files.items()):
        lines = [ln.split() for ln in kinds["query"].read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(lines) != 1 or len(lines[0]) != 5:
            raise ValueError(f"{kinds['query']}: expected one line 'name x1 y1 x2 y2', got {lines!r}")
        qname = lines[0][0]
        if qname.startswith(OXFORD_QUERY_PREFIX):
            qname = qname[len(OXFORD_QUERY_PREFIX):]
        try:
            bbx = [float(v) for v in lines[0][1:]]
        except ValueError:
            raise ValueError(f"{kinds['query']}: the box must be 4 numbers, got {lines[0][1:]}") from None
        lists = {kind: _read_names(kinds[kind]) for kind in ("good", "ok", "junk")}
        queries.append((f"{landmark}_{k}", qname, bbx, lists))

    if imlist is None:
        names = {q[1] for q in queries} | {n for q in queries for lst in q[3].values() for n in lst}
        imlist = sorted(n + image_ext for n in names)
    imlist = list(imlist)
    index = {Path(name).stem: i for i, name in enumerate(imlist)}

    qimlist, gnd, n_missing, n_overlap = [], [], 0, 0
    for qid, qname, bbx, lists in queries:
        if qname not in index:
            raise ValueError(f"query {qid}: image {qname!r} is not in the image list ({len(imlist)} images)")
        qimlist.append(imlist[index[qname]])
        entry, taken = {"bbx": bbx}, set()
        for kind, key in (("good", "easy"), ("ok", "hard"), ("junk", "junk")):
            indices = []
            for name in lists[kind]:
                i = index.get(name)
                if i is None:
                    n_missing += 1
                elif i in taken:
                    n_overlap += 1
                else:
                    taken.add(i)
                    indices.append(i)
            entry[key] = sorted(indices)
        gnd.append(entry)
    if n_missing:
        warnings.warn(f"{gt_dir}: {n_missing} ground-truth entries name images that are not in the image "
                      "list; they were dropped", stacklevel=2)
    if n_overlap:
        warnings.warn(f"{gt_dir}: {n_overlap} ground-truth entries listed an image twice for one query; "
                      "kept the first of good, ok, junk", stacklevel=2)
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd, "protocol": "classic",
            "instance_labels": None, "query_labels": None}


# ---------------------------------------------------------------------------- folder / groups
def _list_image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, skipped non-image entries) directly inside ``folder``, sorted; dotfiles ignored."""
    images, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            skipped.append(path)
    return images, skipped


def folder_ground_truth(folder) -> dict:
    """Ground truth of a folder with one subfolder per instance (protocol "holidays").

    Every image is both a database image and a query (``qimlist == imlist``); query i's easy list holds
    the other images of its instance, hard is empty, junk is [i] (itself, so that it is ignored wherever
    it is ranked), bbx None. Non-image files and files outside subfolders are skipped with a warning;
    an instance with a single image is kept with a warning (its query has no positives).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder dataset: {folder} is not a directory")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not subfolders:
        raise ValueError(f"folder dataset {folder} has no subfolders: put the images of each instance in "
                         f"their own subfolder ({folder}/<instance>/<image>.jpg)")
    skipped: list[str] = [f"{name} (not inside an instance subfolder)" for name in sorted(loose)]
    imlist, labels, singles, empties = [], [], [], []
    for sub in subfolders:
        images, other = _list_image_files(sub)
        skipped += [f"{p.relative_to(folder)}" + (" (folder)" if p.is_dir() else "") for p in other]
        if not images:
            empties.append(sub.name)
            continue
        if len(images) == 1:
            singles.append(sub.name)
        imlist += [p.relative_to(folder).as_posix() for p in images]
        labels += [sub.name] * len(images)
    if skipped:
        warnings.warn(f"folder dataset {folder}: skipped {len(skipped)} entries that are not images in an "
                      f"instance subfolder: {', '.join(skipped[:10])}" + (" ..." if len(skipped) > 10 else ""),
                      stacklevel=2)
    if not imlist:
        raise ValueError(f"folder dataset {folder} contains no images (extensions {sorted(IMAGE_EXTENSIONS)})")
    if empties:
        warnings.warn(f"folder dataset {folder}: subfolders without images ignored: {empties}", stacklevel=2)
    if singles and len(singles) == len(set(labels)):
        raise ValueError(f"folder dataset {folder}: every instance has a single image, so no query has a "
                         "positive; put at least two images of the same instance in a subfolder")
    if singles:
        warnings.warn(f"folder dataset {folder}: instances with a single image have no positives: {singles}",
                      stacklevel=2)
    gnd = _group_ground_truth(labels, query_indices=range(len(imlist)))
    return {"imlist": imlist, "qimlist": list(imlist), "gnd": gnd, "protocol": "holidays",
            "instance_labels": labels, "query_labels": list(labels)}


def _group_ground_truth(groups: Sequence, query_indices: Iterable[int]) -> list[dict]:
    """For each query index q: easy = the other images of q's group, hard = [], junk = [q], bbx None."""
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return [{"easy": [i for i in members[groups[q]] if i != q], "hard": [], "junk": [q], "bbx": None}
            for q in query_indices]


_HOLIDAYS_NAME = re.compile(r"^(\d{4})(\d{2})\.jpe?g$", re.IGNORECASE)
_UKBENCH_NAME = re.compile(r"^ukbench(\d{5})\.jpe?g$", re.IGNORECASE)


def holidays_ground_truth(image_names: Sequence[str]) -> dict:
    """INRIA Holidays from its file names (``100000.jpg`` ...): groups by the first 4 digits, the first
    image of each group (``xxxx00.jpg``) is its query; the query stays in the database as junk."""
    names = sorted(n for n in image_names if _HOLIDAYS_NAME.match(Path(n).name))
    other = [n for n in image_names if not _HOLIDAYS_NAME.match(Path(n).name)]
    if other:
        warnings.warn(f"holidays: ignored {len(other)} files not named like 100000.jpg: {other[:5]}", stacklevel=2)
    if not names:
        raise ValueError("holidays: no image named like 100000.jpg")
    groups = [_HOLIDAYS_NAME.match(Path(n).name).group(1) for n in names]
    first = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    queries = sorted(first.values())
    sizes = Counter(groups)
    lonely = [names[q] for q in queries if sizes[groups[q]] == 1]
    if lonely:
        warnings.warn(f"holidays: {len(lonely)} groups have no image besides the query: {lonely[:5]}", stacklevel=2)
    return {"imlist": names, "qimlist": [names[q] for q in queries], "gnd": _group_ground_truth(groups, queries),
            "protocol": "holidays", "instance_labels": None, "query_labels": None}


def ukbench_ground_truth(image_names: Sequence[str]) -> dict:
    """UKBench from its file names (``ukbench00000.jpg`` ...): groups of 4 consecutive numbers, every
    image is a query; easy = the other 3 of its group, junk = [itself] (protocol "ukbench")."""
    names = sorted(n for n in image_names if _UKBENCH_NAME.match(Path(n).name))
    other = [n for n in image_names if not _UKBENCH_NAME.match(Path(n).name)]
    if other:
        warnings.warn(f"ukbench: ignored {len(other)} files not named like ukbench00000.jpg: {other[:5]}",
                      stacklevel=2)
    if not names:
        raise ValueError("ukbench: no image named like ukbench00000.jpg")
    groups = [int(_UKBENCH_NAME.match(Path(n).name).group(1)) // 4 for n in names]
    incomplete = sorted(g for g, size in Counter(groups).items() if size != 4)
    if incomplete:
        warnings.warn(f"ukbench: {len(incomplete)} groups do not have 4 images (first: {incomplete[:5]})",
                      stacklevel=2)
    return {"imlist": names, "qimlist": list(names), "gnd": _group_ground_truth(groups, range(len(names))),
            "protocol": "ukbench", "instance_labels": None, "query_labels": None}


# --------------------------------------------------------------------------------------- registry
def dataset_dir(name: str, root=None) -> Path:
    """Folder of a registered dataset under the data root (``demo-train`` lives in ``demo/``)."""
    _check_registered(name)
    return _resolve_root(root) / ("demo" if name in DEMO_NAMES else name)


def images_dir(name: str, root=None) -> Path:
    """Folder that holds a registered dataset's images (revisited sets fall back to the classic set's)."""
    own = dataset_dir(name, root) / "jpg"
    if name in REVISITED_IMAGES_FROM and not own.is_dir():
        return dataset_dir(REVISITED_IMAGES_FROM[name], root) / "jpg"
    return own


def ground_truth_path(name: str, root=None) -> Path:
    """The ground-truth file (or, for oxford5k / paris6k, folder) a registered dataset is read from."""
    d = dataset_dir(name, root)
    if name in DEMO_NAMES:
        return d / f"gnd_{name}.json"
    if name in CLASSIC_NAMES:
        return d / "gt"
    if name in REVISITED_NAMES:
        return d / f"gnd_{name}.pkl"
    return d / "jpg"  # holidays, ukbench: the ground truth is in the file names


def _check_registered(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)} and 'folder:PATH'")


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` knows (``"folder:PATH"`` is accepted in addition)."""
    return list(DATASET_NAMES)


def dataset_on_disk(name: str, root=None) -> bool:
    """Whether ``load_dataset(name, root)`` would find its files (demo sets: already generated)."""
    if name.startswith(FOLDER_PREFIX):
        return Path(name[len(FOLDER_PREFIX):]).expanduser().is_dir()
    gt = ground_truth_path(name, root)
    if name in DEMO_NAMES:
        return gt.is_file() and images_dir(name, root).is_dir()
    if name in CLASSIC_NAMES:
        return gt.is_dir() and any(gt.glob("*_query.txt")) and _has_images(images_dir(name, root))
    if name in REVISITED_NAMES:
        return gt.is_file() and _has_images(images_dir(name, root))
    return _has_images(gt)


def datasets_on_disk(root=None) -> dict[str, bool]:
    """For every registered name, whether it is present under ``root`` (default: :func:`data_root`)."""
    return {name: dataset_on_disk(name, root) for name in DATASET_NAMES}


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _sorted_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _require_file(name: str, path: Path, root) -> None:
    if not path.exists():
        raise DatasetNotFoundError(name, path, download_command(name, root))


def _require_images(name: str, folder: Path, root) -> None:
    if not _has_images(folder):
        raise DatasetNotFoundError(name, folder, download_command(name, root),
                                   detail="the folder holds no images" if folder.is_dir() else "")


_DIGESTS: dict[tuple, str] = {}


def file_digest(path) -> str:
    """BLAKE2b digest of a file's bytes (what a folder dataset's identity is made of: a file changed in
    place, even with its size and modification time kept, is new content).

    Remembered for the process under the file's inode, size, mtime and ctime; ctime cannot be set
    back by ``touch -r`` or an EXIF tool, so a rewritten file is always read again."""
    path = Path(path)
    st = path.stat()
    stamp = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if stamp not in _DIGESTS:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[stamp] = digest.hexdigest()
    return _DIGESTS[stamp]


def check_training_set(train, evaluated) -> None:
    """Refuse to learn on the evaluated set, whatever it is called.

    ``folder:X/``, ``folder:X/../X`` and a symlink to ``X`` are the same images: the two datasets are
    compared by the resolved paths of their files, not by name. Raises ``ValueError`` when the training
    set holds every evaluated image; warns when the two share some images.
    """
    shared = train.image_files() & evaluated.image_files()
    if not shared:
        return
    if shared == evaluated.image_files():
        raise ValueError(f"the training dataset must differ from the evaluated one: {train.name!r} holds the "
                         f"same images as {evaluated.name!r}; learn on another dataset (e.g. {default_train_dataset(evaluated.name)!r})")
    warnings.warn(f"the training dataset {train.name!r} shares {len(shared)} of its images with the evaluated "
                  f"{evaluated.name!r} (e.g. {sorted(shared)[0]}): results on them are optimistic", stacklevel=2)


def default_train_dataset(name: str) -> str:
    """The dataset to learn whitening / train heads on when evaluating ``name`` (never ``name`` itself).

    roxford5k <-> rparis6k, oxford5k <-> paris6k (the usual cross-dataset protocol of the papers);
    every other set (demo, folder:..., holidays, ukbench) -> "demo-train", whose instances are disjoint
    from the demo set's. "demo-train" is itself only for training and cannot be evaluated.
    """
    if name == "demo-train":
        raise ValueError("'demo-train' is the training split of the demo data; evaluate on 'demo' instead")
    if not name.startswith(FOLDER_PREFIX):
        _check_registered(name)
    return _TRAIN_PARTNER.get(name, "demo-train")


def manifest_digest(demo_dir) -> str:
    """A short digest (12 hex digits) of a generated set's ``manifest.json``, which records the SHA-256
    of every generated file: the demo's content identity (part of :attr:`RetrievalDataset.key`)."""
    return hashlib.sha256((Path(demo_dir) / "manifest.json").read_bytes()).hexdigest()[:12]


def _load_demo(name: str, root) -> RetrievalDataset:
    """demo / demo-train: read ``<root>/demo/gnd_<name>.json`` and the images in ``<root>/demo/jpg``.
    The set is generated by ``python data_scripts/make_demo.py`` (both README commands run it);
    loading never generates it."""
    demo_dir = _resolve_root(root) / "demo"
    gnd_file = demo_dir / f"gnd_{name}.json"
    for required in (gnd_file, demo_dir / "manifest.json"):
        if not required.is_file():
            raise DatasetNotFoundError(name, required, "python data_scripts/make_demo.py",
                                       detail="the demo set is generated on this machine, not downloaded")
    d = load_gnd_json(gnd_file)
    return RetrievalDataset(name=name, root=demo_dir / "jpg", content_id=manifest_digest(demo_dir), **d)


def load_dataset(name: str, root=None) -> RetrievalDataset:
    """Load a dataset by name (see the module docstring for the names and the layout on disk).

    ``root`` overrides the data root (default :func:`data_root`); it is ignored for ``folder:PATH``.
    Raises :class:`DatasetNotFoundError` (with the download command) when the files are missing.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    if name.startswith(FOLDER_PREFIX):
        folder = Path(name[len(FOLDER_PREFIX):]).expanduser()
        if not str(folder) or name == FOLDER_PREFIX:
            raise ValueError("'folder:' needs a path, e.g. 'folder:/data/my_photos'")
        gt = folder_ground_truth(folder)
        digests = [file_digest(folder / n) for n in gt["imlist"]]
        content = hashlib.sha256(json.dumps(digests).encode()).hexdigest()[:12]
        return RetrievalDataset(name=name, root=folder, content_id=content, **gt)
    _check_registered(name)
    if name in DEMO_NAMES:
        return _load_demo(name, root)

    gt, images = ground_truth_path(name, root), images_dir(name, root)
    if name in CLASSIC_NAMES:
        _require_file(name, gt, root)
        _require_images(name, images, root)
        d = parse_classic_ground_truth(gt, imlist=_sorted_images(images))
    elif name in REVISITED_NAMES:
        _require_file(name, gt, root)
        _require_images(name, images, root)
        d = revisited_from_pickle(load_ground_truth_pickle(gt, known_sha256(gt.name)))
        missing = [n for n in d["imlist"][:50] if not (images / n).is_file()]
        if missing:
            warnings.warn(f"{name}: images listed in {gt.name} are missing from {images}, e.g. {missing[:3]}",
                          stacklevel=2)
    elif name == "holidays":
        _require_images(name, images, root)
        d = holidays_ground_truth(_sorted_images(images))
    else:  # ukbench
        _require_images(name, images, root)
        d = ukbench_ground_truth(_sorted_images(images))
    return RetrievalDataset(name=name, root=images, **d)
