"""Training and inference on Lightning Fabric: pretrain, fine-tune, predict, embed; checkpoints."""

from aelab.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from aelab.train.finetune import FinetuneConfig, FinetuneResult, finetune, finetune_result
from aelab.train.inference import ForwardResult, batched_forward
from aelab.train.predict import EmbedConfig, PredictConfig, PredictResult, embed, predict, predict_result
from aelab.train.pretrain import PretrainConfig, pretrain

__all__ = [
    "EmbedConfig", "FinetuneConfig", "FinetuneResult", "PredictResult", "finetune_result", "predict_result", "ForwardResult", "PredictConfig", "PretrainConfig",
    "batched_forward", "embed", "finetune", "load_checkpoint", "load_model", "predict",
    "pretrain", "save_checkpoint",
]
