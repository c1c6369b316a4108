import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data import load_dataset
from helpers.features import (SkippedImageWarning, atomic_write, bbx_on_map, cache_root, extract_maps,
                              extract_vectors, extraction_info, prefetch)
from helpers.pooling import POOLINGS, gem, l2n


def test_maps_vectors_and_cache_reuse(photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    maps = extract_maps(ds, backbone, ["block4", "conv_head"], 128, "db")
    assert len(maps["conv_head"]) == ds.n_db == 12
    assert maps["conv_head"][0].shape[0] == 1280 and maps["block4"][0].shape[0] == 112
    # the cache entry exists under every key, and a second call does not run the backbone
    entries = list(cache_root().rglob("conv_head.maps.json"))
    assert len(entries) == 1 and "db-128" in str(entries[0]) and backbone.weights_id in str(entries[0])
    calls = []
    handle = backbone.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = extract_maps(ds, backbone, ["conv_head"], 128, "db")
        vecs = extract_vectors(ds, backbone, "conv_head", 128, "db")  # cached in the pass of the maps
    finally:
        handle.remove()
    assert not calls
    torch.testing.assert_close(again["conv_head"][3], maps["conv_head"][3])
    # the vectors come from the network's float32 maps, the cached maps are float16 copies
    expected = l2n(gem(maps["conv_head"][3])).numpy()
    np.testing.assert_allclose(vecs["gem"][3], expected, atol=2e-3)
    assert set(vecs) == set(POOLINGS)
    # another image size is another entry, with another map size
    small = extract_maps(ds, backbone, ["conv_head"], 64, "db")["conv_head"][0]
    assert small.shape[-1] < maps["conv_head"][0].shape[-1]


def test_prefetch_runs_one_pass_for_several_taps(photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    passes = []
    handle = backbone.model.conv_stem.register_forward_hook(lambda *a: passes.append(1))
    try:
        prefetch(ds, backbone, 96, "db", map_layers=["conv_head"], vector_layers=["block4", "block5"])
        assert len(passes) == ds.n_db  # one forward per image for the three taps
        maps = extract_maps(ds, backbone, ["conv_head"], 96, "db")["conv_head"]
        vecs = {t: extract_vectors(ds, backbone, t, 96, "db", ("gem",))["gem"] for t in ("block4", "block5")}
        prefetch(ds, backbone, 96, "db", map_layers=["conv_head"], vector_layers=["block4"])  # all cached
        assert len(passes) == ds.n_db
    finally:
        handle.remove()
    assert len(maps) == ds.n_db and vecs["block4"].shape == (ds.n_db, 112)
    with pytest.raises(ValueError, match="already vectors"):
        prefetch(ds, backbone, 96, "db", vector_layers=["fc"])


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "entry.bin"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"first"))
    assert target.read_bytes() == b"first"

    def crash(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"first"  # the old entry survives, no temporary file is left
    assert [p.name for p in target.parent.iterdir()] == ["entry.bin"]


def test_vectors_without_maps_match_maps(photo_folder, backbone, isolated_cache, tmp_path, monkeypatch):
    ds = load_dataset(f"folder:{photo_folder}")
    direct = extract_vectors(ds, backbone, "conv_head", 96, "db")
    assert not list(cache_root().rglob("*.maps.*"))  # maps are not kept
    monkeypatch.setenv("INSTRET_CACHE", str(tmp_path / "other"))
    via_maps = extract_maps(ds, backbone, ["conv_head"], 96, "db")["conv_head"]
    for name, fn in POOLINGS.items():
        ref = np.stack([l2n(fn(m)).numpy() for m in via_maps])
        np.testing.assert_allclose(direct[name], ref, atol=2e-3, err_msg=name)  # float16 maps
    # vectors cached with the maps are the very vectors extracted without them: one answer whichever
    # was asked for first
    with_maps = extract_vectors(ds, backbone, "conv_head", 96, "db")
    for name in POOLINGS:
        np.testing.assert_array_equal(with_maps[name], direct[name], err_msg=name)


def test_queries_of_folder_dataset_reuse_db_features(photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    q = extract_vectors(ds, backbone, "conv_head", 96, "query")
    db = extract_vectors(ds, backbone, "conv_head", 96, "db")
    np.testing.assert_array_equal(q["mac"], db["mac"])
    assert not list(cache_root().rglob("query-96"))


def test_bad_images_are_skipped_with_a_summary(photo_folder, backbone, isolated_cache):
    (photo_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (photo_folder / "coffee" / "notes.jpg").write_text("a text file with an image extension")
    ds = load_dataset(f"folder:{photo_folder}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vecs = extract_vectors(ds, backbone, "conv_head", 96, "db")
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert any("broken.jpg" in m for m in messages) and any("notes.jpg" in m for m in messages)
    assert any(m.startswith("2 of 14 db images") for m in messages)
    info = extraction_info(ds, backbone, 96, "db")
    assert sorted(s["path"] for s in info["skipped"]) == ["broken.jpg", "notes.jpg"]
    bad = [ds.imlist.index(n) for n in ds.imlist if n.endswith(("broken.jpg", "notes.jpg"))]
    good = [i for i in range(ds.n_db) if i not in bad]
    assert np.all(vecs["gem"][bad] == 0)
    assert np.allclose(np.linalg.norm(vecs["gem"][good], axis=1), 1, atol=1e-4)


def test_query_crop_uses_the_box(tmp_path, backbone, isolated_cache):
    from helpers.data import RetrievalDataset
    import skimage.data

    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(root / "a.png")
    ds = RetrievalDataset(name="one", root=root, imlist=["a.png"], qimlist=["a.png"],
                          gnd=[{"easy": [0], "hard": [], "junk": [], "bbx": [100, 50, 356, 306]}],
                          protocol="revisited")
    info_q = extraction_info(ds, backbone, 512, "query")
    info_full = extraction_info(ds, backbone, 512, "query_full")
    assert info_q["image_hw"] == [[256, 256]] and info_full["image_hw"] == [[512, 512]]
    assert info_q["original_hw"] == [[512, 512]]


def test_bbx_on_map():
    assert bbx_on_map([0, 0, 640, 480], (480, 640), (15, 20)) == (0, 0, 20, 15)
    assert bbx_on_map([320, 240, 330, 250], (480, 640), (15, 20)) == (10, 7, 11, 8)
    assert bbx_on_map([639, 479, 640, 480], (480, 640), (15, 20)) == (19, 14, 20, 15)
    with pytest.raises(ValueError):
        bbx_on_map([5, 5, 5, 9], (480, 640), (15, 20))


def test_bad_arguments(photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    with pytest.raises(ValueError, match="split"):
        extract_maps(ds, backbone, ["conv_head"], 96, "train")
    with pytest.raises(ValueError, match="image_size"):
        extract_maps(ds, backbone, ["conv_head"], 8, "db")
    with pytest.raises(ValueError, match="pooling"):
        extract_vectors(ds, backbone, "conv_head", 96, "db", ("max",))


def test_replacing_an_image_changes_the_cache_key(photo_folder):
    import os

    before = load_dataset(f"folder:{photo_folder}").key
    target = photo_folder / "cat" / "cat_0.jpg"
    Image.new("RGB", (64, 48), "red").save(target)
    os.utime(target, ns=(1, 1))
    assert load_dataset(f"folder:{photo_folder}").key != before


def _entry_files(root, pattern):
    return sorted(root.rglob(pattern))


@pytest.mark.parametrize("pattern,damage", [
    ("conv_head.vectors.npz", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    ("conv_head.maps.json", lambda p: p.write_text("{broken")),
    ("conv_head.maps.f16", lambda p: p.write_bytes(p.read_bytes()[:100])),
    ("meta.json", lambda p: p.write_text("")),
])
def test_a_damaged_cache_entry_is_named_and_rebuilt(pattern, damage, photo_folder, backbone, isolated_cache):
    from helpers.cache import DamagedCacheWarning

    ds = load_dataset(f"folder:{photo_folder}")
    maps = extract_maps(ds, backbone, ["conv_head"], 96, "db")["conv_head"]
    vectors = extract_vectors(ds, backbone, "conv_head", 96, "db")["gem"]
    (path,) = _entry_files(isolated_cache, pattern)
    damage(path)
    with pytest.warns(DamagedCacheWarning, match=path.name):
        again_maps = extract_maps(ds, backbone, ["conv_head"], 96, "db")["conv_head"]
        again_vectors = extract_vectors(ds, backbone, "conv_head", 96, "db")["gem"]
    torch.testing.assert_close(again_maps[5], maps[5])
    np.testing.assert_allclose(again_vectors, vectors, atol=1e-6)
    assert extraction_info(ds, backbone, 96, "db")["image_hw"]
    # rebuilt: read back silently next time
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedCacheWarning)
        extract_vectors(ds, backbone, "conv_head", 96, "db")
        extract_maps(ds, backbone, ["conv_head"], 96, "db")


def test_unreadable_files_are_marked_on_the_dataset_cold_and_warm(photo_folder, backbone, isolated_cache):
    (photo_folder / "cat" / "cat_1.jpg").write_bytes(b"")
    ds = load_dataset(f"folder:{photo_folder}")
    with pytest.warns(SkippedImageWarning):
        extract_vectors(ds, backbone, "conv_head", 96, "db")
    assert list(ds.unreadable) == [str(photo_folder / "cat" / "cat_1.jpg")]
    warm = load_dataset(f"folder:{photo_folder}")
    extract_vectors(warm, backbone, "conv_head", 96, "query")   # queries are read from the db entry
    assert warm.unreadable == ds.unreadable
    assert warm.unreadable_indices() == ([ds.imlist.index("cat/cat_1.jpg")],) * 2


def test_maps_beyond_float16_stop_the_extraction_with_what_overflowed(photo_folder, backbone, isolated_cache,
                                                                       monkeypatch):
    ds = load_dataset(f"folder:{photo_folder}")
    real = backbone.forward_taps

    def overflowing(x, layers, grad=False):
        taps = real(x, layers, grad)
        taps["conv_head"] = taps["conv_head"] * 0 + 7.0e4  # a net whose activations grew out of range
        return taps

    monkeypatch.setattr(backbone, "forward_taps", overflowing)
    with pytest.raises(ValueError, match=r"'conv_head' of efficientnet_lite0 .* reaches 7e\+04 .*float16"):
        extract_maps(ds, backbone, ["conv_head"], 96, "db")
    assert not list(cache_root().rglob("conv_head.maps.json"))  # nothing half-written is left as an entry
