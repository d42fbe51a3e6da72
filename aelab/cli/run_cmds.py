"""``aelab run`` and ``aelab report``."""

from __future__ import annotations

from pathlib import Path

from aelab.pipeline import RunConfig, run_all

__all__ = ["RunConfig", "run", "report"]


def run(cfg: RunConfig) -> Path:
    """The three studies end to end on ``cfg.data`` (or the demo data), then the report."""
    return run_all(cfg)


def report(run_dir: str) -> Path:
    """Rebuild report.html, report.pdf and report.md of a finished ``aelab run`` without training again.

    Args:
        run_dir: the run folder (the --out of aelab run).
    """
    from aelab.errors import AelabError
    from aelab.layout import RunLayout
    from aelab.progress import info
    from aelab.report.build import build_report
    from aelab.runs import load_config, lock_run_dir, read_json

    run = Path(run_dir)
    if not run.is_dir():
        raise AelabError(f"run folder not found: {run}")
    read_json(RunLayout(run).stages, default={})  # an edited or truncated file: one line, before any work
    if RunLayout(run).config.is_file():
        load_config(run)
    lock_run_dir(run)  # not while an `aelab run` writes it
    try:
        files = build_report(run_dir)
    except AelabError:
        raise
    except Exception as exc:  # a damaged metrics file or figure: one line, not a traceback
        detail = " ".join(str(exc).split())[:200]
        raise AelabError(f"cannot build the report of {run}: a file of the run is damaged "
                         f"({exc.__class__.__name__}: {detail}); rerun the stage that wrote it") from None
    info(f"[report] {files['html']}, {files['pdf']}, {files['md']}")
    return Path(run_dir)
