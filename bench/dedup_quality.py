"""Near-duplicate detection quality against exact Jaccard, on real text with measured edits.

Run: `.venv/bin/python bench/dedup_quality.py` (about two minutes on 2 cores).

Ground truth (see dedup_corpus.py): the 596 real documents of 150+ words in ../shared/data, and
15 near copies of each (4 edit kinds at 3-4 strengths), 9,536 documents in all. "True Jaccard"
is the exact Jaccard similarity of two documents' word 5-gram sets, after the same
normalization Winnow uses. A pair is a true duplicate at threshold t when its true Jaccard >= t.

* Pair level: the predicted pairs are every pair that shares an LSH bucket (and, with
  verification, passes the true-Jaccard check). True pairs are every pair within a family
  (original and copies), every pair of originals, and every predicted pair, each with its true
  Jaccard. Precision and recall are reported per setting and threshold, recall per edit kind.
* The S-curve: detection rate of original/copy pairs per true-Jaccard bin, next to the theory
  1 - (1 - s^r)^b, in bench/results/dedup_scurve.png.
* PAN: the 3,000 PAN test sentence pairs (dedup/pan-plagiarism-sentence-pairs), same measures.
* Clusters: Winnow's real dedup stage (Ray, 2 CPUs) on the whole corpus, for two settings; of
  the removed documents, the share whose true Jaccard with their cluster's kept document (or with
  any member of their cluster) is >= 0.8, and of the copies at >= 0.8 from their original, the
  share that left the dataset or share a cluster with it. Clusters are transitive closures: a
  chain of 0.8 pairs can join two documents that are further apart, which the first share counts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_corpus import DATA, EDIT_KINDS, near_copy, real_documents, run_winnow_dedup, write_shards  # noqa: E402
from paths import results_dir  # noqa: E402

from pipeline.dedup import minhash  # noqa: E402

RESULTS = results_dir()
STRENGTHS = {"insert_lines": (0.05, 0.1, 0.2, 0.4), "delete_lines": (0.05, 0.1, 0.2, 0.4),
             "boilerplate": (0.1, 0.3, 0.6), "substitute_words": (0.01, 0.03, 0.06, 0.12)}
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SETTINGS = {
    "fineweb_14x8": {"num_perm": 112, "bands": 14, "rows": 8, "verify": False},
    "datasketch_t0.8_128": {"num_perm": 128, **dict(zip(("bands", "rows"), minhash.lsh_params(0.8, 128),
                                                         strict=True)), "verify": False},
    "20x5": {"num_perm": 100, "bands": 20, "rows": 5, "verify": False},
    "20x5_verify0.8": {"num_perm": 100, "bands": 20, "rows": 5, "verify": True},
}


def build(limit: int | None = None) -> tuple[list[str], list[dict]]:
    """Documents (the first `limit` originals), and per copy its family (original index), edit kind and strength."""
    rng = random.Random(0)
    originals = real_documents()[:limit]
    pool = [line for t in originals for line in t.split("\n") if 5 <= len(line.split()) <= 80]
    texts, meta = list(originals), [{"family": i, "kind": "original", "strength": 0.0} for i in range(len(originals))]
    for i, text in enumerate(originals):
        for kind in EDIT_KINDS:
            for strength in STRENGTHS[kind]:
                texts.append(near_copy(text, kind, strength, rng, pool))
                meta.append({"family": i, "kind": kind, "strength": strength})
    return texts, meta


def colliding_pairs(keys: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of documents that share a bucket in some band."""
    pairs: set[tuple[int, int]] = set()
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        k = keys[order, band]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(k)], strict=True):
            if e - s > 1:
                pairs.update(combinations(sorted(order[s:e].tolist()), 2))
    return pairs


def pair_level(sets: list[np.ndarray], meta: list[dict], jac: dict[tuple[int, int], float]) -> dict:
    out: dict = {}
    curves: dict = {}
    for name, s in SETTINGS.items():
        t0 = time.perf_counter()
        keys = minhash.band_keys(minhash.signatures(sets, s["num_perm"], seed=1), s["bands"], s["rows"])
        predicted = colliding_pairs(keys)
        for pair in predicted:
            if pair not in jac:
                jac[pair] = minhash.jaccard(sets[pair[0]], sets[pair[1]])
        if s["verify"]:
            predicted = {p for p in predicted if jac[p] >= 0.8}
        by_t = {}
        for t in THRESHOLDS:
            true = {p for p, j in jac.items() if j >= t}
            tp = len(true & predicted)
            by_t[str(t)] = {"precision": round(tp / max(len(predicted), 1), 4),
                            "recall": round(tp / max(len(true), 1), 4),
                            "true_pairs": len(true), "predicted_pairs": len(predicted)}
        per_kind = {}
        for kind in EDIT_KINDS:
            fam = [(m["family"], i) for i, m in enumerate(meta) if m["kind"] == kind]
            hits = [(jac[p], p in predicted) for p in fam]
            at8 = [h for j, h in hits if j >= 0.8]
            per_kind[kind] = {"pairs_at_0.8+": len(at8), "recall_at_0.8+": round(sum(at8) / max(len(at8), 1), 4),
                              "mean_jaccard": round(float(np.mean([j for j, _ in hits])), 3)}
        orig_copy = [(jac[(m["family"], i)], (m["family"], i) in predicted) for i, m in enumerate(meta)
                     if m["kind"] != "original"]
        bins = np.linspace(0, 1, 21)
        rates = []
        for lo, hi in zip(bins[:-1], bins[1:], strict=True):
            inside = [h for j, h in orig_copy if lo <= j < hi or (hi == 1 and j == 1)]
            rates.append((float((lo + hi) / 2), len(inside), float(np.mean(inside)) if inside else None))
        curves[name] = rates
        out[name] = {**s, "threshold_estimate": round((1 / s["bands"]) ** (1 / s["rows"]), 3), "by_threshold": by_t,
                     "per_edit_kind": per_kind, "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{name:22s} P@0.8={by_t['0.8']['precision']:.3f} R@0.8={by_t['0.8']['recall']:.3f}  "
              + "  ".join(f"{k}={v['recall_at_0.8+']:.3f}" for k, v in per_kind.items()))
    return out, curves


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = np.linspace(0, 1, 200)
    for (name, rates), color in zip(curves.items(), ("C0", "C1", "C2", "C3"), strict=False):
        cfg = SETTINGS[name]
        if cfg["verify"]:
            continue
        ax.plot(s, minhash.detection_probability(s, cfg["bands"], cfg["rows"]), color=color, lw=1,
                label=f"theory {cfg['bands']}x{cfg['rows']}")
        pts = [(x, y) for x, n, y in rates if y is not None and n >= 20]
        ax.plot(*zip(*pts, strict=True), "o", color=color, ms=4, label=f"measured {name}")
    ax.axvline(0.8, color="grey", ls=":", lw=1)
    ax.set_xlabel("true Jaccard similarity of word 5-grams")
    ax.set_ylabel("P(pair shares an LSH bucket)")
    ax.set_title("LSH S-curve: 8,940 original/copy pairs of real documents")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pan_pairs() -> dict:
    root = DATA / "dedup" / "pan-plagiarism-sentence-pairs"
    s1 = (root / "pan-test_s1.txt").read_text().splitlines()
    s2 = (root / "pan-test_s2.txt").read_text().splitlines()
    labels = [int(x) for x in (root / "pan-test.labels").read_text().split()]
    a = [minhash.shingle_hashes(t, 5) for t in s1]
    b = [minhash.shingle_hashes(t, 5) for t in s2]
    jac = np.array([minhash.jaccard(x, y) for x, y in zip(a, b, strict=True)])
    out = {"pairs": len(labels), "paraphrase_pairs": sum(labels), "pairs_jaccard_0.8+": int((jac >= 0.8).sum()),
           "mean_jaccard_paraphrase": round(float(jac[np.array(labels) == 1].mean()), 3), "settings": {}}
    for name, s in SETTINGS.items():
        sa = minhash.band_keys(minhash.signatures(a, s["num_perm"], 1), s["bands"], s["rows"])
        sb = minhash.band_keys(minhash.signatures(b, s["num_perm"], 1), s["bands"], s["rows"])
        hit = (sa == sb).any(axis=1) & np.array([len(x) > 0 for x in a])
        if s["verify"]:
            hit &= jac >= 0.8
        true = jac >= 0.8
        lab = np.array(labels) == 1
        out["settings"][name] = {
            "precision_at_0.8": round(float((hit & true).sum() / max(hit.sum(), 1)), 4),
            "recall_at_0.8": round(float((hit & true).sum() / max(true.sum(), 1)), 4),
            "paraphrases_detected": round(float((hit & lab).sum() / lab.sum()), 4),
            "non_paraphrases_detected": round(float((hit & ~lab).sum() / (~lab).sum()), 4)}
    return out


def cluster_level(texts: list[str], sets: list[np.ndarray], meta: list[dict], jac: dict, work: Path) -> dict:
    docs = [{"id": f"d{i:06d}", "url": f"https://e.com/{i}", "domain": "e.com", "crawl_date": None, "text": t}
            for i, t in enumerate(texts)]
    files = write_shards(docs, work / "input", 4)
    out = {}
    for name in ("fineweb_14x8", "20x5_verify0.8"):
        s = SETTINGS[name]
        params = {"num_perm": s["num_perm"], "bands": s["bands"], "rows": s["rows"], "verify": s["verify"],
                  "keep": ["oldest", "longest"]}
        stage = work / name
        summary = run_winnow_dedup(files, stage, params, num_cpus=2)
        removed = pq.read_table(stage / "rejected").to_pylist() if (stage / "rejected").exists() else []
        index = {f"d{i:06d}": i for i in range(len(texts))}
        strict = [_j(sets, jac, index[r["id"]], index[r["duplicate_of"]]) >= 0.8 for r in removed]
        members = defaultdict(set)
        for r in removed:
            members[r["dup_cluster_id"]] |= {index[r["id"]], index[r["duplicate_of"]]}
        near_some = [any(_j(sets, jac, index[r["id"]], m) >= 0.8 for m in members[r["dup_cluster_id"]]
                         if m != index[r["id"]]) for r in removed]
        gone = {index[r["id"]] for r in removed}
        kept_cluster = {}
        for path in sorted(stage.glob("part-*.parquet")):
            for r in pq.read_table(path, columns=["id", "dup_cluster_id"]).to_pylist():
                kept_cluster[index[r["id"]]] = r["dup_cluster_id"]
        copies = [(m["family"], i) for i, m in enumerate(meta)
                  if m["kind"] != "original" and jac[(m["family"], i)] >= 0.8]
        found = [i in gone or m in gone or kept_cluster.get(i) == kept_cluster.get(m) for m, i in copies]
        out[name] = {"removed": len(removed), "removed_exact": sum(r["drop_reason"] == "dedup:exact" for r in removed),
                     "removal_precision_vs_kept_doc_at_0.8": round(sum(strict) / max(len(strict), 1), 4),
                     "removal_precision_vs_any_member_at_0.8": round(sum(near_some) / max(len(near_some), 1), 4),
                     "copies_at_0.8+": len(copies), "copies_at_0.8+_deduplicated": round(sum(found) / len(copies), 4),
                     "wall_s": summary["wall_s"]}
        print(name, out[name])
    return out


def _j(sets: list[np.ndarray], jac: dict, a: int, b: int) -> float:
    key = (min(a, b), max(a, b))
    if key not in jac:
        jac[key] = minhash.jaccard(sets[a], sets[b])
    return jac[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N real documents and their copies (a quick check)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    texts, meta = build(args.limit)
    sets = [minhash.shingle_hashes(t, 5) for t in texts]
    families = defaultdict(list)
    for i, m in enumerate(meta):
        families[m["family"]].append(i)
    jac: dict[tuple[int, int], float] = {}
    for members in families.values():
        for a, b in combinations(members, 2):
            jac[(a, b)] = minhash.jaccard(sets[a], sets[b])
    originals = [i for i, m in enumerate(meta) if m["kind"] == "original"]
    for a, b in combinations(originals, 2):
        jac[(a, b)] = minhash.jaccard(sets[a], sets[b])
    print(f"{len(texts)} documents, {len(jac)} ground-truth pairs ({time.perf_counter() - t0:.1f}s)")
    pairs, curves = pair_level(sets, meta, jac)
    RESULTS.mkdir(exist_ok=True)
    plot(curves, RESULTS / "dedup_scurve.png")
    pan = pan_pairs()
    print("PAN", json.dumps(pan["settings"]))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        clusters = cluster_level(texts, sets, meta, jac, Path(tmp))
    result = {"documents": len(texts), "originals": len(originals), "ground_truth_pairs": len(jac),
              "pair_level": pairs, "s_curve": curves, "pan": pan, "clusters": clusters,
              "seconds": round(time.perf_counter() - t0, 1)}
    (RESULTS / "dedup_quality.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / 'dedup_quality.json'} and dedup_scurve.png in {result['seconds']}s")


if __name__ == "__main__":
    main()
