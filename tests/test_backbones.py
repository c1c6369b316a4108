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
