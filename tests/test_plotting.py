"""User text in figures is drawn literally: two `$` in a file name never reach math text."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text

from aelab.plotting import literal, literal_text

NAME = "price $12_$x12.png"


def test_literal_text_keeps_generated_tick_labels_as_math():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([1, 10, 100], [1, 2, 3])
    ax.set_xscale("log")
    ax.set_title(NAME)
    literal_text(fig)
    assert ax.title.get_parse_math() is False
    fig.savefig(io.BytesIO(), format="png")  # no ParseSyntaxException
    assert any("mathdefault" in t.get_text() for t in ax.get_xticklabels())  # 10^k still math text


def test_without_it_matplotlib_fails_on_the_name():
    # Guards the test above: the name really is one that math text cannot parse.
    import pytest

    fig = Figure()
    fig.subplots().set_title(NAME)
    with pytest.raises(ValueError):
        fig.savefig(io.BytesIO(), format="png")


def test_anomaly_panels_with_dollar_names(tmp_path):
    from aelab.anomaly.figures import reconstruction_panels, score_histogram

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 1, 8, 8), dtype=np.uint8)
    path = reconstruction_panels(images, images / 255.0, rng.random((2, 8, 8)), [f"{NAME}\nssim 0.1", "$x$y$"],
                                 tmp_path / "p.png", title=f"most anomalous {NAME}")
    assert path.stat().st_size > 0
    assert score_histogram([0.1, 0.2], [0.5, 0.6], 0.3, tmp_path / "h.png", score_name=NAME).stat().st_size > 0


def test_cluster_figures_with_dollar_names(tmp_path):
    from aelab.cluster.figures import plot_clusterings

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    labels = np.repeat([0, 1, 2], 10)
    centers = np.stack([X[labels == k].mean(0) for k in range(3)])
    fig = plot_clusterings(X, {NAME: (labels, centers)}, suptitle=NAME, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    titles = [t for t in fig.findobj(Text) if NAME in t.get_text()]
    assert titles and all(t.get_parse_math() is False for t in titles)


def test_literal_escapes_dollars():
    assert literal(NAME) == r"price \$12_\$x12.png"
