"""Training and inference on Lightning Fabric: pretrain, fine-tune, predict, embed; checkpoints."""

from aelab.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from aelab.train.finetune import FinetuneConfig, finetune
from aelab.train.inference import ForwardResult, batched_forward
from aelab.train.predict import EmbedConfig, PredictConfig, embed, predict
from aelab.train.pretrain import PretrainConfig, pretrain

__all__ = [
    "EmbedConfig", "FinetuneConfig", "ForwardResult", "PredictConfig", "PretrainConfig",
    "batched_forward", "embed", "finetune", "load_checkpoint", "load_model", "predict",
    "pretrain", "save_checkpoint",
]
