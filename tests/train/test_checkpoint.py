"""Checkpoints: nothing in one is ever run, and a damaged one is a one-line error naming the file."""

from __future__ import annotations

import pytest
import torch

from aelab.data import Preprocessing
from aelab.errors import AelabError
from aelab.models import build_model, preset_config
from aelab.train import load_model, save_checkpoint


def _save(path, classes=("a", "b"), **override):
    cfg = preset_config("tiny", num_classes=len(classes))
    payload = dict(model_config=cfg.to_dict(), preprocessing=Preprocessing(32, 3).to_dict(), classes=list(classes),
                   state_dict=build_model(cfg).state_dict())
    payload.update(override)
    save_checkpoint(path, **{k: v for k, v in payload.items() if v is not None})
    return path


def _error(path) -> str:
    with pytest.raises(AelabError) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert "weights_only" not in text  # never advise loading a checkpoint unsafely
    return text


def test_a_good_checkpoint_loads(tmp_path):
    model, ckpt = load_model(_save(tmp_path / "m.ckpt"))
    assert ckpt["classes"] == ["a", "b"] and model.head is not None


def test_missing_state_dict(tmp_path):
    assert "no state_dict" in _error(_save(tmp_path / "m.ckpt", state_dict=None))


def test_fewer_class_names_than_outputs(tmp_path):
    cfg = preset_config("tiny", num_classes=3)
    path = _save(tmp_path / "m.ckpt", model_config=cfg.to_dict(), state_dict=build_model(cfg).state_dict())
    assert "2 class names for 3 classifier outputs" in _error(path)


def test_weights_that_do_not_fit(tmp_path):
    other = build_model(preset_config("small", num_classes=2)).state_dict()
    assert "weights do not fit" in _error(_save(tmp_path / "m.ckpt", state_dict=other))


def test_preprocessing_that_disagrees_with_the_network(tmp_path):
    error = _error(_save(tmp_path / "m.ckpt", preprocessing=Preprocessing(32, 1).to_dict()))
    assert "preprocessing channels=1" in error


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "aelab-checkpoint-v1", "x": Payload()}, path)
    assert "objects other than tensors" in _error(path)
    assert "must never run" not in capsys.readouterr().out


def test_a_truncated_checkpoint(tmp_path):
    good = _save(tmp_path / "m.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 2])
    assert "cannot read checkpoint" in _error(tmp_path / "cut.ckpt")
