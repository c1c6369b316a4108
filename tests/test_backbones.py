import numpy as np
import pytest
import skimage.data
import torch

from helpers.backbones import BACKBONES, WeightsUnavailableError, load_backbone, try_gpu


def test_try_gpu_falls_back_to_cpu_or_uses_cuda():
    device = try_gpu()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_chelsea_is_a_cat(backbone):
    top = backbone.classify(skimage.data.chelsea(), topk=1)
    assert 281 <= top[0][0] <= 285, top  # ImageNet's cat classes
    assert top[0][1] > 0.3


def test_coffee_is_espresso(backbone):
    top_classes = [c for c, _ in backbone.classify(skimage.data.coffee(), topk=3)]
    assert 967 in top_classes  # espresso


def test_taps_shapes_and_strides(backbone):
    img = np.zeros((224, 320, 3), dtype=np.uint8)
    taps = backbone.forward_taps(backbone.preprocess(img), backbone.all_taps)
    assert list(taps) == backbone.all_taps
    assert taps[backbone.last_conv].shape == (1, 1280, 7, 10)
    assert taps["fc"].shape == (1, 1280)
    assert taps["logits"].shape == (1, 1000)
    assert backbone.stride("conv_head") == 32 and backbone.stride("block2") == 8
    assert backbone.channels("block3") == taps["block3"].shape[1]


def test_fc_tap_is_pooled_last_conv(backbone):
    x = backbone.preprocess(skimage.data.coffee())
    taps = backbone.forward_taps(x, ["conv_head", "fc"])
    torch.testing.assert_close(taps["conv_head"].mean(dim=(2, 3)), taps["fc"], atol=1e-5, rtol=1e-5)


def test_last_conv_alias_and_unknown_tap(backbone):
    x = backbone.preprocess(np.zeros((64, 64, 3), np.uint8))
    assert backbone.forward_taps(x, ["last_conv"])["last_conv"].shape[1] == 1280
    with pytest.raises(ValueError, match="no tap 'conv9'"):
        backbone.forward_taps(x, ["conv9"])


def test_preprocess_rejects_wrong_input(backbone):
    with pytest.raises(ValueError, match="uint8"):
        backbone.preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        backbone.preprocess(np.zeros((8, 8), np.uint8))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("resnet9000")


@pytest.mark.parametrize("name", [b for b in BACKBONES if b != "efficientnet_lite0"])
def test_torchvision_weights_missing_offline_give_instructions(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INSTRET_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(name, device="cpu")
    message = str(info.value)
    assert "IMAGENET1K_V1" in message and "checkpoints" in message and "efficientnet_lite0" in message


def test_weights_cached_looks_in_the_torch_cache(tmp_path, monkeypatch):
    import torch

    from helpers.backbones import _torchvision_weights, weights_cached

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert weights_cached("efficientnet_lite0")
    assert not weights_cached("mobilenet_v2")
    _, path = _torchvision_weights("mobilenet_v2")
    assert path.parent == tmp_path / "checkpoints"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert weights_cached("mobilenet_v2")
    with pytest.raises(ValueError, match="unknown backbone"):
        weights_cached("resnext101")


# ------------------------------------------------------------- fine-tuned retrieval networks
from helpers import backbones as B  # noqa: E402
from retrieval_checkpoints import cirtorch_checkpoint, dirtorch_checkpoint, register  # noqa: E402


def _image():
    return skimage.data.coffee()[::4, ::4].copy()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_cirtorch_checkpoint_gives_its_conv_maps_and_its_own_gem_descriptor(tmp_path, monkeypatch, legacy):
    from helpers.pooling import gem, l2n

    checkpoint, features, dim = cirtorch_checkpoint("resnet18")
    register(monkeypatch, tmp_path, "test_r18_cirtorch", "resnet18", "cirtorch", checkpoint, legacy=legacy)
    bb = load_backbone("test_r18_cirtorch", device="cpu")
    assert bb.all_taps == ["conv1", "layer1", "layer2", "layer3", "layer4", "descriptor"]
    assert bb.is_vector("descriptor") and not bb.is_vector("layer4") and bb.last_conv == "layer4"
    x = bb.preprocess(_image())
    taps = bb.forward_taps(x, ["layer4", "descriptor"])
    with torch.no_grad():
        expected_map = features.eval()(x)
    torch.testing.assert_close(taps["layer4"], expected_map)
    torch.testing.assert_close(taps["descriptor"], l2n(gem(expected_map, 2.7)))
    assert bb.channels("descriptor") == dim
    lw = bb.learned_whitening["retrieval-SfM-120k"]
    assert lw["m"].shape == (dim,) and lw["P"].shape == (dim, dim)
    with pytest.raises(ValueError, match="without an ImageNet classifier"):
        bb.classify(_image())
    B._LOADED.clear()


def test_a_cirtorch_whitening_layer_is_part_of_the_descriptor(tmp_path, monkeypatch):
    from helpers.pooling import l2n, mac

    checkpoint, features, _ = cirtorch_checkpoint("resnet18", pooling="mac", whiten=True)
    register(monkeypatch, tmp_path, "test_r18_mac_w", "resnet18", "cirtorch", checkpoint)
    bb = load_backbone("test_r18_mac_w", device="cpu")
    x = bb.preprocess(_image())
    with torch.no_grad():
        v = l2n(mac(features.eval()(x)))
        w = checkpoint["state_dict"]
        expected = l2n(v @ w["whiten.weight"].T + w["whiten.bias"])
    torch.testing.assert_close(bb.forward_taps(x, "descriptor")["descriptor"], expected)
    B._LOADED.clear()


def test_a_dirtorch_checkpoint_loads_without_running_what_it_pickled(tmp_path, monkeypatch):
    from helpers.pooling import l2n, mac

    marker = tmp_path / "command-ran"
    checkpoint, body, _ = dirtorch_checkpoint("resnet18", pooling="max", marker=marker)
    path = register(monkeypatch, tmp_path, "test_r18_dir", "resnet18", "dirtorch", checkpoint, hashed=False)
    raw = B.read_checkpoint(path)
    assert not marker.exists()
    assert type(raw["pca"]["Landmarks_clean"]).__module__.startswith("skipped.")
    bb = load_backbone("test_r18_dir", device="cpu")
    assert not marker.exists()
    assert bb.weights_id.startswith("test_r18_dir-") and len(bb.weights_id) == len("test_r18_dir-") + 8
    x = bb.preprocess(_image())
    with torch.no_grad():
        fmap = body.eval()(x)
        w = checkpoint["state_dict"]
        expected = l2n(mac(fmap) @ w["module.fc.weight"].T + w["module.fc.bias"])  # norm_features=False
    taps = bb.forward_taps(x, ["layer4", "descriptor"])
    torch.testing.assert_close(taps["layer4"], fmap)
    torch.testing.assert_close(taps["descriptor"], expected)
    B._LOADED.clear()


@pytest.mark.parametrize("name", list(B.FINE_TUNED))
def test_every_registered_network_matches_its_projects_published_layout(name):
    entry = B.FINE_TUNED[name]
    make = cirtorch_checkpoint if entry.checkpoint_format == "cirtorch" else dirtorch_checkpoint
    checkpoint, body, dim = make(entry.architecture)
    model, layers, last_conv, taps, mean, std, _ = B._fine_tuned_model(name, checkpoint)
    model.eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model.body(x), body.eval()(x))
    assert taps[last_conv][0] is (model.body[-1] if entry.architecture.startswith("vgg") else model.body.layer4)
    assert mean == (0.485, 0.456, 0.406)


def test_a_checkpoint_of_another_layout_or_network_is_refused_with_what_differs():
    checkpoint, _, _ = cirtorch_checkpoint("resnet18")
    with pytest.raises(WeightsUnavailableError, match="holds a 'resnet18' network"):
        B._fine_tuned_model("resnet101_gem_sfm120k", checkpoint)
    checkpoint["meta"]["architecture"] = "resnet101"
    with pytest.raises(WeightsUnavailableError, match="does not match a cirtorch resnet101 network: missing"):
        B._fine_tuned_model("resnet101_gem_sfm120k", checkpoint)


def test_a_damaged_or_truncated_weights_file_is_reported(tmp_path, monkeypatch):
    checkpoint, _, _ = cirtorch_checkpoint("resnet18")
    path = register(monkeypatch, tmp_path, "test_r18_damaged", "resnet18", "cirtorch", checkpoint)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailableError, match="is damaged: its sha256"):
        load_backbone("test_r18_damaged", device="cpu")
    truncated = tmp_path / "checkpoints" / "cut.pt"
    truncated.write_bytes(bytes(data[:1000]))
    with pytest.raises(WeightsUnavailableError, match="not a readable checkpoint"):
        B.read_checkpoint(truncated)


@pytest.mark.parametrize("name", list(B.FINE_TUNED))
def test_missing_fine_tuned_weights_say_where_to_get_them(name, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("INSTRET_OFFLINE", "1")
    assert not B.weights_cached(name)
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(name, device="cpu")
    message = str(info.value)
    entry = B.FINE_TUNED[name]
    assert str(tmp_path / "checkpoints" / entry.filename) in message
    assert (entry.url or "drive.google.com") in message


def test_a_dirtorch_gem_network_with_a_fixed_p_gets_it_from_its_options(monkeypatch):
    from helpers.pooling import gem, l2n

    checkpoint, body, _ = dirtorch_checkpoint("resnet18", pooling="gem")
    for key in ("module.adpool.p", "module.fc.weight", "module.fc.bias"):  # fixed p, no whitening layer
        del checkpoint["state_dict"][key]
    checkpoint["model_options"].update(gemp=4, without_fc=True)
    monkeypatch.setitem(B.FINE_TUNED, "test_r18_gem", B.FineTunedWeights("resnet18", "dirtorch", "x.pt", None, "", ""))
    model, *_ = B._fine_tuned_model("test_r18_gem", checkpoint)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), l2n(gem(body.eval()(x), 4.0)))
    checkpoint["model_options"]["pooling"] = "rmac"
    with pytest.raises(WeightsUnavailableError, match="unsupported pooling 'rmac'"):
        B._fine_tuned_model("test_r18_gem", checkpoint)


@pytest.mark.parametrize("damage, message", [("pooling", "unsupported pooling 'gemmp'"),
                                             ("index", "IndexError"), ("state", "AttributeError")])
def test_a_cirtorch_file_outside_the_published_layout_is_refused_not_misread(damage, message, monkeypatch):
    monkeypatch.setitem(B.FINE_TUNED, "test_r18", B.FineTunedWeights("resnet18", "cirtorch", "r18.pth", None, "", ""))
    checkpoint, _, _ = cirtorch_checkpoint("resnet18")
    B._fine_tuned_model("test_r18", checkpoint)  # the undamaged file loads
    if damage == "pooling":
        checkpoint["meta"]["pooling"] = "gemmp"
    elif damage == "index":
        checkpoint["state_dict"]["features.12.weight"] = torch.zeros(1)  # ResNet's features end at index 7
    else:
        checkpoint["state_dict"] = [("features.0.weight", torch.zeros(1))]
    with pytest.raises(WeightsUnavailableError, match=message):
        B._fine_tuned_model("test_r18", checkpoint)
