import pytest
import torch

from aelab.errors import AelabError
from aelab.models import AutoencoderOutput, ModelConfig, ResidualBlock, ResUNetAutoencoder, build_model, preset_config


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_course_preset_is_the_reports_network():
    # The course report's network with 10 classes has exactly this many parameters.
    model = build_model(preset_config("course", num_classes=10))
    assert n_params(model) == 49_227_917
    assert model.config.image_size == 64 and model.bottleneck_channels == 1024
    assert model.embedding_dim == 1024 * 4 * 4


def test_forward_returns_typed_output_with_shapes():
    model = ResUNetAutoencoder(in_channels=3, width=8, depth=2, image_size=32, num_classes=7).eval()
    out = model(torch.rand(4, 3, 32, 32))
    assert isinstance(out, AutoencoderOutput)
    assert out.reconstruction.shape == (4, 3, 32, 32)
    assert out.logits.shape == (4, 7)
    assert out.embedding.shape == (4, 32 * 8 * 8)
    # Sigmoid output: reconstructions live in [0, 1], the space of the target.
    assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1


def test_bn_mlp_head_standardises_the_embedding():
    model = ResUNetAutoencoder(in_channels=1, width=4, depth=2, image_size=16, num_classes=3, head="bn-mlp").train()
    assert isinstance(model.head[0], torch.nn.BatchNorm1d)
    assert model(torch.rand(4, 1, 16, 16)).logits.shape == (4, 3)


def test_no_head_and_no_skips():
    with_skips = ResUNetAutoencoder(in_channels=1, width=8, depth=2, image_size=16, num_classes=0)
    no_skips = ResUNetAutoencoder(in_channels=1, width=8, depth=2, image_size=16, num_classes=0, skip_connections=False)
    out = no_skips(torch.rand(2, 1, 16, 16))
    assert out.logits is None and out.reconstruction.shape == (2, 1, 16, 16)
    # Without skips the decoder blocks see half the channels, so the network is smaller.
    assert n_params(no_skips) < n_params(with_skips)


def test_decoder_without_skips_cannot_see_the_input_except_through_the_bottleneck():
    model = ResUNetAutoencoder(in_channels=1, width=4, depth=2, image_size=16, num_classes=0,
                               skip_connections=False).eval()
    x = torch.rand(1, 1, 16, 16)
    b, skips = model.encode(x)
    # Decoding the same bottleneck with garbage skip maps gives the same image: no skip path.
    garbage = [torch.randn_like(s) for s in skips]
    assert torch.allclose(model.decode(b, skips), model.decode(b, garbage))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30, depth=3), "not divisible"),
        (dict(in_channels=2), "in_channels"),
        (dict(head="transformer"), "head"),
        (dict(width=0), "width"),
    ],
)
def test_bad_configs_are_clear_errors(kwargs, message):
    with pytest.raises(AelabError, match=message):
        ModelConfig(**kwargs).validate()


def test_unknown_preset():
    with pytest.raises(AelabError, match="unknown preset"):
        preset_config("huge")


def test_residual_block_keeps_spatial_size():
    block = ResidualBlock(3, 5)
    assert block(torch.rand(2, 3, 9, 9)).shape == (2, 5, 9, 9)


def test_config_round_trip():
    cfg = preset_config("small", num_classes=4, skip_connections=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
