"""The synthetic-data LLM client against a real loopback server that injects faults (no mocks)."""

from __future__ import annotations

import email.utils
import json
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from llmclient import LLMClient, LLMError
from llmclient.cache import RequestCache
from llmclient.client import AsyncLLMClient, Request, parse_retry_after, run_sync
from llmclient.ratelimit import BucketPair, LocalLimiter, make_limiter
from tests.conftest import ROOT
from tests.fake_llm_server import ServerThread


def prompts(n: int, tag: str = "q") -> list[Request]:
    return [Request([{"role": "user", "content": f"{tag} {i}: tell me about item {i}"}], {"max_tokens": 16})
            for i in range(n)]


def client(url: str, cache: RequestCache | None = None, model: str = "fake", concurrency: int = 16) -> AsyncLLMClient:
    return AsyncLLMClient(url, model, concurrency=concurrency, backoff_s=0.01, backoff_max_s=0.05, cache=cache)


def test_retry_after_in_seconds_and_as_an_http_date():
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5 and parse_retry_after("-2") == 0.0
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0  # already past
    assert parse_retry_after("soon") is None and parse_retry_after("") is None and parse_retry_after(None) is None


def test_faults_are_retried_until_every_request_is_answered_once():
    with ServerThread(rate_429=0.05, rate_500=0.02, rate_drop=0.01) as server:
        c = client(server.url)
        results = run_sync(c.run(prompts(300)))
        stats = server.stats()
    assert [r.status for r in results] == ["ok"] * 300
    assert all(r.text == f"In other words: q {i} tell me about item {i}" for i, r in enumerate(results))  # in order
    assert stats["answered"] == 300 and stats["distinct"] == 300 and stats["answered_twice"] == 0
    faults = stats["faults"]
    assert faults["429"] and faults["429_http_date"] and faults["500"] and faults["drop"]  # each kind happened
    assert c.stats.retries == faults["429"] + faults["500"] + faults["drop"]
    assert c.stats.retry_causes == {"429": faults["429"], "500": faults["500"], "connection": faults["drop"]}
    assert c.stats.requests == stats["requests"] and c.stats.completed == 300 and c.stats.failed == 0
    assert c.stats.completion_tokens == sum(r.completion_tokens for r in results) > 0


def test_bad_requests_are_skipped_recorded_and_not_paid_twice(tmp_path):
    requests = prompts(20) + [Request([{"role": "user", "content": "FAKE:400 far too long"}], {"max_tokens": 16})]
    with ServerThread() as server:
        first = client(server.url, RequestCache(str(tmp_path), "s0"))
        results = run_sync(first.run(requests))
        again = client(server.url, RequestCache(str(tmp_path), "s0"))
        rerun = run_sync(again.run(requests))
        stats = server.stats()
    assert [r.status for r in results] == ["ok"] * 20 + ["bad_request"]
    assert "HTTP 400" in results[-1].error and "/chat/completions" in results[-1].error
    assert first.stats.bad_requests == 1 and first.stats.retries == 0  # a 400 is not retried
    assert again.stats.cache_hits == 21 and again.stats.requests == 0 and rerun[-1].status == "bad_request"
    assert stats["requests"] == 21


def test_cache_survives_a_new_endpoint_and_concurrency_but_not_a_new_model(tmp_path):
    requests = prompts(40)
    with ServerThread() as a, ServerThread() as b:
        first = run_sync(client(a.url, RequestCache(str(tmp_path), "s0")).run(requests))
        moved = client(b.url, RequestCache(str(tmp_path), "s0"), concurrency=3)
        second = run_sync(moved.run(requests))
        other_model = client(b.url, RequestCache(str(tmp_path), "s0"), model="other")
        run_sync(other_model.run(requests[:5]))
        assert moved.stats.cache_hits == 40 and b.stats()["requests"] == 5
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
    assert other_model.stats.cache_hits == 0 and other_model.stats.completed == 5
    changed = [Request(r.prompt, {**r.sampling, "temperature": 0.5}, r.sample) for r in requests[:2]]
    assert changed[0].key("fake") != requests[0].key("fake")
    assert Request(requests[0].prompt, requests[0].sampling, 1).key("fake") != requests[0].key("fake")


def test_a_torn_cache_line_is_skipped_and_the_rest_kept(tmp_path):
    cache = RequestCache(str(tmp_path), "s1")
    cache.put("k1", {"status": "ok", "text": "one"})
    cache.put("k2", {"status": "ok", "text": "two"})
    cache.close()
    (path,) = (tmp_path / "s1").glob("*.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"key": "k3", "status": "ok", "te')  # what a kill in the middle of a write leaves
    reread = RequestCache(str(tmp_path), "s1")
    assert reread.torn == 1 and len(reread) == 2 and reread.get("k2")["text"] == "two"


def test_cache_on_an_object_store_writes_segments():
    url = "memory://synth-cache-test"
    cache = RequestCache(url, "s2", segment_records=2)
    for k in range(5):
        cache.put(f"k{k}", {"status": "ok", "text": str(k)})
    assert len(fsspec.filesystem("memory").ls("/synth-cache-test/s2")) == 2  # two full segments so far
    cache.close()
    reread = RequestCache(url, "s2")
    assert len(reread) == 5 and reread.get("k4")["text"] == "4"


KILLED_JOB = """
import sys
sys.path.insert(0, {root!r})
from llmclient.cache import RequestCache
from llmclient.client import AsyncLLMClient, Request, run_sync
requests = [Request([{{"role": "user", "content": f"job {{i}}"}}], {{"max_tokens": 16}}) for i in range(400)]
client = AsyncLLMClient({url!r}, "fake", concurrency=8, cache=RequestCache({cache!r}, "s0"))
run_sync(client.run(requests))
"""


def test_a_killed_run_resumes_without_resending_what_completed(tmp_path):
    requests = [Request([{"role": "user", "content": f"job {i}"}], {"max_tokens": 16}) for i in range(400)]
    with ServerThread(latency_s=0.02) as server:
        script = KILLED_JOB.format(root=str(ROOT), url=server.url, cache=str(tmp_path))
        job = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.time() + 120
        while server.stats()["answered"] < 150 and time.time() < deadline and job.poll() is None:
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait()
        answered_before = server.stats()["answered"]
        assert 150 <= answered_before < 400, "the job should be killed half-way"
        stored = RequestCache(str(tmp_path), "s0")
        stored_prompts = {r.prompt[0]["content"] for r in requests if stored.get(r.key("fake"))}
        resumed = client(server.url, stored, concurrency=8)
        results = run_sync(resumed.run(requests))
        stats = server.stats()
        twice = {p for p, n in server.llm.answered_prompts.items() if n > 1}
    assert all(r.status == "ok" for r in results)
    assert resumed.stats.cache_hits == len(stored_prompts) and not twice & stored_prompts  # nothing stored resent
    # Only answers in flight at the moment of the kill (at most the concurrency) can be paid twice.
    assert len(twice) == stats["answered_twice"] <= 8
    assert answered_before - len(stored_prompts) <= 8


def test_token_buckets_reserve_in_order():
    buckets = BucketPair(requests_per_s=10, tokens_per_min=600)
    waits = [buckets.reserve(tokens=1) for _ in range(15)]
    assert waits[:9] == [0.0] * 9 and 0 < waits[10] < waits[14] <= 0.6  # a 10-request burst, then 10/s
    heavy = BucketPair(requests_per_s=None, tokens_per_min=600)
    assert heavy.reserve(600) == 0.0 and heavy.reserve(60) == pytest.approx(6.0, abs=0.1)  # 10 tokens a second
    local = make_limiter("http://x", 0.2, 600, mode="local")  # one request per 5 s, 10 tokens per second
    assert isinstance(local, LocalLimiter)

    async def one_request() -> tuple[bool, bool, bool]:
        await local.acquire(100)
        return local.requests.has_capacity(), local.tokens.has_capacity(400), local.tokens.has_capacity(600)

    assert run_sync(one_request()) == (False, True, False)  # the request budget is spent, 100 tokens taken


@pytest.mark.slow
def test_rate_limit_is_one_ray_actor_per_endpoint(ray_local):
    first = make_limiter("http://shared/v1", 1000, None)
    second = make_limiter("http://shared/v1", 1000, None)
    run_sync(first.acquire(10))
    run_sync(second.acquire(10))
    assert ray_local.get(first.actor.count.remote()) == 2  # both went to the same actor


def test_sync_client_names_the_endpoint_and_keeps_batches_going():
    with ServerThread(rate_500=0.3) as server:
        llm = LLMClient(server.url, "fake", backoff_s=0.01, concurrency=4)
        assert llm.chat([{"role": "user", "content": "hello there"}]) == "In other words: hello there"
        with pytest.raises(LLMError, match="HTTP 400"):
            llm.chat([{"role": "user", "content": "FAKE:400"}])
        answers = llm.chat_many([[{"role": "user", "content": f"x {i}"}] for i in range(10)]
                                + [[{"role": "user", "content": "FAKE:400"}]])
        assert answers[-1] is None and all(a for a in answers[:-1]) and llm.stats["retries"] > 0
    assert json.loads(json.dumps(llm.stats))["bad_requests"] == 1


# -- a real model: `winnow serve` and the in-process `local` generator on a tiny checkpoint ------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny GPT with a tokenizer trained on real Wikipedia text: its text is nonsense by
    design, but it is a real model behind a real server."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from tests.conftest import SHARED
    from train.checkpoint import TOKENIZER, keep_tokenizer, save
    from train.model import GPT, ModelConfig
    from train.tokenizer import load_vocab, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    text = (SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text()[:200_000]
    pq.write_table(pa.table({"text": [text[i:i + 2000] for i in range(0, len(text), 2000)]}), root / "wiki.parquet")
    tokenizer = train_tokenizer([str(root / "wiki.parquet")], 512, str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=load_vocab(str(tokenizer)).size, n_layer=1, n_head=2, n_kv_head=1,
                            n_embd=32, max_seq_len=2048))
    (root / "ckpt").mkdir()
    keep_tokenizer(str(tokenizer), str(root / "ckpt"))
    save(str(root / "ckpt"), model, None, 0, {"tokenizer": TOKENIZER, "train_config": {}})
    return str(root / "ckpt")


def test_winnow_serve_and_the_local_generator_give_the_same_answers(tiny_checkpoint, tmp_path):
    import threading

    from pipeline.synth.local import LocalGenerator
    from train.checkpoint import load_model
    from train.serve import make_server
    from train.tokenizer import load_vocab

    model, ckpt = load_model(tiny_checkpoint)
    server = make_server(model, load_vocab(ckpt["tokenizer"]), "tiny", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    requests = [Request([{"role": "user", "content": f"Tell me about topic {i}."}], {"max_tokens": 6,
                                                                                     "temperature": 0.0})
                for i in range(4)]
    requests.append(Request([{"role": "user", "content": "x " * 3000}], {"max_tokens": 6, "temperature": 0.0}))
    # Sampling outside the rules both share (train/sampling.py): a 400 from the server, a bad request in process;
    # a top-p that rounds to 0 in float32 keeps the top token: request 0's greedy answer.
    topic = requests[0].prompt
    requests += [Request(topic, {"max_tokens": 6, "temperature": 2.5}), Request(topic, {"max_tokens": 6, "top_k": -2}),
                 Request(topic, {"max_tokens": 6, "temperature": 1.0, "top_p": 1e-320, "seed": 1})]
    try:
        served_client = client(url, RequestCache(str(tmp_path / "served"), "s"), model="tiny", concurrency=2)
        served = run_sync(served_client.run(requests))
    finally:
        server.shutdown()
        server.server_close()
    local = LocalGenerator(tiny_checkpoint, "tiny", cache=RequestCache(str(tmp_path / "local"), "s"))
    inproc = run_sync(local.run(requests))
    statuses = ["ok"] * 4 + ["bad_request"] * 3 + ["ok"]  # a prompt longer than the context: 400
    assert [r.status for r in served] == statuses and [r.status for r in inproc] == statuses
    assert [r.text for r in served[:4]] == [r.text for r in inproc[:4]]  # greedy: the same tokens either way
    assert served[-1].text == inproc[-1].text == inproc[0].text
    assert all(r.completion_tokens > 0 for r in served[:4] + inproc[:4])
    again = LocalGenerator(tiny_checkpoint, "tiny", cache=RequestCache(str(tmp_path / "local"), "s"))
    assert [r.text for r in run_sync(again.run(requests))] == [r.text for r in inproc]
    assert again.stats.cache_hits == len(requests) and again.stats.requests == 0


def test_a_new_local_model_at_the_same_path_is_asked_again(tiny_checkpoint, tmp_path, monkeypatch):
    """The synth fingerprint and the request cache key follow the checkpoint's contents, not its folder."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipeline.kinds.synth import data_digests
    from pipeline.synth.params import SynthParams
    from pipeline.synth.recipes import RecipeConfig
    from pipeline.synth.shard import run_synth_shard
    from train.checkpoint import TOKENIZER, load_model, save

    monkeypatch.setenv("WINNOW_CACHE", str(tmp_path / "winnow-cache"))
    ckpt = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, ckpt)
    shard = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": f"d{i}", "text": f"Document {i} is about rivers and hills. " * 5,
                                          "language": "en"} for i in range(3)]), shard)
    params = SynthParams(generator="local", checkpoint=str(ckpt), max_tokens=4,
                         qc={"language_match": False}, recipes=[RecipeConfig(name="wikipedia_paraphrase")])

    def run(tag: str) -> dict:
        return run_synth_shard(params, str(shard), str(tmp_path / tag), "0", str(tmp_path / "cache"))

    before, first = data_digests(params)["checkpoint"], run("a")
    assert data_digests(params)["checkpoint"] == before and run("b")["requests"] == 0  # same model: from the cache
    model, saved = load_model(str(ckpt))
    torch.manual_seed(1)
    for weight in model.parameters():  # another model, written where the first one was
        torch.nn.init.normal_(weight)
    save(str(ckpt), model, None, 1, {"tokenizer": TOKENIZER, "train_config": {}})
    assert data_digests(params)["checkpoint"] != before
    assert run("c")["requests"] == first["requests"] == 3
