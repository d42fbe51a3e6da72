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


def test_kmeans_stem_is_the_triangle_code_of_whitened_patches_against_kmeans_centroids():
    from scipy.spatial.distance import cdist

    from aelab.models.whiten import KMeansStem

    x = _correlated_images(40)
    stem = KMeansStem(3, 6)
    stem.fit(x, seed=0)
    w = stem.weight.reshape(27, 27).double().numpy()
    b, c = stem.bias.double().numpy(), stem.centroids.reshape(6, 27).double().numpy()
    p = np.stack([x[:, :, i:i + 3, j:j + 3].reshape(len(x), -1).numpy()
                  for i in range(18) for j in range(18)], 1).reshape(-1, 27).astype(np.float64)
    z = p @ w.T + b
    # the whitening keeps every direction of the 3x3 patches, uncorrelated, each of variance lambda / (lambda + eps)
    cov = np.cov(z.T)
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3)
    assert np.all(np.diag(cov) <= 1 + 1e-3) and np.all(np.diag(cov) > 0.5) and cov[0, 0] > 0.99
    # k-means centroids (Lloyd's fixed point): each is the mean of the whitened patches nearest to it
    d = cdist(z, c)
    near = d.argmin(1)
    assert len(np.unique(near)) == 6
    means = np.stack([z[near == j].mean(0) for j in range(6)])
    assert np.allclose(means, c, atol=1e-2 * np.abs(c).max())
    # the layer's output at every interior position: max(0, mean_i d_i - d_j) (Coates et al. 2011, Sec. 3.1.2)
    ref = np.maximum(d.mean(1, keepdims=True) - d, 0)
    got = stem(x)[:, :, 1:19, 1:19].permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    assert np.allclose(got, ref, atol=1e-3)
    assert (got > 0).any(1).all() and (got == 0).mean() > 0.2  # sparse, and no patch without a code


def test_kmeans_stem_is_fitted_saved_and_never_trained():
    model = build_model(preset_config("tiny", arch="cnn", stem=8, stem_kind="kmeans", num_classes=2))
    x = F.interpolate(_correlated_images(8)[:, :, :16, :16], size=32)
    model.fit_stem(x)
    fitted = {k: v.clone() for k, v in model.stem.state_dict().items()}
    assert model.stem.out_channels == 8 and fitted["centroids"].abs().sum() > 0
    assert not any(p.requires_grad for p in model.stem.parameters())
    model(x).logits.sum().backward()
    assert all(torch.equal(model.stem.state_dict()[k], v) for k, v in fitted.items())
    again = build_model(model.config)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    assert torch.equal(again(x).logits, model(x).logits)


def test_kmeans_stem_settings_are_checked_and_old_checkpoints_whiten():
    import pytest

    from aelab.errors import AelabError
    from aelab.models import ModelConfig
    from aelab.models.whiten import STEM_KINDS, KMeansStem
    from aelab.train.options import RULES

    with pytest.raises(AelabError, match="stem_kind must be one of whiten, kmeans"):
        build_model(ModelConfig(stem=8, stem_kind="pca"))
    # the command line's rule (options.py keeps its own tuple) accepts exactly the kinds the model builds
    assert all(RULES["stem_kind"](k) for k in STEM_KINDS) and not RULES["stem_kind"]("pca")
    with pytest.raises(AelabError, match="k-means centroids up to 256"):
        build_model(ModelConfig(stem=258, stem_kind="kmeans"))
    with pytest.raises(AelabError, match="up to 54"):  # whitening: 27 directions of a 3x3 colour patch, two signs
        build_model(ModelConfig(stem=56))
    assert build_model(ModelConfig(stem=56, stem_kind="kmeans")).stem.out_channels == 56  # centroids: no such limit
    with pytest.raises(AelabError, match="needs at least 66 patches of 3x3 pixels, got 64"):  # one 10x10 image
        KMeansStem(3, 66).fit(torch.randn(1, 3, 10, 10))
    # checkpoints from before the field rebuild with the whitening layer
    old = {k: v for k, v in ModelConfig(stem=8).to_dict().items() if k != "stem_kind"}
    assert isinstance(build_model(ModelConfig.from_dict(old)).stem, torch.nn.Conv2d)


def test_kmeans_stem_computes_in_float32_under_autocast():
    from aelab.models.whiten import KMeansStem

    x = _correlated_images(16)
    stem = KMeansStem(3, 8)
    stem.fit(x)
    ref = stem(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = stem(x)
    assert got.dtype == torch.float32 and torch.allclose(got, ref)
