"""Reruns reuse a shard only while everything it was computed from still holds."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from pipeline.config import validate
from pipeline.runner import Runner
from tests.conftest import OUTPUT_EXTRAS, SAMPLE
from tests.warcs import PROSE, html_page, write_warc


def _config(inputs: list[str], out, stages: int = 3):
    raw = {"input": inputs, "output_dir": str(out), "stages": [
        {"name": "extract", "steps": [{"type": "extract"}]},
        {"name": "filters", "steps": [{"type": "gopher_repetition"}]},
        {"name": "dedup", "kind": "dedup", "dedup": {"keep": ["oldest"]}},
    ][:stages]}
    return validate(raw)


def _output_urls(out) -> list[str]:
    return sorted(pq.read_table(out / "output", ignore_prefixes=OUTPUT_EXTRAS)["url"].to_pylist())


def test_a_global_stage_recomputes_when_its_set_of_inputs_changes(ray_local, tmp_path):
    a = write_warc(tmp_path / "a.warc.gz", [("https://a.example/0", "2024-05-01T00:00:00Z", html_page(PROSE))])
    b = write_warc(tmp_path / "b.warc.gz", [("https://b.example/0", "2020-05-01T00:00:00Z", html_page(PROSE))])
    inputs, out = [str(a), str(b)], tmp_path / "run"
    Runner(_config(inputs, out, stages=1)).run()
    damaged = out / "stages" / "00_extract" / "part-00001-000.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])

    partial = Runner(_config(inputs, out)).run()
    assert partial["status"] == "partial" and partial["stages"][1]["shards"]["failed"] == 1
    assert _output_urls(out) == ["https://a.example/0"]  # dedup saw one shard: the only copy it knew

    damaged.unlink()
    again = Runner(_config(inputs, out)).run()
    assert again["status"] == "done"
    assert again["stages"][2]["shards"]["computed"] == 2 and again["stages"][2]["shards"]["reused"] == 0
    # With both copies in view, `keep: [oldest]` keeps the 2020 crawl.
    assert _output_urls(out) == ["https://b.example/0"]
    assert again["stages"][2]["rows_out"] == 1


def test_a_changed_input_file_at_the_same_path_is_recomputed(ray_local, tmp_path):
    original = SAMPLE / "wget-2024-dolma-0000.warc.gz"
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(original.read_bytes()[: original.stat().st_size // 3])
    out = tmp_path / "run"
    first = Runner(_config([str(path)], out, stages=2)).run()
    assert first["stages"][0]["reader"].get("truncated") == 1

    shutil.copyfile(original, path)
    second = Runner(_config([str(path)], out, stages=2)).run()
    extract = second["stages"][0]
    assert extract["shards"]["computed"] == 1 and extract["shards"]["reused"] == 0
    assert "truncated" not in extract["reader"]
    assert extract["rows_in"] > first["stages"][0]["rows_in"]
    assert second["stages"][1]["shards"]["computed"] == 1

    third = Runner(_config([str(path)], out, stages=2)).run()  # unchanged now: everything reused
    assert [s["shards"]["computed"] for s in third["stages"]] == [0, 0]


def test_a_shard_that_fails_then_succeeds_recomputes_only_its_own_descendants(ray_local, tmp_path):
    pages = [(f"https://{host}.example/0", "2024-05-01T00:00:00Z", html_page(PROSE.replace("the", host)))
             for host in ("a", "b", "c", "d")]
    inputs = [str(write_warc(tmp_path / f"{k}.warc.gz", [page])) for k, page in enumerate(pages)]
    out = tmp_path / "run"
    three_maps = {"input": inputs, "output_dir": str(out), "stages": [
        {"name": "extract", "steps": [{"type": "extract"}]},
        {"name": "filters", "steps": [{"type": "gopher_repetition"}]},
        {"name": "more", "steps": [{"type": "gopher_quality", "min_doc_words": 5}]}]}
    Runner(validate({**three_maps, "stages": three_maps["stages"][:1]})).run()
    damaged = out / "stages" / "00_extract" / "part-00001-000.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])
    partial = Runner(validate(three_maps)).run()
    assert partial["stages"][1]["shards"]["failed"] == 1
    assert sorted(p.name for p in (out / "stages" / "02_more" / "_done").glob("*.json")) == \
        ["00000.json", "00002.json", "00003.json"]  # each shard keeps its id past the gap

    damaged.unlink()
    fixed = Runner(validate(three_maps)).run()
    assert fixed["status"] == "done"
    assert [(s["shards"]["computed"], s["shards"]["reused"]) for s in fixed["stages"]] == [(1, 3), (1, 3), (1, 3)]
    assert len(_output_urls(out)) == 4
