"""Tests of helpers.demo_dataset: a small generation into tmp_path (2 instances per dataset,
2 queries and 4 views per instance)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import demo_dataset as dd
from helpers.data import load_gnd_json

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(n_instances=2, n_views=4, n_distractors=2, n_queries=2)


def _digests(demo_dir: Path) -> dict[str, str]:
    return {p.relative_to(demo_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(demo_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return dd.generate_demo(tmp_path_factory.mktemp("demo_root"), seed=3, **SMALL)


# ----------------------------------------------------------------------------- the full design
def test_full_set_design_meets_the_brief():
    assert len(dd.DEMO_INSTANCES) >= 12
    assert len(dd.TRAIN_INSTANCES) >= 8
    assert len(dd.DEMO_INSTANCES) == 14 and dd.DEFAULT_QUERIES == 5  # 70 queries, as Oxford's 5 per landmark
    assert dd.DEFAULT_DISTRACTORS["demo"] >= 100
    n_db = len(dd.DEMO_INSTANCES) * dd.DEFAULT_VIEWS["demo"] + dd.DEFAULT_DISTRACTORS["demo"]
    assert n_db >= 300
    # demo-train learns whitening and ACTNET heads: it stays about 120 database images
    n_train = len(dd.TRAIN_INSTANCES) * dd.DEFAULT_VIEWS["demo-train"] + dd.DEFAULT_DISTRACTORS["demo-train"]
    assert 100 <= n_train <= 140
    assert dd._sizes() == {"n_instances": None, "n_views": dd.DEFAULT_VIEWS, "n_queries": 5,
                           "n_distractors": dd.DEFAULT_DISTRACTORS}
    names = [s.name for s in dd.DEMO_INSTANCES + dd.TRAIN_INSTANCES]
    assert len(set(names)) == len(names)
    assert all(max(shape) <= 640 for shape in dd.IMAGE_SHAPES)


def test_train_instances_are_disjoint_regions_from_demo_instances():
    sources = dd.load_sources()

    def regions(specs):
        for spec in specs:
            yield spec.source, spec.box
            if spec.alt_source:
                yield spec.alt_source, spec.alt_box

    for source, (x1, y1, x2, y2) in regions(dd.TRAIN_INSTANCES):
        h, w = sources[source].shape[:2]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (source, (x1, y1, x2, y2))
        for other_source, (a1, b1, a2, b2) in regions(dd.DEMO_INSTANCES):
            if other_source == source:
                inter = max(0, min(x2, a2) - max(x1, a1)) * max(0, min(y2, b2) - max(y1, b1))
                assert inter == 0, (source, (x1, y1, x2, y2), (a1, b1, a2, b2))


def test_clutter_regions_never_contain_an_instance():
    rng = np.random.default_rng(0)
    boxes = dd._instance_boxes_by_source()
    for _ in range(300):
        source, (x1, y1, x2, y2) = dd.clutter_box(rng, float(rng.uniform(0.3, 3.0)))
        for a1, b1, a2, b2 in boxes.get(source, ()):
            inter = max(0, min(x2, a2) - max(x1, a1)) * max(0, min(y2, b2) - max(y1, b1))
            assert inter <= dd.CLUTTER_MAX_INSTANCE_OVERLAP * (a2 - a1) * (b2 - b1)


@pytest.mark.parametrize("spec", dd.DEMO_INSTANCES + dd.TRAIN_INSTANCES, ids=lambda s: s.name)
def test_instance_patches_have_a_substantial_mask(spec):
    pixels, mask = dd.instance_patch(spec)
    assert pixels.shape[:2] == mask.shape and pixels.shape[2] == 3
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert 0.2 < mask.mean() <= 1.0


# --------------------------------------------------------------------------------- the rule
def _info(**kw):
    base = dict(kind="view", instance="x", visible=0.9, visible_side=200.0, apparent_side=210.0)
    base.update(kw)
    return dd.ViewInfo(**base)


@pytest.mark.parametrize("kw,label", [
    ({}, "easy"),
    ({"visible": 0.09}, "junk"),
    ({"visible": 0.5, "visible_side": 20.0}, "junk"),
    ({"visible": 0.2}, "hard"),
    ({"visible": 0.26}, "easy"),
    ({"tilt": 60.0}, "hard"),
    ({"roll": -90.0}, "hard"),
    ({"roll": 30.0}, "easy"),
    ({"blur_sigma": 3.0}, "hard"),
    ({"exposure": 0.3}, "hard"),
    ({"apparent_side": 50.0, "visible_side": 48.0}, "hard"),
    ({"jpeg_artifact_quality": 8}, "hard"),
    ({"jpeg_artifact_quality": 40}, "easy"),
])
def test_label_rule(kw, label):
    assert dd.label_view(_info(**kw)) == label


def test_render_view_measures_what_it_aims_at():
    spec = dd.DEMO_INSTANCES[4]
    _, easy = dd.render_view(np.random.default_rng(1), spec, "easy")
    _, junk = dd.render_view(np.random.default_rng(2), spec, "junk")
    assert easy.visible > 0.4 and junk.visible < 0.1
    assert junk.label == "junk"
    with pytest.raises(ValueError, match="aim"):
        dd.render_view(np.random.default_rng(3), spec, "medium")


def test_homography_without_rotation_is_a_scaling():
    matrix = dd.view_homography(100, 50, 0, 0, 0, 2.0)
    corners = dd._apply_h(matrix, np.array([[0.0, 0.0], [100.0, 50.0]]))
    np.testing.assert_allclose(corners, [[-100, -50], [100, 50]], atol=1e-9)
    assert dd.tilt_angle(0, 0) == 0.0
    assert abs(dd.tilt_angle(60, 0) - 60.0) < 1e-9


def test_exposure_lut_identity_and_darkening():
    identity = dd.exposure_lut(1.0, 1.0, [1, 1, 1])
    np.testing.assert_array_equal(identity, np.tile(np.arange(256, dtype=np.uint8), (3, 1)))
    dark = dd.exposure_lut(2.5, 0.5, [1, 1, 1])
    assert dark[:, 128].max() < 128


# --------------------------------------------------------------------------- generated files
def test_small_set_counts_and_files(small_demo):
    for dataset, specs in (("demo", dd.DEMO_INSTANCES), ("demo-train", dd.TRAIN_INSTANCES)):
        d = load_gnd_json(small_demo / f"gnd_{dataset}.json")
        n_inst, n_views, n_dis = SMALL["n_instances"], SMALL["n_views"], SMALL["n_distractors"]
        assert d["protocol"] == "revisited"
        n_q = SMALL["n_queries"]
        assert len(d["qimlist"]) == n_inst * n_q and len(d["imlist"]) == n_inst * n_views + n_dis
        assert len(d["gnd"]) == len(d["qimlist"]) == len(set(d["qimlist"]))
        assert d["query_labels"] == [s.name for s in specs[:n_inst] for _ in range(n_q)]
        assert d["instance_labels"].count("distractor") == n_dis
        for name in d["query_labels"]:
            assert d["instance_labels"].count(name) == n_views
        assert not set(d["imlist"]) & set(d["qimlist"]), "queries must not be database images"
        for name in d["imlist"] + d["qimlist"]:
            with Image.open(small_demo / "jpg" / name) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert max(image.size) <= 640


def test_train_and_demo_share_no_instance(small_demo):
    demo = load_gnd_json(small_demo / "gnd_demo.json")
    train = load_gnd_json(small_demo / "gnd_demo-train.json")
    assert not (set(demo["instance_labels"]) - {"distractor"}) & set(train["instance_labels"])
    assert not set(demo["imlist"]) & set(train["imlist"])


def test_ground_truth_is_consistent(small_demo):
    for dataset in dd.DATASETS:
        d = load_gnd_json(small_demo / f"gnd_{dataset}.json")
        views = json.loads((small_demo / f"views_{dataset}.json").read_text())
        for q, entry in enumerate(d["gnd"]):
            easy, hard, junk = set(entry["easy"]), set(entry["hard"]), set(entry["junk"])
            assert not easy & hard and not easy & junk and not hard & junk
            instance = d["query_labels"][q]
            mine = {i for i, label in enumerate(d["instance_labels"]) if label == instance}
            assert easy | hard | junk == mine
            for key in ("easy", "hard", "junk"):
                assert all(views["db"][i]["label"] == key for i in entry[key])
            x1, y1, x2, y2 = entry["bbx"]
            with Image.open(small_demo / "jpg" / d["qimlist"][q]) as image:
                width, height = image.size
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert (x2 - x1) * (y2 - y1) >= 0.02 * width * height


def test_queries_of_an_instance_are_different_mild_views_with_the_same_ground_truth(small_demo):
    for dataset in dd.DATASETS:
        d = load_gnd_json(small_demo / f"gnd_{dataset}.json")
        views = json.loads((small_demo / f"views_{dataset}.json").read_text())
        assert len(views["query"]) == len(d["qimlist"])
        by_instance = {}
        for q, instance in enumerate(d["query_labels"]):
            by_instance.setdefault(instance, []).append(q)
        for instance, queries in by_instance.items():
            assert len(queries) == SMALL["n_queries"]
            first = d["gnd"][queries[0]]
            for q in queries:
                assert {k: d["gnd"][q][k] for k in ("easy", "hard", "junk")} == \
                    {k: first[k] for k in ("easy", "hard", "junk")}
                info = views["query"][q]
                assert info["instance"] == instance and info["bbx"] == d["gnd"][q]["bbx"]
                assert info["visible"] == 1.0 and info["label"] == "easy"  # fully visible, mild
                assert info["tilt"] <= 40 and abs(info["roll"]) <= 10
            assert len({tuple(d["gnd"][q]["bbx"]) for q in queries}) == len(queries)
            pixels = [np.asarray(Image.open(small_demo / "jpg" / d["qimlist"][q])) for q in queries]
            assert pixels[0].shape != pixels[1].shape or not np.array_equal(pixels[0], pixels[1])


def test_view_parameters_span_strong_perspective_and_scale():
    rng = np.random.default_rng(0)
    params = [dd._view_parameters(rng, aim) for aim in dd.VIEW_SCHEDULE * 40]
    tilts = np.array([dd.tilt_angle(p["yaw"], p["pitch"]) for p in params])
    assert tilts.max() <= 62.0 and tilts.max() > 55.0 and np.mean(tilts > 30) > 0.2
    fills = np.array([p["fill"] for p in params])
    assert fills.min() >= 1 / 3 and fills.max() <= 1.0 and fills.min() < 0.4 and fills.max() > 0.95
    assert any(p["n_occluders"] > 0 for p in params if p["visible_target"] >= 1.0)
    assert any(p["light"][1] > 0.3 for p in params)


def test_side_for_fill_makes_the_object_span_that_fraction_of_the_frame():
    pixels, mask = dd.instance_patch(dd.DEMO_INSTANCES[5])
    for fill, (yaw, pitch, roll) in ((0.5, (0, 0, 0)), (1.0, (50, 10, -15)), (1 / 3, (-30, 25, 5))):
        side = dd.side_for_fill(mask, yaw, pitch, roll, fill, 512, 384)
        _, alpha = dd.warp_patch(pixels, mask, yaw, pitch, roll, side)
        ys, xs = np.nonzero(alpha > 0.01)
        span = max((np.ptp(xs) + 1) / 512, (np.ptp(ys) + 1) / 384)
        assert abs(span - fill) < 0.04 + 0.02 * fill, (fill, span)


def test_lighting_gain_is_a_ramp_about_one():
    gain = dd.lighting_gain(384, 512, 0.0, 0.4)
    assert gain.shape == (384, 512)
    assert abs(float(gain.mean()) - 1.0) < 1e-3
    assert 0.59 < gain.min() < 0.62 and 1.38 < gain.max() < 1.41
    np.testing.assert_allclose(gain[0], gain[-1])  # constant along the direction's normal
    np.testing.assert_allclose(dd.lighting_gain(10, 20, 1.0, 0.0), 1.0)


def test_generation_is_deterministic_and_subsets_are_prefixes(small_demo, tmp_path):
    again = dd.generate_demo(tmp_path / "a", seed=3, **SMALL)
    assert _digests(again) == _digests(small_demo)
    fewer = dd.generate_demo(tmp_path / "b", seed=3, n_instances=1, n_views=2, n_distractors=1,
                             n_queries=1)
    for name in ("demo_astronaut_face_query0.jpg", "demo_astronaut_face_01.jpg",
                 "train_us_flag_00.jpg", "demo_distractor_000.jpg"):
        assert (fewer / "jpg" / name).read_bytes() == (small_demo / "jpg" / name).read_bytes()
    other_seed = dd.generate_demo(tmp_path / "c", seed=4, n_instances=1, n_views=1, n_distractors=0,
                                  n_queries=1)
    name = "demo_astronaut_face_00.jpg"
    assert (other_seed / "jpg" / name).read_bytes() != (small_demo / "jpg" / name).read_bytes()


def test_manifest_detects_tampering_and_generate_repairs(tmp_path):
    demo_dir = dd.generate_demo(tmp_path, seed=5, n_instances=1, n_views=2, n_distractors=1, n_queries=1)
    sizes = dd._sizes(1, 2, 1, 1)
    assert dd.verify_demo(demo_dir, seed=5, sizes=sizes) == []
    victim = demo_dir / "jpg" / "demo_astronaut_face_00.jpg"
    original = victim.read_bytes()
    victim.write_bytes(original[:-10] + b"0123456789")
    problems = dd.verify_demo(demo_dir, seed=5, sizes=sizes)
    assert len(problems) == 1 and "demo_astronaut_face_00.jpg" in problems[0]
    assert dd.verify_demo(demo_dir, seed=6) != []  # another seed
    assert dd.verify_demo(demo_dir, seed=5, sizes=dd._sizes(2, 2, 1, 1)) != []  # other sizes
    (demo_dir / "jpg" / "demo_distractor_000.jpg").unlink()
    assert any("missing" in p for p in dd.verify_demo(demo_dir))
    dd.generate_demo(tmp_path, seed=5, n_instances=1, n_views=2, n_distractors=1, n_queries=1,
                     force=False)
    assert victim.read_bytes() == original
    assert dd.verify_demo(demo_dir, seed=5, sizes=sizes) == []
    assert dd.verify_demo(tmp_path / "nowhere") == [f"no manifest at {tmp_path / 'nowhere' / 'manifest.json'}"]


def test_content_digest_follows_the_content(small_demo, tmp_path):
    digest = dd.content_digest(small_demo)
    assert len(digest) == 12 and digest == dd.content_digest(small_demo)
    other = dd.generate_demo(tmp_path, seed=4, n_instances=1, n_views=1, n_distractors=0, n_queries=1)
    assert dd.content_digest(other) != digest
    with pytest.raises(dd.DemoDatasetError, match="make_demo.py"):
        dd.content_digest(tmp_path / "nowhere")


def test_ensure_demo_generates_only_when_needed(tmp_path, monkeypatch):
    # Shrink the "full" set so the test stays fast.
    monkeypatch.setattr(dd, "INSTANCES", {"demo": dd.DEMO_INSTANCES[:1], "demo-train": dd.TRAIN_INSTANCES[:1]})
    monkeypatch.setattr(dd, "DEFAULT_VIEWS", {"demo": 1, "demo-train": 1})
    monkeypatch.setattr(dd, "DEFAULT_QUERIES", 1)
    monkeypatch.setattr(dd, "DEFAULT_DISTRACTORS", {"demo": 1, "demo-train": 0})
    calls = []
    real_generate = dd.generate_demo
    monkeypatch.setattr(dd, "generate_demo", lambda *a, **k: calls.append(k) or real_generate(*a, **k))
    demo_dir = dd.ensure_demo(tmp_path, seed=0)
    assert demo_dir == tmp_path / "demo" and (demo_dir / "gnd_demo.json").is_file()
    assert len(calls) == 1
    dd.ensure_demo(tmp_path, seed=0)
    assert len(calls) == 1, "an intact set must not be regenerated"
    monkeypatch.setattr(dd, "GENERATOR_VERSION", "test-version")
    dd.ensure_demo(tmp_path, seed=0)
    assert len(calls) == 2, "another generator version must be regenerated"
    assert json.loads((demo_dir / "manifest.json").read_text())["generator_version"] == "test-version"


def test_failed_generation_leaves_no_partial_set(tmp_path, monkeypatch):
    def broken(rng):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dd, "render_distractor", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        dd.generate_demo(tmp_path, seed=0, n_instances=1, n_views=1, n_distractors=1, n_queries=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_views"):
        dd.generate_demo(tmp_path, n_views=0)
    with pytest.raises(ValueError, match="n_instances"):
        dd.generate_demo(tmp_path, n_instances=0)
    with pytest.raises(ValueError, match="n_distractors"):
        dd.generate_demo(tmp_path, n_distractors=-1)
    with pytest.raises(ValueError, match="n_queries"):
        dd.generate_demo(tmp_path, n_queries=0)
    with pytest.raises(ValueError, match="n_views"):
        dd.generate_demo(tmp_path, n_views=2.5)
    assert list(tmp_path.iterdir()) == []


def test_make_demo_script_verify(small_demo):
    result = subprocess.run([sys.executable, str(REPO / "data_scripts" / "make_demo.py"),
                             "--root", str(small_demo.parent), "--seed", "3", "--verify"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout
    result = subprocess.run([sys.executable, str(REPO / "data_scripts" / "make_demo.py"),
                             "--root", str(small_demo.parent), "--seed", "-1"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "--seed" in result.stderr
