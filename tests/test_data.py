"""Tests for helpers.data: the ground-truth format, its validation, the registry and every loader.

The real Paris6k ground-truth files and the realsmoke photos are read from ``../shared`` (never copied
into the repository); the other loaders run on file names created in ``tmp_path`` (they read names,
not pixels). Nothing here needs the demo generator: "demo" is tested with a stand-in ``ensure_demo``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import data
from helpers.data import (
    DatasetNotFoundError,
    RetrievalDataset,
    UnsafePickleError,
    available_datasets,
    datasets_on_disk,
    default_train_dataset,
    folder_ground_truth,
    holidays_ground_truth,
    load_dataset,
    load_gnd_json,
    load_ground_truth_pickle,
    parse_classic_ground_truth,
    save_gnd_json,
    ukbench_ground_truth,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARIS_GT = SHARED / "formats" / "paris6k_gt"
REALSMOKE = SHARED / "realsmoke"


def _tiny(**overrides) -> dict:
    d = {"name": "tiny", "root": Path("/nowhere"), "imlist": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
         "qimlist": ["q0.jpg", "q1.jpg"],
         "gnd": [{"easy": [0], "hard": [1], "junk": [2], "bbx": [1.0, 2.0, 30.0, 40.0]},
                 {"easy": [3], "hard": [], "junk": [], "bbx": None}],
         "protocol": "revisited"}
    d.update(overrides)
    return d


def _touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


# ------------------------------------------------------------------------------ dataset class
def test_dataset_paths_counts_and_describe():
    ds = RetrievalDataset(**_tiny())
    assert (ds.n_db, ds.n_queries) == (4, 2)
    assert ds.db_path(1) == Path("/nowhere/b.jpg")
    assert ds.query_path(0) == Path("/nowhere/q0.jpg")
    assert ds.query_bbx(0) == [1.0, 2.0, 30.0, 40.0] and ds.query_bbx(1) is None
    text = ds.summary()
    assert "4 database images" in text and "2 queries" in text and "revisited" in text


def test_numpy_ground_truth_is_converted_to_plain_python():
    gnd = [{"easy": np.array([0, 2]), "hard": np.array([], dtype=np.int64), "junk": np.array([1]),
            "bbx": np.array([1.5, 2.5, 3.5, 4.5])}]
    ds = RetrievalDataset(**_tiny(qimlist=["q.jpg"], gnd=gnd))
    assert ds.gnd[0] == {"easy": [0, 2], "hard": [], "junk": [1], "bbx": [1.5, 2.5, 3.5, 4.5]}
    assert all(type(i) is int for i in ds.gnd[0]["easy"])


@pytest.mark.parametrize("change, message", [
    ({"protocol": "oxford"}, "unknown protocol"),
    ({"gnd": [{"easy": [4]}, {}]}, "out of range"),
    ({"gnd": [{"easy": [-1]}, {}]}, "out of range"),
    ({"gnd": [{"easy": [0], "junk": [0]}, {}]}, "disjoint"),
    ({"gnd": [{"easy": [0, 0]}, {}]}, "more than once"),
    ({"gnd": [{"easy": [0.5]}, {}]}, "integers"),
    ({"gnd": [{}]}, "2 queries"),
    ({"gnd": [{"bbx": [10, 10, 5, 20]}, {}]}, "x1 < x2"),
    ({"gnd": [{"bbx": [0, 0, 5]}, {}]}, "4 numbers"),
    ({"gnd": [{"bbx": [0, 0, float("nan"), 5]}, {}]}, "non-finite"),
    ({"gnd": [{"bbx": "box"}, {}]}, "4 numbers"),
    ({"gnd": [{"ok": [1]}, {}]}, "'ok'"),
    ({"gnd": [{"positives": [1]}, {}]}, "unknown keys"),
    ({"imlist": ["a.jpg", "a.jpg", "c.jpg", "d.jpg"]}, "more than once"),
    ({"imlist": ["/abs/a.jpg", "b.jpg", "c.jpg", "d.jpg"]}, "relative"),
    ({"imlist": ["../a.jpg", "b.jpg", "c.jpg", "d.jpg"]}, "relative"),
    ({"instance_labels": ["x", "y"]}, "instance_labels has 2 entries"),
    ({"query_labels": ["x"]}, "query_labels has 1 entries"),
    ({"name": ""}, "name"),
])
def test_validation_errors(change, message):
    with pytest.raises(ValueError, match=message):
        RetrievalDataset(**_tiny(**change))


def test_key_tracks_lists_and_boxes_not_root_or_labels():
    base = RetrievalDataset(**_tiny())
    assert base.key == RetrievalDataset(**_tiny()).key
    assert base.key.startswith("tiny-")
    assert base.key == RetrievalDataset(**_tiny(root=Path("/elsewhere"))).key
    relabelled = _tiny()
    relabelled["gnd"] = [dict(relabelled["gnd"][0], easy=[], hard=[0, 1]), relabelled["gnd"][1]]
    assert base.key == RetrievalDataset(**relabelled).key
    moved_box = _tiny()
    moved_box["gnd"] = [dict(moved_box["gnd"][0], bbx=[1.0, 2.0, 31.0, 40.0]), moved_box["gnd"][1]]
    assert base.key != RetrievalDataset(**moved_box).key
    assert base.key != RetrievalDataset(**_tiny(imlist=["a.jpg", "b.jpg", "c.jpg", "e.jpg"])).key
    assert base.key != RetrievalDataset(**_tiny(qimlist=["q0.jpg", "q2.jpg"])).key


def test_key_of_a_folder_dataset_is_file_name_safe():
    ds = RetrievalDataset(**_tiny(name="folder:/home/me/My Photos/"))
    assert ds.key.startswith("folder_My_Photos-")
    assert all(c.isalnum() or c in "._-" for c in ds.key)


# ------------------------------------------------------------------------------ JSON files
def test_gnd_json_round_trip_with_numpy_values(tmp_path):
    d = {k: v for k, v in _tiny().items() if k not in ("name", "root")}
    d["gnd"][0]["easy"] = np.array([0], dtype=np.int32)
    d["instance_labels"] = ["a", "a", "b", "b"]
    d["query_labels"] = ["a", "b"]
    path = save_gnd_json(tmp_path / "gnd_x.json", d)
    back = load_gnd_json(path)
    assert back["gnd"][0]["easy"] == [0] and back["instance_labels"] == ["a", "a", "b", "b"]
    assert back["protocol"] == "revisited" and back["qimlist"] == ["q0.jpg", "q1.jpg"]
    ds = RetrievalDataset(name="x", root=tmp_path, **back)
    assert save_gnd_json(tmp_path / "again.json", ds).read_text() == path.read_text()


def test_gnd_json_errors(tmp_path):
    with pytest.raises(ValueError, match="lacks keys"):
        save_gnd_json(tmp_path / "g.json", {"imlist": []})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read ground-truth JSON"):
        load_gnd_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"imlist": ["a.jpg"], "qimlist": ["q.jpg"], "gnd": [{"easy": [3]}], "protocol": "revisited"}')
    with pytest.raises(ValueError, match="wrong.json.*out of range"):
        load_gnd_json(wrong)
    with pytest.raises(FileNotFoundError):
        load_gnd_json(tmp_path / "absent.json")


# ------------------------------------------------------------------------------ pickles
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def _revisitop_pickle(n_db=6, numpy_lists=True) -> dict:
    arr = (lambda v: np.array(v, dtype=np.int64)) if numpy_lists else list
    return {"imlist": [f"all_souls_{i:06d}" for i in range(n_db)],
            "qimlist": ["all_souls_000001", "all_souls_000004"],
            "gnd": [{"easy": arr([0, 2]), "hard": arr([3]), "junk": arr([5]), "bbx": [10.5, 20.0, 300.0, 400.0]},
                    {"easy": arr([4]), "hard": arr([]), "junk": arr([]), "bbx": np.array([1.0, 1.0, 9.0, 9.0])}]}


def test_restricted_unpickler_refuses_code_execution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Evil()]}))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle global (posix|nt|os)\.system"):
        load_ground_truth_pickle(path)
    assert not (tmp_path / "PWNED").exists()
    path.write_bytes(pickle.dumps(types.SimpleNamespace(a=1)))
    with pytest.raises(UnsafePickleError, match="types.SimpleNamespace"):
        load_ground_truth_pickle(path)


def test_restricted_unpickler_reads_numpy_and_checks_sha256(tmp_path):
    raw = _revisitop_pickle()
    path = tmp_path / "gnd.pkl"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(raw, protocol=protocol))
        back = load_ground_truth_pickle(path)
        assert back["imlist"] == raw["imlist"]
        np.testing.assert_array_equal(back["gnd"][0]["easy"], [0, 2])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_ground_truth_pickle(path, expected_sha256=digest.upper())["qimlist"] == raw["qimlist"]
    with pytest.raises(ValueError, match="does not match the recorded"):
        load_ground_truth_pickle(path, expected_sha256="0" * 64)
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="not a readable ground-truth pickle"):
        load_ground_truth_pickle(path)


def test_revisited_dataset_from_pickle_uses_classic_images(tmp_path):
    root = tmp_path / "data"
    raw = _revisitop_pickle()
    (root / "roxford5k").mkdir(parents=True)
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(raw))
    _touch_images(root / "oxford5k" / "jpg", [n + ".jpg" for n in raw["imlist"]])
    ds = load_dataset("roxford5k", root=root)
    assert ds.protocol == "revisited" and ds.root == root / "oxford5k" / "jpg"
    assert ds.imlist[0] == "all_souls_000000.jpg" and ds.qimlist == ["all_souls_000001.jpg", "all_souls_000004.jpg"]
    assert ds.gnd[0] == {"easy": [0, 2], "hard": [3], "junk": [5], "bbx": [10.5, 20.0, 300.0, 400.0]}
    assert ds.gnd[1]["hard"] == [] and ds.db_path(3).is_file()
    # the revisited set's own jpg/ folder wins when present
    _touch_images(root / "roxford5k" / "jpg", [n + ".jpg" for n in raw["imlist"]])
    assert load_dataset("roxford5k", root=root).root == root / "roxford5k" / "jpg"


def test_revisited_loader_checks_the_registry_checksum(tmp_path, monkeypatch):
    root = tmp_path / "data"
    raw = _revisitop_pickle(numpy_lists=False)
    (root / "rparis6k").mkdir(parents=True)
    pkl = root / "rparis6k" / "gnd_rparis6k.pkl"
    pkl.write_bytes(pickle.dumps(raw))
    _touch_images(root / "paris6k" / "jpg", [n + ".jpg" for n in raw["imlist"]])
    monkeypatch.setattr(data, "known_sha256", lambda name: "ab" * 32 if name == "gnd_rparis6k.pkl" else None)
    with pytest.raises(ValueError, match="SHA-256 .* does not match"):
        load_dataset("rparis6k", root=root)
    digest = hashlib.sha256(pkl.read_bytes()).hexdigest()
    monkeypatch.setattr(data, "known_sha256", lambda name: digest)
    assert load_dataset("rparis6k", root=root).n_queries == 2


# ------------------------------------------------------------------------------ classic Oxford/Paris
@pytest.fixture
def paris_gt():
    if not PARIS_GT.is_dir():
        pytest.skip(f"the real Paris6k ground truth is not at {PARIS_GT}")
    return PARIS_GT


def _lines(path: Path) -> list[str]:
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def test_parse_real_paris6k_ground_truth(paris_gt):
    # without images on disk the imlist is the union of the names in the gt files
    d = parse_classic_ground_truth(paris_gt)
    ds = RetrievalDataset(name="paris6k", root=Path("."), **d)  # validates ranges and disjointness
    assert ds.n_queries == 55 and ds.protocol == "classic"
    all_names = {n for f in paris_gt.glob("*.txt") for n in _lines(f)}
    assert ds.n_db == len(all_names) and set(ds.imlist) == {n + ".jpg" for n in all_names}
    # per query: the three lists are exactly the files' lines (good -> easy, ok -> hard, junk -> junk)
    landmarks = sorted({f.name.rsplit("_", 2)[0] for f in paris_gt.glob("*_query.txt")})
    order = [(lm, k) for lm in landmarks for k in range(1, 6)]
    assert len(order) == 55
    position = {name: i for i, name in enumerate(ds.imlist)}
    for q, (lm, k) in enumerate(order):
        query_line = (paris_gt / f"{lm}_{k}_query.txt").read_text().split()
        assert ds.qimlist[q] == query_line[0] + ".jpg"
        assert ds.qimlist[q] in ds.imlist
        assert ds.gnd[q]["bbx"] == [float(v) for v in query_line[1:]]
        for kind, key in (("good", "easy"), ("ok", "hard"), ("junk", "junk")):
            expected = sorted(position[n + ".jpg"] for n in _lines(paris_gt / f"{lm}_{k}_{kind}.txt"))
            assert ds.gnd[q][key] == expected, (lm, k, kind)
        x1, y1, x2, y2 = ds.gnd[q]["bbx"]
        assert 0 <= x1 < x2 <= 2000 and 0 <= y1 < y2 <= 2000
        entry = ds.gnd[q]
        assert not (set(entry["easy"]) & set(entry["hard"]) or set(entry["easy"]) & set(entry["junk"])
                    or set(entry["hard"]) & set(entry["junk"]))
        assert len(entry["easy"]) + len(entry["hard"]) > 0
        # in the classic benchmarks the query image is one of its own positives
        assert position[ds.qimlist[q]] in entry["easy"] + entry["hard"]


def test_paris6k_loader_with_an_image_folder(paris_gt, tmp_path):
    root = tmp_path / "data"
    (root / "paris6k").mkdir(parents=True)
    (root / "paris6k" / "gt").symlink_to(paris_gt, target_is_directory=True)
    names = sorted({n for f in paris_gt.glob("*.txt") for n in _lines(f)})
    distractors = ["paris_general_000001.jpg", "paris_general_000002.jpg"]
    # the folder on disk is the database: distractors included, one listed image deleted
    query_names = {f.read_text().split()[0] for f in paris_gt.glob("*_query.txt")}
    dropped = next(n for n in names[len(names) // 2:] if n not in query_names)
    _touch_images(root / "paris6k" / "jpg", [n + ".jpg" for n in names if n != dropped] + distractors + ["notes.txt"])
    with pytest.warns(UserWarning, match="not in the image list"):
        ds = load_dataset("paris6k", root=root)
    assert ds.n_db == len(names) - 1 + 2 and "paris_general_000001.jpg" in ds.imlist
    assert "notes.txt" not in ds.imlist and ds.root == root / "paris6k" / "jpg"
    assert ds.n_queries == 55 and default_train_dataset("paris6k") == "oxford5k"


def _write_classic(gt: Path, landmark: str, k: int, query: str, good, ok, junk):
    gt.mkdir(parents=True, exist_ok=True)
    (gt / f"{landmark}_{k}_query.txt").write_text(f"{query} 136.5 34.1 648.5 955.9\n")
    for kind, names in (("good", good), ("ok", ok), ("junk", junk)):
        (gt / f"{landmark}_{k}_{kind}.txt").write_text("".join(f"{n}\n" for n in names))


def test_oxford_prefix_order_and_overlaps(tmp_path):
    gt = tmp_path / "gt"
    _write_classic(gt, "all_souls", 2, "oxc1_all_souls_000026", ["all_souls_000026", "all_souls_000001"], [], [])
    _write_classic(gt, "all_souls", 10, "oxc1_all_souls_000013", ["all_souls_000013"], ["radcliffe_000001"],
                   ["all_souls_000013", "magdalen_000009"])
    _write_classic(gt, "ashmolean", 1, "oxc1_ashmolean_000058", ["ashmolean_000058"], [], [])
    (gt / "README.txt").write_text("not a ground-truth file\n")
    with pytest.warns(UserWarning, match="listed an image twice"):
        d = parse_classic_ground_truth(gt)
    # order: landmark, then k numerically (2 before 10); "oxc1_" stripped
    assert d["qimlist"] == ["all_souls_000026.jpg", "all_souls_000013.jpg", "ashmolean_000058.jpg"]
    idx = {n: i for i, n in enumerate(d["imlist"])}
    assert d["gnd"][1] == {"bbx": [136.5, 34.1, 648.5, 955.9], "easy": [idx["all_souls_000013.jpg"]],
                           "hard": [idx["radcliffe_000001.jpg"]], "junk": [idx["magdalen_000009.jpg"]]}
    with pytest.raises(ValueError, match="not in the image list"):
        parse_classic_ground_truth(gt, imlist=["all_souls_000026.jpg"])


def test_classic_parser_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        parse_classic_ground_truth(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no <landmark>_<k>_query.txt"):
        parse_classic_ground_truth(tmp_path / "empty")
    gt = tmp_path / "gt"
    _write_classic(gt, "a", 1, "a_1", ["a_1"], [], [])
    (gt / "a_1_ok.txt").unlink()
    with pytest.raises(ValueError, match=r"lacks the files \['ok'\]"):
        parse_classic_ground_truth(gt)
    _write_classic(gt, "a", 1, "a_1", ["a_1"], [], [])
    (gt / "a_1_query.txt").write_text("a_1 1 2 3\n")
    with pytest.raises(ValueError, match="x1 y1 x2 y2"):
        parse_classic_ground_truth(gt)


# ------------------------------------------------------------------------------ folder:
@pytest.fixture
def realsmoke():
    if not REALSMOKE.is_dir():
        pytest.skip(f"the realsmoke photos are not at {REALSMOKE}")
    return REALSMOKE


def test_folder_dataset_on_realsmoke(realsmoke):
    ds = load_dataset(f"folder:{realsmoke}")
    assert ds.n_db == 23 and ds.qimlist == ds.imlist and ds.protocol == "holidays"
    assert ds.root == realsmoke and len(set(ds.instance_labels)) == 5
    for q, entry in enumerate(ds.gnd):
        folder = Path(ds.qimlist[q]).parent.name
        others = [i for i, name in enumerate(ds.imlist) if Path(name).parent.name == folder and i != q]
        assert entry == {"easy": others, "hard": [], "junk": [q], "bbx": None}
        assert ds.query_labels[q] == folder and ds.db_path(q).is_file()
    assert default_train_dataset(ds.name) == "demo-train"


def test_folder_dataset_skips_and_warns(tmp_path):
    root = tmp_path / "photos"
    _touch_images(root / "cat", ["1.jpg", "2.PNG", "notes.txt", ".DS_Store"])
    _touch_images(root / "dog", ["1.jpeg"])
    (root / "empty").mkdir()
    (root / "loose.jpg").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = folder_ground_truth(root)
    messages = " | ".join(str(w.message) for w in caught)
    assert "notes.txt" in messages and "loose.jpg" in messages
    assert "single image" in messages and "dog" in messages and "empty" in messages
    assert ".DS_Store" not in messages
    assert d["imlist"] == ["cat/1.jpg", "cat/2.PNG", "dog/1.jpeg"]
    assert d["gnd"][2] == {"easy": [], "hard": [], "junk": [2], "bbx": None}


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("folder:")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no subfolders"):
        load_dataset(f"folder:{tmp_path / 'flat'}")
    _touch_images(tmp_path / "textonly" / "x", ["a.txt"])
    with pytest.raises(ValueError, match="contains no images"), pytest.warns(UserWarning):
        load_dataset(f"folder:{tmp_path / 'textonly'}")
    _touch_images(tmp_path / "singles" / "x", ["a.jpg"])
    _touch_images(tmp_path / "singles" / "y", ["b.jpg"])
    with pytest.raises(ValueError, match="every instance has a single image"):
        load_dataset(f"folder:{tmp_path / 'singles'}")


# ------------------------------------------------------------------------------ holidays / ukbench
def test_holidays_groups_and_queries(tmp_path):
    root = tmp_path / "data"
    _touch_images(root / "holidays" / "jpg", ["100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg",
                                              "100101.jpg", "149900.jpg", "149901.jpg", "readme.jpg"])
    with pytest.warns(UserWarning, match="readme.jpg"):
        ds = load_dataset("holidays", root=root)
    assert ds.n_db == 7 and ds.qimlist == ["100000.jpg", "100100.jpg", "149900.jpg"]
    assert ds.gnd[0] == {"easy": [1, 2], "hard": [], "junk": [0], "bbx": None}
    assert ds.gnd[2] == {"easy": [6], "hard": [], "junk": [5], "bbx": None}
    assert ds.protocol == "holidays" and default_train_dataset("holidays") == "demo-train"
    with pytest.warns(UserWarning, match="no image besides the query"):
        holidays_ground_truth(["100000.jpg", "100100.jpg", "100101.jpg"])


def test_ukbench_groups_of_four(tmp_path):
    root = tmp_path / "data"
    _touch_images(root / "ukbench" / "jpg", [f"ukbench{i:05d}.jpg" for i in range(8)])
    ds = load_dataset("ukbench", root=root)
    assert ds.n_db == ds.n_queries == 8 and ds.protocol == "ukbench"
    assert ds.gnd[5] == {"easy": [4, 6, 7], "hard": [], "junk": [5], "bbx": None}
    with pytest.warns(UserWarning, match="do not have 4 images"):
        ukbench_ground_truth([f"ukbench{i:05d}.jpg" for i in range(6)])
    big = ukbench_ground_truth([f"ukbench{i:05d}.jpg" for i in range(10200)])  # fast at full size
    assert len(big["gnd"]) == 10200 and big["gnd"][-1]["easy"] == [10196, 10197, 10198]


# ------------------------------------------------------------------------------ registry
def test_missing_dataset_error_names_path_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRET_DATA", str(tmp_path / "default"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("roxford5k")
    err = info.value
    assert isinstance(err, FileNotFoundError) and err.name == "roxford5k"
    assert str(tmp_path / "default" / "roxford5k" / "gnd_roxford5k.pkl") in str(err)
    assert str(err).endswith("python data_scripts/download_datasets.py roxford5k")
    other = tmp_path / "other"
    with pytest.raises(DatasetNotFoundError, match=f"download_datasets.py holidays --root {other}"):
        load_dataset("holidays", root=other)
    (other / "oxford5k" / "gt").mkdir(parents=True)
    (other / "oxford5k" / "jpg").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="the folder holds no images"):
        load_dataset("oxford5k", root=other)
    assert pickle.loads(pickle.dumps(err)).args == err.args


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'oxford105k'"):
        load_dataset("oxford105k")
    with pytest.raises(TypeError):
        load_dataset(None)


def test_default_train_dataset():
    assert default_train_dataset("roxford5k") == "rparis6k"
    assert default_train_dataset("rparis6k") == "roxford5k"
    assert default_train_dataset("oxford5k") == "paris6k"
    assert default_train_dataset("paris6k") == "oxford5k"
    for name in ("demo", "holidays", "ukbench", "folder:/x/y"):
        assert default_train_dataset(name) == "demo-train"
    with pytest.raises(ValueError, match="only|training"):
        default_train_dataset("demo-train")
    with pytest.raises(ValueError, match="unknown dataset"):
        default_train_dataset("nope")
    for name in available_datasets():
        if name != "demo-train":
            assert default_train_dataset(name) != name


def test_available_and_on_disk(tmp_path):
    names = available_datasets()
    assert set(names) == {"demo", "demo-train", "oxford5k", "paris6k", "roxford5k", "rparis6k", "holidays", "ukbench"}
    root = tmp_path / "data"
    assert datasets_on_disk(root) == {n: False for n in names}
    _touch_images(root / "ukbench" / "jpg", ["ukbench00000.jpg"])
    (root / "roxford5k").mkdir(parents=True)
    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(b"")
    on_disk = datasets_on_disk(root)
    assert on_disk["ukbench"] and not on_disk["roxford5k"]  # gnd without images is not usable
    _touch_images(root / "oxford5k" / "jpg", ["a.jpg"])
    assert datasets_on_disk(root)["roxford5k"]


def test_demo_is_read_not_generated(tmp_path):
    """'demo' reads <root>/demo/gnd_demo.json and its manifest; a missing set is a DatasetNotFoundError
    naming the generator script, never a generation as a side effect of loading."""
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="make_demo.py"):
        load_dataset("demo", root=root)
    assert not (root / "demo").exists()
    demo = root / "demo"
    _touch_images(demo / "jpg", ["a.jpg", "b.jpg", "q.jpg"])
    for name in ("demo", "demo-train"):
        save_gnd_json(demo / f"gnd_{name}.json", {
            "imlist": ["a.jpg", "b.jpg"], "qimlist": ["q.jpg"], "protocol": "revisited",
            "gnd": [{"easy": [0], "hard": [], "junk": [1], "bbx": [0, 0, 5, 5]}],
            "instance_labels": ["x", "y"], "query_labels": ["x"]})
    with pytest.raises(DatasetNotFoundError, match="manifest.json"):
        load_dataset("demo", root=root)
    (demo / "manifest.json").write_text('{"sha256": {}}')
    ds = load_dataset("demo", root=root)
    train = load_dataset("demo-train", root=root)
    assert ds.name == "demo" and train.name == "demo-train" and ds.root == root / "demo" / "jpg"
    assert ds.instance_labels == ["x", "y"] and ds.gnd[0]["bbx"] == [0.0, 0.0, 5.0, 5.0]
    assert ds.key != train.key and ds.db_path(0).is_file()
    assert datasets_on_disk(root)["demo"]
    before = ds.key
    (demo / "manifest.json").write_text('{"sha256": {"a.jpg": "x"}}')   # regenerated content
    assert load_dataset("demo", root=root).key != before


def test_folder_identity_follows_the_bytes_not_the_timestamps(photo_folder):
    """A file rewritten in place with its size and mtime kept (``touch -r``) is new content."""
    import os

    before = load_dataset(f"folder:{photo_folder}").key
    path = photo_folder / "cat" / "cat_0.jpg"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF                                           # same size, other bytes
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))        # times restored, as touch -r does
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert load_dataset(f"folder:{photo_folder}").key != before
    assert load_dataset(f"folder:{photo_folder}").key == load_dataset(f"folder:{photo_folder}").key
