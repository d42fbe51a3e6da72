"""Settings are checked in one place (RunOptions), for the CLI and the Python API alike."""

from __future__ import annotations

import pytest

from aelab.errors import AelabError
from aelab.train import EmbedConfig, FinetuneConfig, PredictConfig, PretrainConfig, pretrain


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, PredictConfig, EmbedConfig])
def test_defaults_are_valid(cls):
    cls()


@pytest.mark.parametrize("kwargs, name", [
    (dict(epochs=True), "epochs"), (dict(lr=float("nan")), "lr"), (dict(channels=2), "channels"),
    (dict(device="cuda:x"), "device"), (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(noise_factor=-0.1), "noise_factor"),
])
def test_bad_values_name_the_option(kwargs, name):
    with pytest.raises(AelabError, match=f"--{name} must be"):
        PretrainConfig(**kwargs)


def test_cuda_index_is_a_device():
    PretrainConfig(device="cuda:1")


def test_resume_with_an_edited_config_names_the_file(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("epochs: 0\n")
    with pytest.raises(AelabError, match=r"config\.yaml: --epochs must be an integer >= 1"):
        pretrain(PretrainConfig(resume=str(tmp_path)))
