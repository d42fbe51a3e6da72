"""Appendix A of the report: stage times and the code listings.

Listings come only from public names (``aelab.models.<class>``, ``aelab.cluster.ekm_weights``,
``aelab.cluster.centroid_step``), read from the package's source files (``importlib.resources`` and
``ast``), never by importing them: the report imports no torch and nothing of ``train``, ``models`` or
``cluster``. A name the installed aelab does not export is left out.
"""

from __future__ import annotations

import ast
from importlib.resources import files
from importlib.resources.abc import Traversable

from aelab.report.content import Code, Paragraph, Section, Table
from aelab.results import RunStages

__all__ = ["section_appendix", "listing"]

# Public names shown as code, in this order, when the package exports them.
_CLUSTER_NAMES = ("ekm_weights", "centroid_step")


def _exporting_module(init: str, package: str, name: str) -> str | None:
    """The module ``package/__init__.py`` (text ``init``) imports ``name`` from; ``package`` itself when it defines
    it; None when it does not export it."""
    for node in ast.parse(init).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if any(alias.name == name and alias.asname in (None, name) for alias in node.names):
                return node.module
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return package
    return None


def _source_file(root: Traversable, module: str, package: bool = False) -> Traversable:
    """The file of ``module`` (``aelab.x.y``) below ``root`` (the ``aelab`` folder)."""
    parts = module.split(".")[1:]
    if package:
        return root.joinpath(*parts, "__init__.py")
    return root.joinpath(*parts[:-1], f"{parts[-1]}.py") if parts else root / "__init__.py"


def _definition(text: str, name: str) -> str | None:
    """The source lines of the top-level class or function ``name`` in ``text`` (decorators included)."""
    for node in ast.parse(text).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            return "\n".join(text.splitlines()[start - 1:node.end_lineno]) + "\n"
    return None


def listing(package: str, name: str, root: Traversable | None = None) -> Code | None:
    """The source of ``<package>.<name>`` (e.g. ``aelab.cluster``, ``ekm_weights``) as a code block, read from
    the source files below ``root`` (default: the installed ``aelab``); ``None`` when the package does not
    export it or its source is not installed."""
    if name.startswith("_"):
        return None
    root = root if root is not None else files("aelab")
    try:
        init = _source_file(root, package, package=True).read_text(encoding="utf-8")
        module = _exporting_module(init, package, name)
        if module is None:
            return None
        path = _source_file(root, module, package=module == package)
        source = _definition(path.read_text(encoding="utf-8"), name)
    except (OSError, SyntaxError, UnicodeDecodeError):  # no source available (a compiled or frozen install)
        return None
    if source is None:
        return None
    where = "/".join(["aelab", *module.split(".")[1:]]) + ("/__init__.py" if module == package else ".py")
    return Code(source, caption=f"{where}: {package}.{name}")


def _stage_times(stages: RunStages) -> Table:
    rows = [[name, stages[name].get("status"), stages[name].get("seconds"), stages[name].get("reason")]
            for name in stages.names()]
    total = stages.total_seconds()
    columns = ["stage", "status", "seconds", "note"]
    if not any(r[3] for r in rows):  # a note column of dashes says nothing
        columns, rows = columns[:3], [r[:3] for r in rows]
    return Table(columns, rows, caption="Wall time per stage",
                 reading=f"{total:.1f} s in all ({total / 60:.1f} min).", float_format="{:.1f}")


def section_appendix(stages: RunStages, model_class: str | None) -> Section:
    """Stage times and the source of the network and of the EKM update."""
    # The U-Net always: the course methods, pretraining and the reconstruction detector train it.
    names = ["ResidualBlock", "ResUNetAutoencoder"] + ([model_class, "ConvBlock"] if model_class == "PlainCNN" else
                                                       [model_class] if model_class else [])
    codes = [listing("aelab.models", n) for n in dict.fromkeys(names)]
    codes += [listing("aelab.cluster", n) for n in _CLUSTER_NAMES]
    codes = [c for c in codes if c is not None]
    blocks = [_stage_times(stages)]
    if codes:
        blocks.append(Paragraph("The code behind sections 1a and 2a, as installed in the aelab that built this "
                                "report."))
    return Section("A", "Appendix: stage times and code", blocks + codes)
