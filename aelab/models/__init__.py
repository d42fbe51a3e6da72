"""Networks: the residual U-Net autoencoder with its presets, and a plain CNN without a decoder for photos."""

from aelab.models.autoencoder import (
    ARCHS,
    PRESETS,
    AutoencoderOutput,
    ModelConfig,
    ResUNetAutoencoder,
    build_model,
    preset_config,
)
from aelab.models.blocks import ResidualBlock
from aelab.models.cnn import ConvBlock, PlainCNN

__all__ = [
    "ARCHS",
    "PRESETS",
    "AutoencoderOutput",
    "ConvBlock",
    "ModelConfig",
    "PlainCNN",
    "ResUNetAutoencoder",
    "ResidualBlock",
    "build_model",
    "preset_config",
]
