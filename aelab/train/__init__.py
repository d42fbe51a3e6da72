"""Training and inference on Lightning Fabric: pretrain, fine-tune, predict, embed; checkpoints."""

from aelab.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from aelab.train.finetune import FinetuneConfig, FinetuneResult, finetune, finetune_result
from aelab.train.inference import ForwardResult, batched_forward
from aelab.train.predict import (
    EmbedConfig,
    EmbedResult,
    PredictConfig,
    PredictResult,
    embed,
    embed_result,
    predict,
    predict_result,
)
from aelab.train.pretrain import PretrainConfig, pretrain

__all__ = [
    "EmbedConfig", "EmbedResult", "FinetuneConfig", "FinetuneResult", "ForwardResult", "PredictConfig", "PredictResult",
    "PretrainConfig", "batched_forward", "embed", "embed_result", "finetune", "finetune_result", "load_checkpoint",
    "load_model", "predict", "predict_result", "pretrain", "save_checkpoint",
]
