"""The synth stage's building blocks: JSON repair, each QC drop reason, and whole shards against a real
loopback server (generation, QC, judge, best-of-N, rephrasing, cache hits and identical bytes on rerun)."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.synth import SynthParams, run_synth_shard
from pipeline.synth.jsonrepair import JSONRepairError, parse_json
from pipeline.synth.qc import QC, QCParams, echo_fraction
from pipeline.synth.recipes import InvalidAnswer, Recipe, RecipeConfig, load_seed_tasks
from tests.conftest import SHARED
from tests.fake_llm_server import ServerThread

SEEDS = SHARED / "sft" / "self-instruct-human" / "user_oriented_instructions.jsonl"


@pytest.mark.parametrize("text, value, repaired", [
    ('{"a": 1}', {"a": 1}, False),
    ('Sure!\n```json\n[{"question": "Q?", "answer": "A."},]\n```\nHope it helps.',
     [{"question": "Q?", "answer": "A."}], True),  # code fence, trailing comma, trailing text
    ('Here: {"instruction": "Explain tides", "output": "Tides are', {"instruction": "Explain tides",
                                                                     "output": "Tides are"}, True),  # cut string
    ('[{"q": "a"}, {"q": "b", "a":', [{"q": "a"}, {"q": "b"}], True),  # dangling key dropped, brackets closed
    ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}, True),  # nested unclosed
    ('{"a": 1} and then {"b": 2}', {"a": 1}, True),  # the first value only
    ('{"a": "quote \\" inside", "b": "x"} trailing', {"a": 'quote " inside', "b": "x"}, True),
])
def test_json_repair(text, value, repaired):
    assert parse_json(text) == (value, repaired)


def test_json_repair_gives_up_on_prose():
    with pytest.raises(JSONRepairError):
        parse_json("There is no JSON in this answer at all.")


SOURCE = {"id": "d1", "language": "en", "text": (
    "The tides are caused mainly by the gravitational pull of the Moon on the oceans of the Earth, "
    "with a smaller contribution from the Sun, and most coasts see two high tides every day.")}


@pytest.fixture(scope="module")
def qc():
    return QC(QCParams(min_output_chars=20, max_output_chars=400, max_instruction_chars=200))


@pytest.mark.parametrize("row, reason", [
    ({"instruction": "Why?", "output": "Because the Moon pulls on the water of the oceans."},
     "synth:instruction_short"),
    ({"instruction": "Explain " + "very " * 60 + "tides.", "output": "Because the Moon pulls on the oceans."},
     "synth:instruction_long"),
    ({"instruction": "What causes the tides?", "output": "The Moon."}, "synth:output_short"),
    ({"instruction": "What causes the tides?", "output": "The Moon. " * 60}, "synth:output_long"),
    ({"instruction": "What causes the tides?", "output": "I'm sorry, but I can't help with that request."},
     "synth:refusal"),
    ({"instruction": "What causes the tides?", "output": "As an AI language model, I think the Moon does it."},
     "synth:refusal"),
    ({"instruction": "What causes the tides?", "output": "The tides are caused mainly by the gravitational pull of "
                                                          "the Moon on the oceans of the Earth."}, "synth:echo_source"),
    ({"instruction": "What causes the tides?", "output": "Les marées sont causées surtout par l'attraction de la "
                                                          "Lune sur les océans de la Terre."},
     "synth:language_mismatch"),
    ({"instruction": "What causes the tides?", "output": "Mostly the Moon's gravity, with some help from the Sun."},
     None),
])
def test_each_qc_reason(qc, row, reason):
    assert qc.check_instruction(row, SOURCE) == reason


def test_echo_and_near_duplicates(qc):
    assert echo_fraction(SOURCE["text"], SOURCE["text"]) == 1.0 and echo_fraction("short text", SOURCE["text"]) == 0
    assert not qc.is_near_duplicate("What causes the tides on the coasts of the Earth every day?")
    assert qc.is_near_duplicate("What causes the tides on the coasts of the Earth every day ?")
    assert not qc.is_near_duplicate("How do bees find their way back to the hive after foraging?")


def test_recipes_render_parse_and_route():
    qa = Recipe(RecipeConfig(name="paragraph_qa", min_quality=0.5))
    assert qa.applies({"quality_score": 0.7}) and not qa.applies({"quality_score": 0.2}) and not qa.applies({})
    prompt = qa.render(SOURCE)[0]["content"]
    assert "<document>" in prompt and SOURCE["text"] in prompt and "JSON list" in prompt
    with pytest.raises(InvalidAnswer) as bad:
        qa.parse('{"nothing": "useful"}', SOURCE)
    assert bad.value.reason == "synth:json_invalid"
    with pytest.raises(InvalidAnswer) as bad:
        qa.parse("no json", SOURCE)
    assert bad.value.reason == "synth:json_unparseable"
    back = Recipe(RecipeConfig(name="backtranslation"))
    rows, _ = back.parse('{"instruction": "Explain what causes tides."}', SOURCE)
    assert rows == [{"instruction": "Explain what causes tides.", "input": "", "output": SOURCE["text"]}]
    wiki = Recipe(RecipeConfig(name="wikipedia_paraphrase"))
    assert wiki.parse("Here is a paraphrased version:\nTides are...", SOURCE)[0] == [{"text": "Tides are..."}]
    seeds = load_seed_tasks(str(SEEDS))
    assert len(seeds) == 252 and all(t["instruction"] for t in seeds)
    selfi = Recipe(RecipeConfig(name="self_instruct"), seeds)
    assert selfi.render(SOURCE) == selfi.render(SOURCE) and "Task 3:" in selfi.render(SOURCE)[0]["content"]
    with pytest.raises(ValueError, match="not a built-in recipe"):
        Recipe(RecipeConfig(name="poem"))
    with pytest.raises(ValidationError, match="endpoint and synth.model"):
        SynthParams(generator="llm")
    with pytest.raises(ValidationError):
        SynthParams(generatr="webqa")


def real_docs(tmp_path, n: int = 12) -> str:
    """A shard of real CCNet 'head' documents, with made-up quality scores to route by."""
    docs = []
    for path in sorted((SHARED / "cc-text" / "dolma-ccnet-head").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            docs += [json.loads(line) for line in f]
    rows = [{"id": d["id"], "url": d["id"], "text": d["text"], "language": "en",
             "quality_score": round(k / n, 3)} for k, d in enumerate(docs[:n])]
    rows.append({"id": "forced-refusal", "url": "x", "text": "FAKE:refuse " + docs[0]["text"][:500],
                 "language": "en", "quality_score": 0.9})
    rows.append({"id": "forced-fence", "url": "y", "text": "FAKE:fenced " + docs[1]["text"][:800],
                 "language": "en", "quality_score": 0.9})
    rows.append({"id": "forced-prose", "url": "z", "text": "FAKE:badjson " + docs[2]["text"][:500],
                 "language": "en", "quality_score": 0.9})
    path = tmp_path / "part-00000.parquet"
    schema = pa.schema([("id", pa.string()), ("url", pa.string()), ("text", pa.string()), ("language", pa.string()),
                        ("quality_score", pa.float32())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def test_a_shard_generates_checks_writes_and_reruns_from_the_cache(tmp_path):
    shard_in = real_docs(tmp_path)
    with ServerThread(rate_429=0.2, rate_500=0.2) as server:
        params = SynthParams(generator="llm", endpoint=server.url, model="fake", backoff_s=0.01, backoff_max_s=0.05,
                             price_input_per_mtok=1.0, price_output_per_mtok=2.0, batch_docs=5, recipes=[
                                 RecipeConfig(name="paragraph_qa", min_quality=0.3),
                                 RecipeConfig(name="wikipedia_paraphrase", max_quality=0.3)])
        first = run_synth_shard(params, shard_in, str(tmp_path / "out"), "00000", str(tmp_path / "cache"))
        sent = server.stats()["answered"]
        paths = [tmp_path / "out" / "part-00000-000.parquet", tmp_path / "out" / "rejected" / "part-00000-000.parquet",
                 tmp_path / "out" / "rephrased" / "part-00000-000.parquet"]
        before = [p.read_bytes() for p in paths]
        again = run_synth_shard(params, shard_in, str(tmp_path / "out"), "00000", str(tmp_path / "cache"))
        assert server.stats()["answered"] == sent  # the rerun sent nothing
    assert [p.read_bytes() for p in paths] == before  # and wrote the same bytes
    assert again["cache_hits"] == first["completed"] and again["requests"] == 0 and again["cost_usd"] == 0
    kept = pq.read_table(paths[0]).to_pylist()
    rejected = pq.read_table(paths[1]).to_pylist()
    rephrased = pq.read_table(paths[2]).to_pylist()
    assert first["instructions"] == len(kept) > 10 and first["rejected"] == len(rejected)
    assert {r["recipe"] for r in kept} == {"paragraph_qa"} and all(r["generator"] == "llm" for r in kept)
    assert {r["source_id"] for r in rephrased} and all(r["recipe"] == "wikipedia_paraphrase" for r in rephrased)
    assert all(r["quality_score"] < 0.3 for r in rephrased) and all(r["text"] for r in rephrased)
    reasons = {r["source_id"]: r["drop_reason"] for r in rejected}
    assert reasons["forced-refusal"] == "synth:refusal" and reasons["forced-prose"] == "synth:json_unparseable"
    assert "forced-fence" in {r["source_id"] for r in kept} and first["json_repaired"] >= 1  # repaired, then kept
    assert first["drop_reasons"] == dict(sorted({r: sum(1 for x in rejected if x["drop_reason"] == r)
                                                 for r in {x["drop_reason"] for x in rejected}}.items()))
    assert first["retries"] > 0
    assert first["prompt_tokens"] == sum(r["prompt_tokens"] for r in kept + rejected + rephrased)
    assert first["cost_usd"] == pytest.approx((first["prompt_tokens"] + 2 * first["completion_tokens"]) / 1e6)


def test_judge_and_best_of_keep_one_sample_per_prompt(tmp_path):
    shard_in = real_docs(tmp_path, n=4)
    with ServerThread() as server:
        params = SynthParams(generator="llm", endpoint=server.url, model="fake", best_of=3, backoff_s=0.01,
                             recipes=[RecipeConfig(name="paragraph_qa", max_pairs=2)],
                             qc=QCParams(judge=True, min_score=2, near_dup_threshold=None))
        stats = run_synth_shard(params, shard_in, str(tmp_path / "out"), "s", str(tmp_path / "cache"))
    kept = pq.read_table(tmp_path / "out" / "part-s-000.parquet").to_pylist()
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "part-s-000.parquet").to_pylist()
    assert stats["judged"] > 0 and all(r["score"] is not None and r["score"] >= 2 for r in kept)
    assert stats["drop_reasons"].get("synth:not_best", 0) > 0
    per_doc = {}
    for r in kept:  # one sample per document survives: its questions carry one sample index
        if "(sample " in r["instruction"]:
            per_doc.setdefault(r["source_id"], set()).add(r["instruction"].rsplit("(sample ", 1)[1])
    assert per_doc and all(len(v) == 1 for v in per_doc.values())
    assert {r["drop_reason"] for r in rejected} <= {"synth:not_best", "synth:judge_below_min", "synth:refusal",
                                                     "synth:json_unparseable", "synth:output_short"}


def test_self_instruct_and_backtranslation_from_seed_tasks(tmp_path):
    shard_in = real_docs(tmp_path, n=3)
    with ServerThread() as server:
        params = SynthParams(generator="llm", endpoint=server.url, model="fake", seed_tasks=str(SEEDS),
                             recipes=[RecipeConfig(name="self_instruct"), RecipeConfig(name="backtranslation")])
        stats = run_synth_shard(params, shard_in, str(tmp_path / "out"), "s", str(tmp_path / "cache"))
    # The fake server answers these prompts with a list of pairs, not the object they ask for.
    assert stats["drop_reasons"].get("synth:json_invalid", 0) >= 3 and stats["requests"] == 2 * 6


def test_webqa_shard_needs_no_endpoint(tmp_path):
    text = ("Frequently Asked Questions\nWhat is Common Crawl?\nCommon Crawl is a non-profit that keeps an open "
            "copy of the web for anyone to use.\nHow often is the web crawled?\nA new crawl is published about "
            "once a month, with billions of pages.\n")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "faq", "text": text, "language": "en"},
                                         {"id": "empty", "text": "", "language": "en"}]), path)
    stats = run_synth_shard(SynthParams(), str(path), str(tmp_path / "out"), "0", str(tmp_path / "cache"))
    kept = pq.read_table(tmp_path / "out" / "part-0-000.parquet").to_pylist()
    assert [r["instruction"] for r in kept] == ["What is Common Crawl?", "How often is the web crawled?"]
    assert kept[0]["recipe"] == "webqa:text_question" and kept[0]["generator"] == "webqa"
    assert stats["instructions"] == 2 and stats["requests"] == 0 and stats["docs_in"] == 2
    assert pq.read_table(tmp_path / "out" / "rephrased" / "part-0-000.parquet").num_rows == 0  # written, empty


def test_an_unreadable_shard_is_named_and_leaves_no_output(tmp_path):
    bad = tmp_path / "part-bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(RuntimeError, match="part-bad.parquet"):
        run_synth_shard(SynthParams(), str(bad), str(tmp_path / "out"), "bad", str(tmp_path / "cache"))
    assert not list((tmp_path / "out").rglob("*.parquet")) and not list((tmp_path / "out").rglob("*.tmp"))
