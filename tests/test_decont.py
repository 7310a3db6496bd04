"""Decontamination on real text: eval sets from self-instruct's human-written tasks and Wikipedia, passages of
them planted into real C4 pages, and only those pages dropped."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from filters import STEPS
from filters import decont as dc
from pipeline.config import MapStage
from tests.conftest import SHARED

SELF_INSTRUCT = SHARED / "sft" / "self-instruct-human" / "user_oriented_instructions.jsonl"
WIKI = SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt"


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test gets its own disk cache and an empty process cache, so build counts are its own."""
    monkeypatch.setenv("WINNOW_CACHE", str(tmp_path / "cache"))
    dc._index.cache_clear()


@pytest.fixture
def tasks() -> list[dict]:
    rows = [json.loads(line) for line in SELF_INSTRUCT.read_text().splitlines()][:60]
    return [{"instruction": r["instruction"], **r["instances"][0]} for r in rows]


@pytest.fixture
def eval_jsonl(tmp_path, tasks) -> str:
    path = tmp_path / "selfinstruct.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return str(path)


@pytest.fixture
def pages() -> list[str]:
    lines = (SHARED / "cc-text" / "c4-demo" / "c4_demo.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines[:80]]


def make(**params):
    return STEPS["decont"](STEPS["decont"].Params(**params))


def plant(page: str, passage: str) -> str:
    words = page.split(" ")
    return " ".join(words[: len(words) // 2] + [passage] + words[len(words) // 2:])


def words_of(text: str, start: int, count: int) -> str:
    return " ".join(text.split()[start:start + count])


def test_exactly_the_planted_pages_are_dropped(eval_jsonl, tasks, pages):
    long_output = next(t["output"] for t in tasks if len(t["output"].split()) >= 40)
    long_input = next(t["input"] for t in tasks if len(t["input"].split()) >= 40)
    planted = {
        3: words_of(long_output, 5, 20),
        17: words_of(long_input, 10, 13).upper().replace(" ", " -- "),  # case and punctuation do not hide it
        42: words_of(tasks[0]["instruction"], 0, 16),
    }
    docs = [{"id": str(i), "text": plant(p, planted[i]) if i in planted else p} for i, p in enumerate(pages)]
    step = make(sets={"selfinstruct": eval_jsonl})
    step(docs)
    assert {i: d.get("drop_reason") for i, d in enumerate(docs) if d.get("drop_reason")} == {
        i: "decont:selfinstruct" for i in planted}
    for i, passage in planted.items():
        match = docs[i]["decont_match"]
        assert len(match.split()) == 13 and match in " ".join(dc.normalise(passage))
    assert all("decont_match" not in d for i, d in enumerate(docs) if i not in planted)
    assert step.stats["dropped:selfinstruct"] == 3 and step.stats["out"] == len(pages) - 3


def test_n_is_configurable(eval_jsonl, tasks, pages):
    eight = words_of(next(t["output"] for t in tasks if len(t["output"].split()) >= 40), 3, 8)
    docs = lambda: [{"text": plant(pages[0], eight)}, {"text": pages[1]}]  # noqa: E731
    thirteen, by_eight = docs(), docs()
    make(sets={"si": eval_jsonl})(thirteen)
    make(sets={"si": eval_jsonl}, n=8)(by_eight)
    assert [d.get("drop_reason") for d in thirteen] == [None, None]  # 8 words of a long text: no 13-gram
    assert [d.get("drop_reason") for d in by_eight] == ["decont:si", None]


def test_short_eval_texts_match_whole_and_tiny_ones_are_skipped(tmp_path, tasks, pages):
    short = next(t["instruction"] for t in tasks if 8 <= len(t["instruction"].split()) < 13)
    tiny = next(t["output"] for t in tasks if len(t["output"].split()) == 1)  # "Confident"
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"question": short, "answer": tiny}) + "\n")
    docs = [{"text": plant(pages[0], short)}, {"text": plant(pages[1], words_of(short, 0, 7))},
            {"text": plant(pages[2], tiny)}]
    step = make(sets={"short": str(path)})
    step(docs)
    assert [d.get("drop_reason") for d in docs] == ["decont:short", None, None]
    assert docs[0]["decont_match"] == " ".join(dc.normalise(short))
    assert step.index.lengths == (13, len(short.split()))


def test_parquet_set_with_a_list_field_indexes_each_element(tmp_path, pages):
    article = WIKI.read_text().splitlines()[0]
    a, b = words_of(article, 0, 30), words_of(article, 40, 30)
    pq.write_table(pa.table({"question": ["Which describes anarchism?"], "choices": [[a, b]]}),
                   tmp_path / "mc.parquet")
    across = words_of(a, 23, 7) + " " + words_of(b, 0, 6)  # 13 words, but spanning two choices
    docs = [{"text": plant(pages[0], words_of(b, 10, 15))}, {"text": plant(pages[1], across)}]
    make(sets={"wiki_mc": str(tmp_path / "*.parquet")})(docs)
    assert [d.get("drop_reason") for d in docs] == ["decont:wiki_mc", None]


def test_instruction_rows(eval_jsonl, tasks):
    alpaca = json.loads((SHARED / "sft" / "llamafactory-demo" / "alpaca_en_demo.json").read_text())[:50]
    leaked = dict(alpaca[7], output=alpaca[7]["output"] + " " + words_of(tasks[2]["output"], 2, 14))
    rows = alpaca[:7] + [leaked] + alpaca[8:]
    found = dc.contaminated(rows, {"sets": {"si": eval_jsonl}})
    assert found == [None] * 7 + ["decont:si"] + [None] * 42


def test_index_is_built_once_and_then_read_from_disk(eval_jsonl):
    before = dc.BUILDS["count"]
    first, second = make(sets={"si": eval_jsonl}), make(sets={"si": eval_jsonl})
    assert dc.BUILDS["count"] == before + 1 and second.index is first.index
    dc._index.cache_clear()  # a new worker process: the disk cache answers
    third = make(sets={"si": eval_jsonl})
    assert dc.BUILDS["count"] == before + 1 and (third.index.hashes == first.index.hashes).all()
    assert third.index.lengths == first.index.lengths and third.index.names == ("si",)


def test_versions_follow_the_set_contents_and_params(eval_jsonl):
    cls = STEPS["decont"]
    base = cls.versions(cls.Params(sets={"si": eval_jsonl}))
    assert base == cls.versions(cls.Params(sets={"si": eval_jsonl}))
    assert base != cls.versions(cls.Params(sets={"si": eval_jsonl}, n=8))
    with open(eval_jsonl, "a") as f:
        f.write(json.dumps({"question": "one more question"}) + "\n")
    assert base["eval_sets"] != cls.versions(cls.Params(sets={"si": eval_jsonl}))["eval_sets"]


def test_missing_or_unreadable_set_files_are_config_errors(tmp_path):
    with pytest.raises(ValidationError, match=r"sets\.mmlu: no file at '.*/nope/\*\.jsonl'"):
        STEPS["decont"].Params(sets={"mmlu": str(tmp_path / "nope" / "*.jsonl")})
    with pytest.raises(ValueError, match=r"steps\.0 \(decont\).*sets\.gsm8k: no file"):
        MapStage(name="decont", steps=[{"type": "decont", "sets": {"gsm8k": str(tmp_path / "gsm8k.jsonl")}}])
    (tmp_path / "eval.csv").write_text("question\nwhat?\n")
    with pytest.raises(ValidationError, match=r"sets\.csv: .*eval\.csv is not"):
        STEPS["decont"].Params(sets={"csv": str(tmp_path / "eval.csv")})
    with pytest.raises(ValidationError, match="at least one eval set"):
        STEPS["decont"].Params(sets={})


def wiki_warc(path, articles: list[str]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i, article in enumerate(articles):
            html = f"<html><body><article><p>{article}</p></article></body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                f"https://en.wikipedia.org/wiki/Page_{i}", "response", payload=io.BytesIO(html), http_headers=headers,
                warc_headers_dict={"WARC-Date": "2024-05-01T00:00:00Z"}))


def test_a_run_rejects_with_the_match_and_the_report_counts_each_set(ray_local, tmp_path):
    from pipeline.config import validate
    from pipeline.report import write_report
    from pipeline.report.collect import collect
    from pipeline.runner import Runner

    articles = [a[:3000] for a in WIKI.read_text().splitlines()[:6]]
    wiki_warc(tmp_path / "wiki.warc.gz", articles)
    (tmp_path / "quiz.jsonl").write_text(json.dumps({"context": words_of(articles[4], 100, 40)}) + "\n")
    raw = {"input": [str(tmp_path / "wiki.warc.gz")], "output_dir": str(tmp_path / "run"), "stages": [
        {"name": "extract", "steps": [{"type": "extract"}]},
        {"name": "decont", "steps": [{"type": "decont", "sets": {"quiz": str(tmp_path / "quiz.jsonl")}}]}]}
    Runner(validate(raw)).run()
    rejected = pq.read_table(next((tmp_path / "run" / "stages" / "01_decont" / "rejected").glob("*.parquet")))
    assert rejected.column("drop_reason").to_pylist() == ["decont:quiz"]
    assert rejected.column("url").to_pylist() == ["https://en.wikipedia.org/wiki/Page_4"]
    assert rejected.column("decont_match").to_pylist()[0] in " ".join(dc.normalise(articles[4]))
    data = collect(str(tmp_path / "run"), samples=2)
    assert data["contamination"] == [{"stage": "decont", "set": "quiz", "count": 1, "pct": round(100 / 6, 2)}]
    write_report(str(tmp_path / "run"))
    assert 'data-key="decont.decont.quiz">1<' in (tmp_path / "run" / "report.html").read_text()


def test_the_synth_stage_drops_instructions_that_hold_eval_text(tmp_path, tasks):
    from pipeline.synth.params import SynthParams
    from pipeline.synth.shard import run_synth_shard

    leaked = next(t["instruction"] for t in tasks if len(t["instruction"].split()) >= 16)
    evalset = tmp_path / "quiz.jsonl"
    evalset.write_text(json.dumps({"question": leaked}) + "\n")
    text = ("Frequently Asked Questions\nWhat is Common Crawl?\nCommon Crawl is a non-profit that keeps an open "
            "copy of the web for anyone to use.\nWhat did the quiz ask?\nIt asked this: " + leaked + "\n")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "faq", "text": text, "language": "en"}]), path)
    params = SynthParams(qc={"decont": {"sets": {"quiz": str(evalset)}, "fields": ["question"]}})
    stats = run_synth_shard(params, str(path), str(tmp_path / "out"), "0", str(tmp_path / "cache"))
    kept = pq.read_table(tmp_path / "out" / "part-0-000.parquet").to_pylist()
    dropped = pq.read_table(tmp_path / "out" / "rejected" / "part-0-000.parquet").to_pylist()
    assert [r["instruction"] for r in kept] == ["What is Common Crawl?"]
    assert [(r["instruction"], r["drop_reason"]) for r in dropped] == [("What did the quiz ask?", "decont:quiz")]
    assert stats["drop_reasons"] == {"decont:quiz": 1}
    with pytest.raises(ValidationError, match="quiz"):
        SynthParams(qc={"decont": {"sets": {"quiz": str(tmp_path / "missing.jsonl")}}})
