"""Map stages stream into each other: one slow shard holds up only what descends from it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.config import validate
from pipeline.runner import Runner
from tests.warcs import PROSE, html_page, write_warc


def _pages(site: str, n: int) -> list[tuple[str, str, bytes]]:
    """Pages of different text each (the same page over and over would be extracted from a cache)."""
    words = PROSE.split()
    pages = []
    for i in range(n):
        rng = random.Random(f"{site}/{i}")
        shuffled = "\n".join(" ".join(rng.sample(words, len(words))) for _ in range(3))
        pages.append((f"https://{site}.example/{i}", "2024-05-01T00:00:00Z", html_page(f"{PROSE}\n{shuffled}")))
    return pages


def _config(inputs: list[str], out: Path, streaming: bool):
    return validate({"input": inputs, "output_dir": str(out), "streaming": streaming, "stages": [
        {"name": "extract", "steps": [{"type": "extract"}]},
        {"name": "filters", "steps": [{"type": "gopher_repetition"}]},
        {"name": "quality", "steps": [{"type": "gopher_quality"}]},
    ]})


def _times(out: Path, stage_dir: str) -> dict[str, tuple[float, float]]:
    """Shard -> (started, finished), in seconds since the epoch, from its completion record."""
    records = [json.loads(p.read_text()) for p in (out / "stages" / stage_dir / "_done").glob("*.json")]
    return {r["shard"]: (r["started_at"], r["finished_at"]) for r in records}


def _output(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "output").glob("part-*.parquet"))}


def test_a_slow_shard_holds_up_only_its_own_descendants(ray_local, tmp_path):
    # Shard 00000 is a straggler (3,000 pages); three small shards of 3 pages each. Two CPUs.
    inputs = [str(write_warc(tmp_path / "big.warc.gz", _pages("big", 3000)))]
    inputs += [str(write_warc(tmp_path / f"small{k}.warc.gz", _pages(f"small{k}", 3))) for k in range(3)]

    streamed = Runner(_config(inputs, tmp_path / "streamed", streaming=True)).run()
    assert streamed["status"] == "done"
    extract, filters = _times(tmp_path / "streamed", "00_extract"), _times(tmp_path / "streamed", "01_filters")
    # The next stage was at work on small shards while the straggler was still extracting (with two CPUs,
    # one of them busy with the straggler, the small shards take turns on the other).
    assert any(filters[s][0] < extract["00000"][1] for s in ("00001", "00002", "00003")), (extract, filters)

    barrier = Runner(_config(inputs, tmp_path / "barrier", streaming=False)).run()
    extract, filters = _times(tmp_path / "barrier", "00_extract"), _times(tmp_path / "barrier", "01_filters")
    # The control: here no shard of the next stage starts before the last shard of this one is done.
    assert min(start for start, _ in filters.values()) > max(end for _, end in extract.values())

    # The same shards, the same records' counts and the same bytes either way.
    assert _output(tmp_path / "streamed") == _output(tmp_path / "barrier")
    for a, b in zip(streamed["stages"], barrier["stages"], strict=True):
        assert (a["rows_in"], a["rows_out"], a["shards"]) == (b["rows_in"], b["rows_out"], b["shards"])


def test_a_streamed_rerun_reuses_every_shard_and_recomputes_only_a_changed_one(ray_local, tmp_path):
    inputs = [str(write_warc(tmp_path / f"s{k}.warc.gz", _pages(f"s{k}", 4))) for k in range(3)]
    out = tmp_path / "run"
    Runner(_config(inputs, out, streaming=True)).run()
    before = _output(out)

    again = Runner(_config(inputs, out, streaming=True)).run()
    assert [s["shards"]["reused"] for s in again["stages"]] == [3, 3, 3]
    assert _output(out) == before

    write_warc(Path(inputs[1]), _pages("s1", 5))  # one input changes: its chain is recomputed, no other shard
    changed = Runner(_config(inputs, out, streaming=True)).run()
    assert [s["shards"]["computed"] for s in changed["stages"]] == [1, 1, 1]
    assert [s["shards"]["reused"] for s in changed["stages"]] == [2, 2, 2]
    assert changed["stages"][0]["rows_in"] == 4 + 5 + 4


def test_a_shard_that_rolled_over_into_two_files_goes_through_dedup(ray_local, tmp_path):
    # Over 1 MB of text: the extract stage's shard rolls over into `00000` and `00000.001` downstream.
    inputs = [str(write_warc(tmp_path / "big.warc.gz", _pages("big", 1200)))]
    cfg = validate({"input": inputs, "output_dir": str(tmp_path / "run"), "stages": [
        {"name": "extract", "steps": [{"type": "extract"}], "writer": {"target_shard_mb": 1, "row_group_mb": 1}},
        {"name": "filters", "steps": [{"type": "gopher_repetition"}]},
        {"name": "dedup", "kind": "dedup"},
    ]})
    manifest = Runner(cfg).run()
    assert manifest["status"] == "done"
    dedup = manifest["stages"][2]
    assert dedup["shards"]["total"] == dedup["shards"]["done"] >= 2
    assert dedup["rows_in"] == manifest["stages"][1]["rows_out"] == dedup["rows_out"] + dedup["rows_rejected"]
    assert {p.stem for p in (tmp_path / "run" / "stages" / "02_dedup" / "_done").glob("*.json")} >= {"00000.001"}


SHARD_PAGES = 500


def _heavy_pages(site: str, n: int) -> list[tuple[str, str, bytes]]:
    """Pages whose extraction costs far more than their filters: a short article inside a long menu."""
    menu = "".join(f'<li><a href="/{k}">Section {k}</a></li>' for k in range(1200))
    pages = []
    for url, date, body in _pages(site, n):
        article = body.decode().split("<body>")[1].split("</body>")[0]
        pages.append((url, date, f"<html><body><nav><ul>{menu}</ul></nav>{article}</body></html>".encode()))
    return pages


def test_earlier_stages_come_first_on_the_cpus(ray_local, tmp_path):
    # Six shards on two CPUs, the last one larger: Ray alone would give one CPU to the next stage's queue as
    # soon as it has a shard, and the run would end on extract shards beside an idle CPU. Here the next stage
    # waits until every extract shard has a CPU, then fills the CPU the last one leaves free.
    sizes = [SHARD_PAGES] * 5 + [2 * SHARD_PAGES]
    inputs = [str(write_warc(tmp_path / f"s{k}.warc.gz", _heavy_pages(f"s{k}", n))) for k, n in enumerate(sizes)]
    manifest = Runner(_config(inputs, tmp_path / "run", streaming=True)).run()
    assert manifest["status"] == "done"
    extract, filters = _times(tmp_path / "run", "00_extract"), _times(tmp_path / "run", "01_filters")
    last_extract_start = max(start for start, _ in extract.values())
    assert min(start for start, _ in filters.values()) >= last_extract_start, (extract, filters)
    # It still streams: the next stage starts before the last extract shard is done.
    assert min(start for start, _ in filters.values()) < max(end for _, end in extract.values())
