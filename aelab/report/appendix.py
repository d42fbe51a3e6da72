"""Appendix A of the report: stage times and the code listings.

Listings come only from public names (``aelab.models.<class>``, ``aelab.cluster.ekm_weights``,
``aelab.cluster.centroid_step``); a name the installed aelab does not export is left out.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import aelab
from aelab.report.content import Code, Paragraph, Section, Table

__all__ = ["section_appendix", "listing"]

# Public names shown as code, in this order, when the package exports them.
_CLUSTER_NAMES = ("ekm_weights", "centroid_step")


def listing(module, name: str) -> Code | None:
    """The source of ``module.<name>`` as a code block, or ``None`` when it is not exported."""
    obj = getattr(module, name, None)
    if obj is None or name.startswith("_"):
        return None
    try:
        source, path = inspect.getsource(obj), inspect.getsourcefile(obj)
    except (OSError, TypeError):  # no source available (a compiled or frozen install)
        return None
    root = Path(aelab.__file__).resolve().parents[1]  # the folder that holds the aelab package
    try:
        where = Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        where = Path(path).name
    return Code(source, caption=f"{where}: {module.__name__}.{name}")


def _stage_times(stages: dict) -> Table:
    rows = [[name, st.get("status"), st.get("seconds"), st.get("reason")]
            for name, st in stages.items() if not name.startswith("_")]
    total = sum(st.get("seconds") or 0 for name, st in stages.items() if not name.startswith("_"))
    columns = ["stage", "status", "seconds", "note"]
    if not any(r[3] for r in rows):  # a note column of dashes says nothing
        columns, rows = columns[:3], [r[:3] for r in rows]
    return Table(columns, rows, caption="Wall time per stage",
                 reading=f"{total:.1f} s in all ({total / 60:.1f} min).", float_format="{:.1f}")


def section_appendix(stages: dict, model_class: str | None) -> Section:
    """Stage times and the source of the network and of the EKM update."""
    import aelab.cluster
    import aelab.models

    names = ["ResidualBlock"] + ([model_class] if model_class else ["ResUNetAutoencoder"])
    codes = [listing(aelab.models, n) for n in dict.fromkeys(names)]
    codes += [listing(aelab.cluster, n) for n in _CLUSTER_NAMES]
    codes = [c for c in codes if c is not None]
    blocks = [_stage_times(stages)]
    if codes:
        blocks.append(Paragraph("The code behind sections 1a and 2a, as installed in the aelab that built this report."))
    return Section("A", "Appendix: stage times and code", blocks + codes)
