"""`winnow report`: the inspection report, the comparison of two runs, and the dataset card."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.budget import Assumptions

# On local disk paths are Paths, as before; a run directory on object storage (s3://...) is written there too.
Target = Path | str


def _join(run_dir: str, *parts: str) -> Target:
    if "://" in run_dir:
        return "/".join([run_dir.rstrip("/"), *parts])
    return Path(run_dir, *parts)


def write_report(run_dir: str, assumptions: Assumptions | None = None, tokenizer: str | None = None,
                 out: str | None = None) -> Target:
    """Writes RUN_DIR/report.html (self-contained) and refreshes the dataset card; returns the path.
    With `out`, only the page is written there: the run directory is left as it is."""
    from pipeline.report.collect import collect
    from pipeline.report.render import render_report

    data = collect(run_dir, assumptions, tokenizer=tokenizer)
    path = _join(out) if out else _join(run_dir, "report.html")
    write_text(path, render_report(data))
    if out is None:
        write_card(run_dir, data)
    return path


def write_comparison(run_a: str, run_b: str, assumptions: Assumptions | None = None,
                     out: str | None = None) -> Target:
    """Writes RUN_A/compare-<B>.html: run A and run B side by side."""
    from pipeline.report.compare import compare
    from pipeline.report.render import render_compare

    comparison = compare(run_a, run_b, assumptions)
    name = run_b.rstrip("/").rsplit("/", 1)[-1] if "://" in run_b else Path(run_b).resolve().name
    path = _join(out) if out else _join(run_a, f"compare-{name}.html")
    write_text(path, render_compare(comparison))
    return path


def write_card(run_dir: str, data: dict | None = None) -> Target:
    """Writes the Hugging Face-style dataset cards: RUN_DIR/output/README.md, for the documents' folder on
    its own, and RUN_DIR/README.md, which names `output/`, `instructions/` and `rephrased/` as the configs
    of one dataset (the layout a Hub repository holding those folders has too). Returns the first."""
    from pipeline.report.collect import collect
    from pipeline.report.hub import hub_configs
    from pipeline.report.render import render_card

    data = data or collect(run_dir, samples=0, samples_per_reason=0)
    configs = hub_configs(run_dir)
    path = _join(run_dir, "output", "README.md")
    write_text(path, render_card(data, configs))
    write_text(_join(run_dir, "README.md"), render_card(data, configs, run_level=True))
    return path


def write_text(path: Target, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a page (on object storage, one PUT)."""
    if isinstance(path, str):
        import fsspec

        from pipeline.storage import write_bytes

        fs, fs_path = fsspec.core.url_to_fs(path)
        write_bytes(fs, fs_path, text.encode("utf-8"))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
