"""raysegment.plugin.weights: reading pretrained weights from anywhere and fitting them to any band count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysegment.plugin.checkpoint import save_checkpoint
from raysegment.plugin.weights import WeightsError, expand_input_bands, load_pretrained, read_state_dict


class _Net(nn.Module):
    def __init__(self, bands: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(bands, 8, 3)
        self.body = nn.Conv2d(8, 8, 3)
        self.head = nn.Conv2d(8, classes, 1)


def test_one_band_sums_rgb_so_grey_gives_rgb_activations() -> None:
    w = torch.randn(4, 3, 3, 3)
    grey = torch.rand(1, 1, 8, 8)
    out = nn.functional.conv2d(grey, expand_input_bands(w, 1))
    assert torch.allclose(out, nn.functional.conv2d(grey.expand(1, 3, 8, 8), w), atol=1e-5)


@pytest.mark.parametrize("bands", [2, 3, 4, 6, 13])
def test_equal_bands_give_the_equal_rgb_activations(bands: int) -> None:
    w = torch.randn(4, 3, 3, 3)
    x = torch.rand(1, 1, 8, 8)
    fitted = expand_input_bands(w, bands)
    assert fitted.shape == (4, bands, 3, 3)
    out = nn.functional.conv2d(x.expand(1, bands, 8, 8), fitted)
    assert torch.allclose(out, nn.functional.conv2d(x.expand(1, 3, 8, 8), w), atol=1e-5)
    if bands == 6:  # a multiple of 3: each RGB kernel copied twice at half weight
        assert torch.allclose(fitted[:, 4], w[:, 1] / 2)


def test_load_pretrained_renames_skips_the_head_and_fits_the_first_conv() -> None:
    src = _Net(bands=3, classes=1000)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    dst = _Net(bands=4, classes=2)
    load_pretrained(dst, state, first_conv="stem.weight", skip=("head.",),
                    rename=lambda k: k.removeprefix("backbone."))
    assert torch.equal(dst.body.weight, src.body.weight)
    assert torch.allclose(dst.stem.weight.sum(1), src.stem.weight.sum(1), atol=1e-6)
    assert not torch.equal(dst.head.weight[:2], src.head.weight[:2])  # left at its own init


def test_the_first_mismatching_tensor_is_named() -> None:
    state = _Net(classes=1000).state_dict()
    with pytest.raises(WeightsError, match=r"'head.weight' has shape \(1000, 8, 1, 1\).*\(5, 8, 1, 1\)"):
        load_pretrained(_Net(), state, source="s3://key:secret@bucket/w.pth")
    try:
        load_pretrained(_Net(), state, source="s3://key:secret@bucket/w.pth")
    except WeightsError as exc:
        assert "secret" not in str(exc)
    with pytest.raises(WeightsError, match="lack the model's tensor 'body.bias'"):
        load_pretrained(_Net(), {k: v for k, v in state.items() if k != "body.bias"}, skip=("head.",))
    with pytest.raises(WeightsError, match="'extra' has no counterpart"):
        load_pretrained(_Net(), {**_Net().state_dict(), "extra": torch.zeros(1)})


def test_read_state_dict_takes_files_urls_and_checkpoints(tmp_path, s3_bucket) -> None:
    net = _Net()
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    assert torch.equal(read_state_dict(str(tmp_path / "bare.pth"))["body.weight"], net.body.weight)
    url = f"s3://{s3_bucket}/w.ckpt"  # the moto server is reached through AWS_* variables
    save_checkpoint(url, state_dict=net.state_dict(), plugin="x", plugin_version="1", params={}, class_names=["a"])
    assert torch.equal(read_state_dict(url)["head.bias"], net.head.bias)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(str(tmp_path / "missing.pth"))


def test_pickled_code_is_refused(tmp_path) -> None:
    torch.save({"w": torch.zeros(1), "obj": _Net}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        read_state_dict(str(tmp_path / "evil.pth"))


def test_enum_names_never_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache.*does not download"):
        read_state_dict("VGG16_Weights.IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="unknown torchvision weights"):
        read_state_dict("VGG16_Weights.NO_SUCH_THING")
