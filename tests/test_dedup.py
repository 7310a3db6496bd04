"""Dedup: signatures against datasketch, banding, components against scipy, the keep rule, and
end-to-end runs with planted duplicates on a local multi-worker Ray."""

from __future__ import annotations

import json
import random
import uuid
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.config import ConfigError, load_config
from pipeline.dedup import minhash
from pipeline.dedup.components import connected_components, labels, route_undirected
from pipeline.dedup.params import DedupParams
from pipeline.dedup.phases import BANDS, EXACT, KEPT, MEMBERS, MINHASH, bucket_task, decide_task
from pipeline.dedup.shuffle import partition_of, split_by
from pipeline.inspect import inspect_cluster
from pipeline.runner import Runner
from tests.conftest import ROOT, SHARED

C4 = SHARED / "cc-text" / "c4-demo" / "c4_demo.jsonl"


def c4_texts(min_words: int = 0) -> list[str]:
    texts = [json.loads(line)["text"] for line in C4.read_text().splitlines()]
    return [t for t in texts if len(t.split()) >= min_words]


# -- signatures and bands ------------------------------------------------------------------------
def test_signatures_equal_datasketch_minhash_on_real_text():
    texts = c4_texts()[:40]
    sets = [minhash.shingle_hashes(t, 5) for t in texts]
    ours = minhash.signatures(sets, 128, seed=7)
    for text_set, row in zip(sets, ours, strict=True):
        reference = MinHash(num_perm=128, seed=7, scheme="affine32", hashfunc=int)
        reference.update_batch(text_set.tolist())
        assert np.array_equal(reference.hashvalues, row)


def test_estimated_similarity_tracks_true_jaccard():
    text = c4_texts(min_words=300)[0]
    words = text.split()
    edited = " ".join(words[: len(words) // 2] + ["inserted"] * 3 + words[len(words) // 2 + 20:])
    a, b = minhash.shingle_hashes(text, 5), minhash.shingle_hashes(edited, 5)
    true = minhash.jaccard(a, b)
    sig = minhash.signatures([a, b], 256, seed=1)
    # datasketch's own estimator over our signatures: the share of permutations whose minimums agree.
    lean = [LeanMinHash(seed=1, hashvalues=row, scheme="affine32") for row in sig]
    estimate = lean[0].jaccard(lean[1])
    assert 0.7 < true < 0.98 and abs(estimate - true) < 0.08


def test_shingles_ignore_case_punctuation_and_whitespace_but_not_word_order():
    a = minhash.shingle_hashes("The quick brown fox, jumps over the lazy dog!", 3)
    b = minhash.shingle_hashes("the   QUICK brown fox jumps\nover the lazy dog", 3)
    c = minhash.shingle_hashes("dog lazy the over jumps fox brown quick the", 3)
    assert np.array_equal(a, b) and minhash.jaccard(a, c) == 0
    assert len(minhash.shingle_hashes("two words", 5)) == 1  # shorter than a shingle: one shingle
    assert len(minhash.shingle_hashes("", 5)) == 0
    assert len(minhash.tokens("我们的世界很大")) == 7  # CJK: a character per token


def test_exact_hash_ignores_whitespace_only():
    assert minhash.exact_hash("a  b\n c") == minhash.exact_hash(" a b c ")
    assert minhash.exact_hash("a b c") != minhash.exact_hash("A b c")


def test_threshold_gives_datasketch_optimal_bands_and_rows():
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    params = DedupParams(threshold=0.8, bands=None, rows=None, num_perm=128)
    assert (params.bands, params.rows) == (lsh.b, lsh.r)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        DedupParams(bands=20, rows=8, num_perm=112)


def test_a_typo_in_the_dedup_section_names_the_key():
    with pytest.raises(ConfigError, match="did you mean 'shingle_size'"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["stages.dedup.dedup.shingle_sise=3"])


def test_band_keys_collide_only_on_a_whole_equal_band():
    sig = np.arange(3 * 16, dtype=np.uint32).reshape(3, 16)
    sig[1, :4] = sig[0, :4]  # doc 1 shares band 0 with doc 0
    sig[2, 4:8] = sig[2, 0:4]  # doc 2 has the same values in bands 0 and 1
    keys = minhash.band_keys(sig, bands=4, rows=4)
    assert keys[0, 0] == keys[1, 0] and (keys[0, 1:] != keys[1, 1:]).all()
    assert keys[2, 0] != keys[2, 1]
    assert not set(minhash.exact_keys(np.array([1, 2], np.uint64))) & set(keys.ravel())


# -- components ----------------------------------------------------------------------------------
def _components(edges: np.ndarray, parts: int) -> dict[int, int]:
    import ray

    routed = route_undirected(edges[:, 0], edges[:, 1], parts)
    refs = [[ray.put(t)] for t in routed]
    stars, _ = connected_components(refs, parts)
    found = {}
    for p in range(parts):
        tables = ray.get(stars[p])
        node, label = labels(pa.concat_tables(tables))
        found.update(zip(node.tolist(), label.tolist(), strict=True))
    return found


def test_components_equal_scipy_on_random_graphs_and_long_chains(ray_local):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    rng = np.random.default_rng(3)
    n = 3000
    random_edges = rng.integers(0, n, size=(1800, 2))
    chain = np.stack([np.arange(n, n + 400), np.arange(n + 1, n + 401)], axis=1)  # a path of 401 nodes
    chain = chain[rng.permutation(len(chain))]
    edges = np.concatenate([random_edges, chain, [[n + 400, 5]]]).astype(np.int64) << 32  # doc-number shape
    nodes, index = np.unique(edges.ravel(), return_inverse=True)
    index = index.reshape(-1, 2)
    real = edges[:, 0] != edges[:, 1]  # a self-loop is not an edge
    graph = coo_matrix((np.ones(real.sum()), (index[real, 0], index[real, 1])), shape=(len(nodes),) * 2)
    _, comp = scipy_components(graph, directed=False)
    smallest = {c: int(nodes[comp == c].min()) for c in np.unique(comp)}
    expected = {int(nodes[i]): smallest[comp[i]] for i in np.unique(index[real])}
    results = [_components(edges, parts) for parts in (1, 3, 7)]
    assert results[0] == results[1] == results[2] == expected


def test_buckets_in_different_partitions_join_one_cluster(ray_local):
    import ray

    a, b, c, d = 1 << 32, 2 << 32, 3 << 32, 4 << 32
    records = pa.table({"key": np.array([11, 11, 22, 22, 33], np.uint64), "doc": np.array([a, b, b, c, d])},
                       schema=BANDS)
    parts = 3
    params = DedupParams().model_dump_json()
    routed = split_by(records, partition_of(records.column("key").to_numpy(), parts), parts)
    assert len({p for p in partition_of(np.array([11, 22], np.uint64), parts)}) == 2  # truly apart
    outs = [bucket_task(params, parts, routed[p]) for p in range(parts)]
    edges = [[ray.put(out[q]) for out in outs] for q in range(parts)]
    stars, _ = connected_components(edges, parts)
    found = {}
    for p in range(parts):
        node, label = labels(pa.concat_tables(ray.get(stars[p])))
        found.update(zip(node.tolist(), label.tolist(), strict=True))
    assert found == {a: a, b: a, c: a}  # d shares a bucket with nobody


# -- keep rule -----------------------------------------------------------------------------------
def _decide(rows: list[tuple], keep: list[str]) -> dict[int, tuple[int, str, int]]:
    members = pa.table({name: [r[i] for r in rows] for i, name in enumerate(MEMBERS.names)}, schema=MEMBERS)
    params = DedupParams(keep=keep).model_dump_json()
    *parts, stats = decide_task(params, 1, members)
    out = parts[0].to_pylist()
    return {r["doc"]: (r["reason"], r["cluster_id"], r["cluster_size"]) for r in out}


def test_keep_rule_oldest_then_longest_and_exact_versus_near_reasons():
    # (label, doc, id, hash, ts, length): one cluster of four
    rows = [(1, 1, "new-long", 100, 50, 900), (1, 2, "old-short", 200, 10, 300),
            (1, 3, "old-long", 200, 10, 400), (1, 4, "old-long-copy", 200, 10, 400)]
    decided = _decide(rows, ["oldest", "longest"])
    assert decided[3] == (KEPT, "old-long", 4)
    assert decided[4][0] == EXACT  # same text as the survivor, later position
    assert decided[2][0] == EXACT  # same text hash as a better-ranked member
    assert decided[1][0] == MINHASH and decided[1][1] == "old-long"
    by_length = _decide(rows, ["longest"])
    assert by_length[1][0] == KEPT and by_length[3][0] == MINHASH and by_length[4][0] == EXACT


def test_decisions_do_not_depend_on_row_order():
    rows = [(7, d, f"id{d}", d % 3, 5, 100) for d in range(7, 20)]
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert _decide(rows, ["oldest", "longest"]) == _decide(shuffled, ["oldest", "longest"])
    assert _decide(rows, ["oldest", "longest"])[7][0] == KEPT  # full tie: the first document wins


# -- end to end with planted duplicates ----------------------------------------------------------
def _html(text: str) -> bytes:
    paragraphs = "".join(f"<p>{p}</p>" for p in text.split("\n") if p.strip())
    return f"<html><head><title>t</title></head><body><article>{paragraphs}</article></body></html>".encode()


def _write_warc(path: Path, pages: list[tuple[str, str, bytes]]) -> None:
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, date, body in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"
            writer.write_record(writer.create_warc_record(url, "response", payload=BytesIO(body), http_headers=http,
                                                          warc_headers_dict={"WARC-Date": date,
                                                                             "WARC-Record-ID": record_id}))


def _edit(text: str, rng: random.Random) -> str:
    """A near copy: two words replaced in the middle of the text (true Jaccard about 0.95)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words) // 3, 2 * len(words) // 3), 2):
        words[i] = "zzedited"
    return " ".join(words)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """30 distinct real texts; 6 exact copies, 2 whitespace-only copies and 6 near copies planted
    across three WARC files. One near copy is older than its original, so it is the one kept."""
    rng = random.Random(5)
    texts = c4_texts(min_words=250)[:30]
    pages = [(f"https://site{i}.example/a", "2024-01-01T00:00:00Z", texts[i]) for i in range(30)]
    expected: dict[str, tuple[str, str]] = {}  # removed url -> (reason, url kept)
    for k, i in enumerate(range(0, 6)):
        url = f"https://mirror{k}.example/copy"
        pages.append((url, "2024-03-01T00:00:00Z", texts[i]))
        expected[url] = ("dedup:exact", pages[i][0])
    for k, i in enumerate(range(6, 8)):
        url = f"https://spaces{k}.example/copy"
        pages.append((url, "2024-03-01T00:00:00Z", texts[i].replace(" ", "  ")))
        expected[url] = ("dedup:exact", pages[i][0])
    for k, i in enumerate(range(8, 14)):
        url = f"https://near{k}.example/copy"
        older = k == 0
        pages.append((url, "2023-06-01T00:00:00Z" if older else "2024-03-01T00:00:00Z", _edit(texts[i], rng)))
        expected[pages[i][0] if older else url] = ("dedup:minhash", url if older else pages[i][0])
    rng.shuffle(pages)
    root = tmp_path_factory.mktemp("planted")
    for n in range(3):
        _write_warc(root / f"planted-{n}.warc.gz", [(u, d, _html(t)) for u, d, t in pages[n::3]])
    return root, expected


def _planted_config(inputs: Path, out: Path, extra=()):
    raw = {
        "input": [str(inputs / "*.warc.gz")],
        "output_dir": str(out),
        "stages": [
            {"name": "extract", "steps": [{"type": "extract"}]},
            {"name": "dedup", "kind": "dedup", "batch_size": 8},
            {"name": "langid", "steps": [{"type": "langid", "languages": ["en"], "min_score": 0.3}]},
        ],
    }
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    return load_config(path, list(extra))


def _kept(out: Path) -> list[dict]:
    return pq.read_table(sorted((out / "stages" / "01_dedup").glob("part-*.parquet"))).to_pylist()


def _removed(out: Path) -> dict[str, tuple[str, str]]:
    rejected = pq.read_table(out / "stages" / "01_dedup" / "rejected").to_pylist()
    kept = _kept(out)
    url_of = {r["id"]: r["url"] for r in kept + rejected}
    return {r["url"]: (r["drop_reason"], url_of[r["duplicate_of"]]) for r in rejected}


def test_planted_duplicates_are_removed_exactly(ray_local, planted, tmp_path):
    inputs, expected = planted
    manifest = Runner(_planted_config(inputs, tmp_path / "run")).run()
    dedup = manifest["stages"][1]
    assert manifest["status"] == "done" and dedup["rows_in"] == 44
    assert _removed(tmp_path / "run") == expected
    assert dedup["drop_reasons"] == {"dedup:exact": 8, "dedup:minhash": 6}
    assert dedup["dedup"]["phases"]["decide"]["cluster_sizes"] == {"2": 14}
    kept = _kept(tmp_path / "run")
    assert len(kept) == 30 and all(r["dup_cluster_id"] == r["id"] for r in kept)  # the survivor names its cluster
    assert sum(r["dup_cluster_size"] == 2 for r in kept) == 14


def test_inspect_shows_a_cluster_side_by_side(ray_local, planted, tmp_path, capsys):
    inputs, expected = planted
    Runner(_planted_config(inputs, tmp_path / "run")).run()
    removed_url, (reason, kept_url) = next((k, v) for k, v in expected.items() if v[0] == "dedup:minhash")
    kept = next(r for r in _kept(tmp_path / "run") if r["url"] == kept_url)
    capsys.readouterr()
    assert inspect_cluster(str(tmp_path / "run"), kept["dup_cluster_id"], width=120) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"cluster {kept['id']}: 2 documents")
    status, urls = lines[2].split(" | "), lines[3].split(" | ")
    assert [c.strip() for c in status] == ["kept", "dedup:minhash"]
    assert [c.strip() for c in urls] == [kept_url, removed_url]
    assert inspect_cluster(str(tmp_path / "run"), "no-such-cluster") == 1


def test_verification_keeps_the_planted_pairs(ray_local, planted, tmp_path):
    inputs, expected = planted
    cfg = _planted_config(inputs, tmp_path / "run", ["stages.dedup.dedup.verify=true",
                                                      "stages.dedup.dedup.partitions=3"])
    manifest = Runner(cfg).run()
    assert _removed(tmp_path / "run") == expected
    verify = manifest["stages"][1]["dedup"]["phases"]["verify"]
    assert verify["checked"] >= verify["passed"] >= 6


def test_rerun_reuses_dedup_and_a_threshold_change_recomputes_it_and_what_follows(ray_local, planted, tmp_path):
    inputs, expected = planted
    out = tmp_path / "run"
    Runner(_planted_config(inputs, out)).run()
    again = Runner(_planted_config(inputs, out)).run()
    assert [s["shards"]["computed"] for s in again["stages"]] == [0, 0, 0]
    changed = Runner(_planted_config(inputs, out, ["stages.dedup.dedup.threshold=0.99",
                                                   "stages.dedup.dedup.bands=null",
                                                   "stages.dedup.dedup.rows=null"])).run()
    extract, dedup, langid = changed["stages"]
    assert extract["shards"]["reused"] == 3
    assert dedup["shards"]["computed"] == 3 and langid["shards"]["computed"] == 3
    assert dedup["dedup"]["params"]["threshold"] == 0.99
    # At 0.99 the near copies (Jaccard ~0.95) mostly survive; the exact ones never do.
    assert dedup["drop_reasons"]["dedup:exact"] == 8
    assert dedup["drop_reasons"].get("dedup:minhash", 0) < 6


def test_an_unreadable_shard_fails_alone_and_the_rest_is_deduplicated(ray_local, planted, tmp_path):
    inputs, expected = planted
    out = tmp_path / "run"
    Runner(_planted_config(inputs, out)).run()
    victim = sorted((out / "stages" / "00_extract").glob("part-*.parquet"))[2]
    victim.write_bytes(b"PAR1 truncated")
    manifest = Runner(_planted_config(inputs, out, ["stages.dedup.dedup.seed=2"])).run()
    dedup = manifest["stages"][1]
    assert dedup["shards"]["failed"] == 1 and dedup["shards"]["done"] == 2
    assert dedup["errors"][0]["input"].endswith(victim.name) and manifest["status"] == "partial"
    assert set(_removed(out)) < set(expected)  # the pairs left among readable shards are still found
