"""The fixed patch-whitening first layer (aelab.models.whiten)."""

import numpy as np
import torch
import torch.nn.functional as F

from aelab.models import build_model, preset_config
from aelab.models.whiten import patch_whitening


def _correlated_images(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 20, 20, generator=g)
    # neighbours and channels correlated
    x = F.avg_pool2d(x, 3, stride=1, padding=1) * 3 + 0.5 * x.mean(1, keepdim=True)
    return x


def test_whitened_patches_have_identity_covariance():
    x = _correlated_images()
    w, b = patch_whitening(x, components=10, eps=1e-6)
    out = F.conv2d(x, w, b)  # valid positions: exactly the patches it was fitted on
    half = out[:, :10].permute(0, 2, 3, 1).reshape(-1, 10).double().numpy()
    assert np.allclose(half.mean(0), 0, atol=1e-3)
    assert np.allclose(np.cov(half.T), np.eye(10), atol=2e-2)
    assert torch.allclose(out[:, 10:], -out[:, :10])  # both signs of every direction


def test_whitening_matches_a_numpy_pca_of_the_patches():
    x = _correlated_images(50)
    w, _ = patch_whitening(x, components=3, eps=0.0)
    p = np.stack([x[:, :, i:i + 3, j:j + 3].reshape(len(x), -1).numpy()
                  for i in range(18) for j in range(18)]).reshape(-1, 27)
    lam, vec = np.linalg.eigh(np.cov(p.T))
    ref = vec[:, ::-1][:, :3].T / np.sqrt(lam[::-1][:3])[:, None]
    got = w[:3].reshape(3, 27).double().numpy()
    cosine = np.abs((got * ref).sum(1)) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert np.allclose(cosine, 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-3)


def test_stem_is_fitted_saved_and_never_trained():
    model = build_model(preset_config("tiny", stem=8, num_classes=2))
    x = _correlated_images(8)[:, :, :16, :16]
    x = F.interpolate(x, size=32)
    model.fit_stem(x)
    fitted = model.stem.weight.clone()
    assert not model.stem.weight.requires_grad and fitted.abs().sum() > 0
    model(x).logits.sum().backward()
    assert model.stem.weight.grad is None and torch.equal(model.stem.weight, fitted)
    again = build_model(model.config)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.stem.weight, fitted)
