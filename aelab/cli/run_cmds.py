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
    from aelab.progress import info
    from aelab.report.build import build_report

    files = build_report(run_dir)
    info(f"[report] {files['html']}, {files['pdf']}, {files['md']}")
    return Path(run_dir)
