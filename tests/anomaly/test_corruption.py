"""Structured training corruption (DRAEM's reconstructive half): what it changes and what it keeps."""

from __future__ import annotations

import numpy as np
import torch

from aelab.anomaly import structured_corruption


def test_corrupts_about_the_rate_locally_and_repeatably():
    clean = torch.rand(400, 1, 32, 32)
    out = structured_corruption(clean, torch.Generator().manual_seed(0), rate=0.5)
    changed = (out != clean).flatten(1).sum(1).numpy()
    share = np.mean(changed > 0)
    assert 0.4 < share < 0.6  # half of the images, one local defect each
    assert np.all(changed < 0.5 * 32 * 32)  # never the whole image
    again = structured_corruption(clean, torch.Generator().manual_seed(0), rate=0.5)
    assert torch.equal(out, again) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(structured_corruption(clean, torch.Generator().manual_seed(1), rate=0.0), clean)


def test_patches_come_from_other_images_of_the_batch():
    """Constant images 0, 1/8, ..., 7/8: a pasted patch brings in another image's value."""
    clean = (torch.arange(8.0) / 8).view(8, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    gen = torch.Generator().manual_seed(3)
    seen_foreign = False
    for _ in range(20):
        out = structured_corruption(clean, gen, rate=1.0)
        for i in range(8):
            values = set(out[i].unique().tolist()) - {clean[i, 0, 0, 0].item()}
            seen_foreign |= bool(values & set(clean[:, 0, 0, 0].tolist()))
    assert seen_foreign
