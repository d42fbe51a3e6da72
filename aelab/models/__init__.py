"""Networks: the residual block and the residual U-Net autoencoder with its presets."""

from aelab.models.autoencoder import (
    PRESETS,
    AutoencoderOutput,
    ModelConfig,
    ResUNetAutoencoder,
    build_model,
    preset_config,
)
from aelab.models.blocks import ResidualBlock

__all__ = [
    "PRESETS",
    "AutoencoderOutput",
    "ModelConfig",
    "ResUNetAutoencoder",
    "ResidualBlock",
    "build_model",
    "preset_config",
]
