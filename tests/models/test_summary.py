"""Tests for aelab/models/summary.py: describe_model, the content of a run's model.json."""

from __future__ import annotations

import json

from torch import nn

from aelab.models import build_model, preset_config
from aelab.models.summary import FORMAT, describe_model


def test_counts_shapes_and_json_round_trip():
    model = build_model(preset_config("tiny", in_channels=1, num_classes=3, head="bn-mlp"))
    model.train()
    info = describe_model(model)
    assert json.loads(json.dumps(info)) == info  # JSON-safe as returned
    assert info["format"] == FORMAT and info["class"] == "ResUNetAutoencoder"
    assert info["config"]["head"] == "bn-mlp" and info["input_shape"] == [1, 32, 32]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    names = [b["name"] for b in info["blocks"]]
    assert names == ["encoders.0", "encoders.1", "bottleneck", "upconvs.0", "upconvs.1",
                     "decoders.0", "decoders.1", "final_conv", "head"]
    by_name = {b["name"]: b for b in info["blocks"]}
    # Tiny preset: width 8, depth 2 -> 8x32x32, 16x16x16, bottleneck 32x8x8; head gives the logits.
    assert by_name["encoders.1"]["output_shape"] == [16, 16, 16]
    assert by_name["bottleneck"]["output_shape"] == [32, 8, 8]
    assert by_name["head"]["output_shape"] == [3]
    assert by_name["bottleneck"]["parameters"] == sum(p.numel() for p in model.bottleneck.parameters())
    assert model.training  # the forward pass in eval mode leaves the caller's mode as it was


def test_trainable_count_and_wrapped_module():
    model = build_model(preset_config("tiny", in_channels=1, num_classes=2))
    for p in model.encoders.parameters():
        p.requires_grad_(False)

    class Wrapper(nn.Module):  # what Fabric and DDP do: the user's module under .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    info = describe_model(Wrapper(model))
    frozen = sum(p.numel() for p in model.encoders.parameters())
    assert info["class"] == "ResUNetAutoencoder"
    assert info["trainable_parameters"] == info["parameters"] - frozen > 0


def test_any_module_without_config():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    info = describe_model(model)
    assert info["config"] is None and info["input_shape"] is None
    assert [b["output_shape"] for b in info["blocks"]] == [None] * 4
    assert info["parameters"] == (4 * 9 + 4) + (256 * 5 + 5)
    shaped = describe_model(model, input_shape=(1, 8, 8))
    assert [b["output_shape"] for b in shaped["blocks"]] == [[4, 8, 8], [4, 8, 8], [256], [5]]
