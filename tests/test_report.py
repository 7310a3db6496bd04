"""The inspection report in headless Chromium, its numbers against manifest.json and the Parquet
files, the dataset card's loading snippet, `winnow inspect` filters, and the comparison page."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import yaml
from warcio.warcwriter import WARCWriter

from pipeline.config import load_config
from pipeline.inspect import Query, inspect_documents
from pipeline.kinds import KINDS
from pipeline.report import write_comparison, write_report
from pipeline.runner import Runner
from tests.conftest import ROOT, SAMPLE, SHARED

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLANTED = '<script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2">'
SECTIONS = ("funnel", "distributions", "samples", "profile", "cost", "budget", "provenance")


def planted_warc(path: Path) -> str:
    """One page of real Wikipedia prose whose text shows markup: a `<script>` that must stay text."""
    article = (SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text().splitlines()[0]
    sentences = re.split(r"(?<=\.)\s*", article)[:24]
    paragraphs = [" ".join(sentences[k:k + 4]) for k in range(0, len(sentences), 4)]
    paragraphs.insert(2, "A tutorial page would show markup such as " + PLANTED.replace("&", "&amp;")
                      .replace("<", "&lt;").replace(">", "&gt;") + " as plain text.")
    html = ("<html><head><title>Anarchism</title></head><body><article><h1>Anarchism</h1>"
            + "".join(f"<p>{p}</p>" for p in paragraphs) + "</article></body></html>").encode()
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(html)))]
        from warcio.statusandheaders import StatusAndHeaders

        record = writer.create_warc_record("https://example.org/wiki/Anarchism", "response", payload=io.BytesIO(html),
                                           http_headers=StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1"),
                                           warc_headers_dict={"WARC-Date": "2024-05-01T00:00:00Z"})
        writer.write_record(record)
        return record.rec_headers.get_header("WARC-Record-ID").strip("<>").removeprefix("urn:uuid:")


def run(out: Path, inputs: list[str], extra: tuple[str, ...] = ()) -> dict:
    cfg = load_config(QUICKSTART, [f"output_dir={out}", f"input={json.dumps(inputs)}", *extra])
    return Runner(cfg).run()


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    planted_id = planted_warc(root / "planted.warc.gz")
    inputs = [str(SAMPLE / "wget-2024-dolma-0001.warc.gz"), str(SAMPLE / "cc-2020-34-resiliparse.warc.gz"),
              str(root / "planted.warc.gz")]
    run(root / "a", inputs)
    # Run b is sampled by py-spy as well: its report shows where the CPU went, function by function.
    run(root / "b", inputs, ("stages.heuristics.steps.gopher_quality.min_doc_words=120", "profile=true"))
    return root / "a", root / "b", planted_id


def read(files: list[Path], columns: list[str] | None = None):
    return ds.dataset([str(f) for f in files], format="parquet").to_table(columns=columns) if files else None


def expected_numbers(run_dir: Path) -> dict[str, int | float]:
    """The report's numbers, recomputed from manifest.json and the Parquet files themselves."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out: dict[str, int | float] = {}
    documents = run_dir  # a stage that passes documents through keeps its upstream stage's files
    for stage in manifest["stages"]:
        name, folder = stage["name"], run_dir / stage["dir"]
        if not KINDS[stage.get("kind", "map")].passes_documents_through:
            documents = folder
        kept = read(sorted(documents.glob("part-*.parquet")))
        dropped = read(sorted(folder.glob("rejected/part-*.parquet")))
        kept_rows = kept.num_rows if kept is not None else 0
        dropped_rows = dropped.num_rows if dropped is not None else 0
        assert (stage["rows_out"], stage["rows_rejected"]) == (kept_rows, dropped_rows)
        out[f"funnel.{name}.docs_in"] = stage["rows_in"]
        out[f"funnel.{name}.docs_out"] = kept_rows
        out[f"funnel.{name}.docs_dropped"] = dropped_rows
        out[f"funnel.{name}.chars_out"] = pc.sum(pc.utf8_length(kept["text"])).as_py() if kept_rows else 0
        out[f"funnel.{name}.chars_dropped"] = pc.sum(pc.utf8_length(dropped["text"])).as_py() if dropped_rows else 0
        reasons = Counter(dropped["drop_reason"].to_pylist()) if dropped_rows else Counter()
        assert reasons == Counter(stage["drop_reasons"])
        out |= {f"reason.{name}.{reason}": n for reason, n in reasons.items()}
        out |= {f"step.{name}.{step}.docs_out": stats["out"] for step, stats in stage["steps"].items()}
        out[f"cost.{name}.cpu_s"] = stage["cpu_s"]
        out |= {f"profile.{name}.{part}.cpu_s": spent["cpu_s"] for part, spent in stage.get("costs", {}).items()
                if spent["cpu_s"] >= 0.0005}
    output = read(sorted((run_dir / "output").glob("part-*.parquet")))
    out["input.docs"] = manifest["stages"][0]["rows_in"]
    out["output.docs"] = output.num_rows
    out["output.chars"] = pc.sum(pc.utf8_length(output["text"])).as_py()
    out["output.tokens"] = round(out["output.chars"] / 4.0)
    out |= {f"language.{k}": n for k, n in Counter(output["language"].to_pylist()).items()}
    pii = Counter()
    for counts in output["pii_counts"].to_pylist():
        pii.update({c["entity"]: c["count"] for c in counts})
    out |= {f"pii.{k}": n for k, n in pii.items()}
    out["pii.total"] = pc.sum(output["pii_count"]).as_py()
    return out


def browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        if os.environ.get("WINNOW_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (WINNOW_REQUIRE_BROWSER) but not installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium); `make test` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = browser(p)
        yield b
        b.close()


def open_page(chromium, path: Path):
    page = chromium.new_page(viewport={"width": 1300, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def test_report_renders_in_chromium_with_every_section_and_inert_page_text(runs, chromium, tmp_path):
    run_a, _, planted_id = runs
    path = write_report(str(run_a))
    page, problems = open_page(chromium, path)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 20_000
    assert problems == []
    for section in SECTIONS:
        assert page.locator(f"section#{section}").is_visible(), section
        assert page.locator(f"section#{section} h2").inner_text()
    assert page.locator("section#distributions svg.chart").count() >= 6
    # The planted page is in the output and its markup is shown as text, never run or parsed.
    kept_ids = read(sorted((run_a / "output").glob("part-*.parquet")), ["id"])["id"].to_pylist()
    assert planted_id in kept_ids
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 2  # the report's data block and its print helper
    assert "<script>window.__pwned = 1</script>" in page.locator("section#samples").inner_text()
    # A drop reason opens to its sample documents.
    reason = page.locator("details.reason").first
    assert not reason.locator(".doc").first.is_visible()
    reason.locator("summary").click()
    assert reason.locator(".doc").first.is_visible()


def test_report_numbers_equal_the_manifest_and_the_parquet_files(runs, chromium):
    run_a, _, _ = runs
    page, _ = open_page(chromium, write_report(str(run_a)))
    shown = {el.get_attribute("data-key"): el.inner_text() for el in page.locator("[data-key]").all()}
    expected = expected_numbers(run_a)
    assert set(expected) <= set(shown), set(expected) - set(shown)
    for key, value in expected.items():
        assert float(shown[key].replace(",", "")) == pytest.approx(value), key
    embedded = json.loads(page.locator("#report-data").text_content())
    assert embedded["output"]["docs"] == expected["output.docs"]


def test_dataset_card_header_and_loading_snippet_work(runs):
    run_a, _, _ = runs
    card = (run_a / "output" / "README.md").read_text()  # `winnow run` writes it
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "part-*.parquet"
    assert header["language"] == ["en"]
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    reader = next(block for block in blocks if "pyarrow" in block)
    counted = subprocess.run([sys.executable, "-c", reader + "\nprint(table.num_rows)"], cwd=run_a / "output",
                             capture_output=True, text=True, check=True)
    snippet = next(block for block in blocks if "duckdb" in block)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=run_a / "output", capture_output=True, text=True,
                            check=True)
    output = read(sorted((run_a / "output").glob("part-*.parquet")))
    assert "en" in result.stdout and str(output.num_rows) in result.stdout
    assert counted.stdout.split() == [str(output.num_rows)]
    import duckdb

    query = re.search(r'duckdb\.sql\("(.*?)"\)', snippet).group(1)
    os.chdir(run_a / "output")
    try:
        rows = duckdb.sql(query).fetchall()
    finally:
        os.chdir(ROOT)
    assert rows == [("en", output.num_rows, pc.sum(pc.utf8_length(output["text"])).as_py())]


def inspect_ids(capsys, path: Path, query: Query) -> set[str]:
    capsys.readouterr()
    inspect_documents(str(path), query, n=0, as_json=True)
    return {json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()}


def test_profile_parts_add_up_and_a_sampled_run_names_its_hottest_code(runs, chromium):
    _, run_b, _ = runs
    manifest = json.loads((run_b / "manifest.json").read_text())
    config = yaml.safe_load((run_b / "run.yaml").read_text())
    for stage, stage_cfg in zip(manifest["stages"], config["stages"], strict=True):
        if stage["kind"] != "map" or not stage["shards"]["computed"]:
            continue
        parts = stage["costs"]
        assert {s["type"] for s in stage_cfg["steps"]} | {"read", "write", "load steps"} <= set(parts), stage["name"]
        # The parts are measured inside each shard's own clock: together never more than the shard's CPU.
        assert sum(p["cpu_s"] for p in parts.values()) <= stage["cpu_s"] * 1.02 + 0.05, stage["name"]
    sampling = manifest["profile"]["sampling"]
    # A few seconds of busy workers at 20 Hz: enough to name them, however fast this machine is today.
    assert sampling["samples"] > 20
    assert "Ray worker" in {p["name"] for p in sampling["processes"]}  # the workers, not only the driver
    assert any(f["name"].startswith(("filters/", "pipeline/")) for f in sampling["files"])
    assert (run_b / "profile" / "pyspy.txt").stat().st_size > 1000
    page, problems = open_page(chromium, write_report(str(run_b)))
    assert problems == []
    section = page.locator("section#profile")
    assert section.locator("svg.chart rect").count() >= 5
    assert "Sampled by py-spy" in section.inner_text()


def test_inspect_filters_return_exactly_the_documents_they_name(runs, capsys):
    run_a, _, _ = runs
    output = read(sorted((run_a / "output").glob("part-*.parquet"))).to_pylist()
    rejected = read(sorted(run_a.glob("stages/*/rejected/part-*.parquet")), ["id", "drop_reason", "drop_stage",
                                                                             "language"]).to_pylist()
    heuristics = read(sorted(run_a.glob("stages/01_heuristics/part-*.parquet")), ["id", "language"]).to_pylist()
    cases = [
        (Query(), {r["id"] for r in output}),
        (Query(language="en"), {r["id"] for r in output if r["language"] == "en"}),
        (Query(min_score=0.1, max_score=0.4), {r["id"] for r in output if 0.1 <= r["quality_score"] <= 0.4}),
        (Query(min_score=0.9, score_column="language_score"),
         {r["id"] for r in output if r["language_score"] >= 0.9}),
        (Query(grep="Common Crawl"), {r["id"] for r in output if "Common Crawl" in r["text"]}),
        (Query(reason="gopher"), {r["id"] for r in rejected if r["drop_reason"].startswith("gopher")}),
        (Query(reason="gopher_quality:short_doc"),
         {r["id"] for r in rejected if r["drop_reason"] == "gopher_quality:short_doc"}),
        (Query(dropped=True, stage="extract"), {r["id"] for r in rejected if r["drop_stage"] == "extract"}),
        (Query(stage="heuristics"), {r["id"] for r in heuristics}),
    ]
    for query, expected in cases:
        assert expected, query  # each filter names some documents
        assert inspect_ids(capsys, run_a, query) == expected, query
    assert inspect_documents(str(run_a), Query(stage="nope")) == 2
    assert "no stage 'nope'" in capsys.readouterr().err
    assert inspect_documents(str(run_a), Query(stage="filters")) == 2  # a stage name is matched whole
    assert inspect_documents(str(run_a), Query(grep="\\pL{3}")) == 2  # an invalid regex is an error, not a crash


def test_budget_and_cost_formulas():
    from pipeline.report.budget import Assumptions, crawl_cost, training_budget

    a = Assumptions(gpu_peak_tflops=1000, mfu=0.5, gpu_hour_usd=2.0, gpus=4, cpu_hour_usd=0.1, dump_pages=1e9)
    budget = training_budget(tokens=2_000_000, docs_in=100, a=a)
    run = budget["this_run"]
    assert run["params"] == 100_000 and run["flops"] == 6 * 100_000 * 2_000_000  # N = D/20, C = 6ND
    assert run["gpu_hours"] == pytest.approx(run["flops"] / (0.5 * 1000e12) / 3600)
    assert run["cost_usd"] == pytest.approx(2.0 * 4 * run["gpu_hours"] / 4)  # price x GPUs x wall hours
    assert budget["full_dump"]["tokens"] == pytest.approx(2_000_000 / 100 * 1e9)
    stages = [{"stage": "a", "docs_in": 100, "cpu_s": 10.0, "wall_s": 6.0},
              {"stage": "b", "docs_in": 50, "cpu_s": 1.0, "wall_s": 1.0}]
    cost = crawl_cost(stages, a)
    assert cost["stages"][0]["docs_per_s_core"] == 10.0 and cost["stages"][1]["dump_share"] == 0.5
    assert cost["dump_core_hours"] == pytest.approx(1e9 / 10 / 3600 + 0.5e9 / 50 / 3600)
    assert cost["dump_cost_usd"] == pytest.approx(cost["dump_core_hours"] * 0.1)


def test_card_header_is_yaml_a_hub_reads_whatever_the_run_and_languages(runs, tmp_path):
    from pipeline.report.collect import collect
    from pipeline.report.render import render_card

    data = collect(str(runs[0]), samples=0, samples_per_reason=0)
    data["run"]["name"] = 'my "best" run: no. 2'
    data["distributions"]["language"] = [{"label": "no", "count": 3}, {"label": "en", "count": 2}]
    header = yaml.safe_load(render_card(data).split("---")[1])
    assert header["language"] == ["no", "en"] and header["pretty_name"] == 'my "best" run: no. 2 (Winnow)'


def test_comparison_shows_config_funnel_and_documents_kept_in_only_one_run(runs, chromium):
    run_a, run_b, _ = runs
    path = write_comparison(str(run_a), str(run_b))
    page, problems = open_page(chromium, path)
    assert problems == []
    assert "gopher_quality.min_doc_words" in page.locator("section#config").inner_text()
    ids = [set(read(sorted((r / "output").glob("part-*.parquet")), ["id"])["id"].to_pylist()) for r in (run_a, run_b)]
    shown = {el.get_attribute("data-key"): int(el.inner_text().replace(",", ""))
             for el in page.locator("section#documents [data-key]").all()}
    assert shown == {"kept_in_both": len(ids[0] & ids[1]), "only_a": len(ids[0] - ids[1]),
                     "only_b": len(ids[1] - ids[0])}
    assert shown["only_a"] > 0  # raising min_doc_words drops some of A's documents in B
    assert "gopher_quality:short_doc" in page.locator("section#documents").inner_text()
