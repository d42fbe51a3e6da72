import pytest
import torch

from aelab.errors import AelabError
from aelab.models import ModelConfig, PlainCNN, ResUNetAutoencoder, build_model, preset_config


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _block(cin, cout):
    # conv1 (no bias) + batch norm (weight, bias) + conv2 (no bias) + batch norm
    return cin * cout * 9 + 2 * cout + cout * cout * 9 + 2 * cout


def test_small_cnn_is_the_measured_657k_parameter_network():
    model = build_model(preset_config("small", arch="cnn", stem=24, num_classes=10))
    assert isinstance(model, PlainCNN)
    stem = 3 * 24 * 9 + 24  # fixed whitening layer (counted, never trained)
    head = 192 * 10 + 10
    expected = stem + _block(24, 48) + _block(48, 96) + _block(96, 192) + head
    assert n_params(model) == expected == 657_130
    assert [b.conv2.out_channels for b in model.encoders] == [48, 96, 192]


def test_forward_pools_the_last_map_and_never_reconstructs():
    model = PlainCNN(in_channels=3, width=8, depth=2, image_size=32, num_classes=5).eval()
    x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert out.reconstruction is None and out.logits.shape == (3, 5) and out.embedding.shape == (3, 16)
    with torch.no_grad():
        fmap = model.encoders[1](model.encoders[0](x))
    assert fmap.shape == (3, 16, 8, 8)  # each block halves the side
    torch.testing.assert_close(out.embedding, fmap.mean((2, 3)))
    torch.testing.assert_close(out.logits, model.head(fmap.mean((2, 3))))
    assert model.pool_embedding(out.embedding) is out.embedding
    assert model.decoder_modules() == ()


def test_the_whitening_stem_is_fitted_and_never_trained():
    model = build_model(preset_config("tiny", arch="cnn", stem=8, num_classes=2))
    assert not model.stem.weight.requires_grad
    before = model.stem.weight.clone()
    model.fit_stem(torch.randn(16, 3, 16, 16))
    assert not torch.equal(before, model.stem.weight)


def test_arch_rules():
    with pytest.raises(AelabError, match="U-Net's"):
        build_model(ModelConfig(arch="cnn", head="mlp"))
    with pytest.raises(AelabError, match="arch must be"):
        build_model(ModelConfig(arch="resnet"))
    with pytest.raises(AelabError, match="builds arch 'unet'"):
        ResUNetAutoencoder(arch="cnn", head="pool")
    # checkpoints from before the field rebuild as the U-Net
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "arch"}
    assert isinstance(build_model(ModelConfig.from_dict(old)), ResUNetAutoencoder)
    # the course preset's mlp head becomes pool for the cnn, and its width is the cnn's
    course = preset_config("course", arch="cnn")
    assert course.head == "pool" and course.width == 64 and course.depth == 4
    assert preset_config("small", arch="cnn", width=32).width == 32


def test_the_rule_gives_the_cnn_to_fixmatch_on_photos_only():
    from aelab.data.kind import resolve_arch

    assert resolve_arch("auto", None, kind="photo", method="fixmatch") == "cnn"
    assert resolve_arch("auto", None, kind="photo", method="supervised") == "unet"  # level on the tuning draw
    assert resolve_arch("auto", None, kind="grey", method="fixmatch") == "unet"  # the digits' measured network
    assert resolve_arch("cnn", None, kind="grey", method="supervised") == "cnn"  # an explicit choice stands
