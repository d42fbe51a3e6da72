"""The one trainer: best = a copy of last (serialised once), keep best or keep last, early stop, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aelab.train.engine import make_fabric
from aelab.train.trainer import Rows, Task, TrainData, Trainer, TrainerConfig


def _trainer(tmp_path, **settings) -> Trainer:
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 255, (24, 1, 4, 4), dtype=np.uint8)
    config = TrainerConfig(**{"epochs": 4, "batch_size": 8, "lr": 1e-2, "monitor": "val_loss", **settings})
    data = TrainData(Rows(images, index=np.arange(16)), Rows(images, index=np.arange(16, 24)))
    return Trainer(config, nn.Linear(16, 1), data, fabric=make_fabric("cpu"), run_dir=tmp_path)


def _task(trainer: Trainer, scores: list[float]) -> Task:
    """A regression step and a validation that reports ``scores`` epoch by epoch."""
    seen = iter(scores)

    def step(batch, _step: int):
        x = batch[0].float().flatten(1) / 255
        return {"loss": trainer.model(x).pow(2).mean()}

    return Task(step, lambda: {"val_loss": next(seen)})


def _epoch(path) -> int:
    return int(torch.load(path, weights_only=True)["epoch"])


def test_an_improving_epoch_serialises_one_checkpoint_and_best_is_its_copy(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    saves, save = [], torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (saves.append(obj.get("epoch")), save(obj, f, *a, **k)))
    state = trainer.fit(_task(trainer, [3.0, 2.0, 2.5, 2.6]), payload={"stage": "test"})
    assert saves == [0, 1, 2, 3]  # one serialisation per epoch, improving (0, 1) or not (2, 3)
    assert (tmp_path / "best.ckpt").read_bytes() != (tmp_path / "last.ckpt").read_bytes()
    assert _epoch(tmp_path / "best.ckpt") == 1 and _epoch(tmp_path / "last.ckpt") == 3
    assert (state.best, state.best_epoch) == (2.0, 1)


def test_an_improving_last_epoch_leaves_best_equal_to_last(tmp_path):
    trainer = _trainer(tmp_path, epochs=2)
    trainer.fit(_task(trainer, [3.0, 2.0]), payload={})
    assert (tmp_path / "best.ckpt").read_bytes() == (tmp_path / "last.ckpt").read_bytes()


def test_keep_best_stops_after_patience_and_keep_last_never_does(tmp_path):
    best = _trainer(tmp_path / "best", patience=2, epochs=6)
    state = best.fit(_task(best, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), payload={})
    assert len(state.history) == 3 and _epoch(tmp_path / "best" / "best.ckpt") == 0
    last = _trainer(tmp_path / "last", patience=2, epochs=6, keep="last")
    state = last.fit(_task(last, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), payload={})
    assert len(state.history) == 6 and (state.best, state.best_epoch) == (6.0, 5)
    assert (tmp_path / "last" / "best.ckpt").read_bytes() == (tmp_path / "last" / "last.ckpt").read_bytes()


def test_resume_makes_the_copy_an_interruption_missed(tmp_path, monkeypatch):
    import aelab.train.trainer as module

    trainer = _trainer(tmp_path, epochs=2)
    copies = []
    monkeypatch.setattr(module, "copy_file", lambda src, dst: copies.append(dst))  # interrupted before each copy
    trainer.fit(_task(trainer, [3.0, 2.0]), payload={})
    assert copies and not (tmp_path / "best.ckpt").exists()
    monkeypatch.undo()
    again = _trainer(tmp_path, epochs=2)
    state = again.fit(_task(again, []), payload={}, resume=True)  # nothing left to train
    assert state.best_epoch == 1 and _epoch(tmp_path / "best.ckpt") == 1


def test_bad_settings_are_one_line_errors():
    from aelab.errors import AelabError

    with pytest.raises(AelabError, match="keep"):
        TrainerConfig(epochs=1, batch_size=1, lr=1.0, keep="first")
    with pytest.raises(AelabError, match="optimizer"):
        TrainerConfig(epochs=1, batch_size=1, lr=1.0, optimizer="lamb")
