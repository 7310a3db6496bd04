"""`winnow report`: the inspection report, the comparison of two runs, and the dataset card."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.budget import Assumptions


def write_report(run_dir: str, assumptions: Assumptions | None = None, tokenizer: str | None = None,
                 out: str | None = None) -> Path:
    """Writes RUN_DIR/report.html (self-contained) and refreshes the dataset card; returns the path.
    With `out`, only the page is written there: the run directory is left as it is."""
    from pipeline.report.collect import collect
    from pipeline.report.render import render_report

    data = collect(run_dir, assumptions, tokenizer=tokenizer)
    path = Path(out) if out else Path(run_dir) / "report.html"
    write_text(path, render_report(data))
    if out is None:
        write_card(run_dir, data)
    return path


def write_comparison(run_a: str, run_b: str, assumptions: Assumptions | None = None,
                     out: str | None = None) -> Path:
    """Writes RUN_A/compare-<B>.html: run A and run B side by side."""
    from pipeline.report.compare import compare
    from pipeline.report.render import render_compare

    comparison = compare(run_a, run_b, assumptions)
    path = Path(out) if out else Path(run_a) / f"compare-{Path(run_b).resolve().name}.html"
    write_text(path, render_compare(comparison))
    return path


def write_card(run_dir: str, data: dict | None = None) -> Path:
    """Writes RUN_DIR/output/README.md, the Hugging Face-style dataset card."""
    from pipeline.report.collect import collect
    from pipeline.report.render import render_card

    data = data or collect(run_dir, samples=0, samples_per_reason=0)
    path = Path(run_dir) / "output" / "README.md"
    write_text(path, render_card(data))
    return path


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
