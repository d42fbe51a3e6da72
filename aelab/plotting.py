"""Figures show user-provided text literally.

Matplotlib parses text between two ``$`` as math: a file named ``price $12_$x12.png`` makes a
figure fail (or show garbage) inside its math-text parser. `literal_text` turns that parsing off
for every text of a figure that can carry user input (titles, axis labels, legends, annotations,
suptitles) and leaves it on for tick labels and axis offsets, which matplotlib writes itself
(log axes use math text for ``10^k``). Figures call it once, before saving.

Example:
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(); ax = fig.subplots(); _ = ax.set_title("price $12_$x12.png")
    >>> literal_text(fig) is fig
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["literal_text", "literal"]


def _tick_texts(fig: Any) -> set[int]:
    """Ids of the texts matplotlib generates from numbers (tick labels, offset texts)."""
    ids: set[int] = set()
    for ax in fig.get_axes():
        for axis in ax._axis_map.values() if hasattr(ax, "_axis_map") else (ax.xaxis, ax.yaxis):
            ids.add(id(axis.offsetText))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ids.update((id(tick.label1), id(tick.label2)))
    return ids


def literal_text(fig: Any) -> Any:
    """Show every user-facing text of ``fig`` literally (no ``$...$`` math); returns ``fig``."""
    from matplotlib.text import Text

    generated = _tick_texts(fig)
    for text in fig.findobj(Text):
        if id(text) not in generated:
            text.set_parse_math(False)
    return fig


def literal(text: str) -> str:
    """``text`` with every ``$`` escaped, for a text drawn by some other route (``\\$`` is a literal ``$``)."""
    return str(text).replace("$", r"\$")
