"""Precision of the `webqa` miner on real pages, judged by hand.

Runs the miner over every HTML response in the real WARCs of ../shared/data/warc (HTML rules) and over
the extracted Common Crawl, C4 and CCNet documents of ../shared/data/cc-text (text rules), and writes
every pair found to bench/results/webqa_pairs.jsonl. Each pair was then read by hand and labelled in
tests/fixtures/webqa_judged.jsonl: `good` when the output answers the instruction as the page meant it,
`bad` otherwise (wrong span, boilerplate, rhetorical question, answer cut mid-thought), with a note.
Precision is good / judged, per method and overall; pairs not yet judged are listed as such.

    python bench/webqa_precision.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.paths import results_dir  # noqa: E402
from pipeline.synth.webqa import mine_html, mine_text  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
JUDGED = ROOT / "tests" / "fixtures" / "webqa_judged.jsonl"


def warc_pages():
    for path in sorted((SHARED / "warc").rglob("*.warc*")):
        if path.suffix in (".wat", ".wet") or "pdf" in path.name or "docs" in path.name:
            continue
        with open(path, "rb") as f:
            try:
                for record in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
                    mime = (record.http_headers.get("Content-Type") or "") if record.http_headers else ""
                    if "html" not in mime.lower():
                        continue
                    url = (record.headers.get("WARC-Target-URI") or "").strip("<>")
                    yield f"{path.parent.name}/{path.name}", url, record.reader.read().decode("utf-8", "replace")
            except Exception as exc:  # noqa: BLE001 - a truncated test WARC: keep what was read
                print(f"{path}: stopped reading: {exc}", file=sys.stderr)


def text_docs():
    for path in sorted((SHARED / "cc-text").rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for n, line in enumerate(f):
                doc = json.loads(line)
                yield f"{path.parent.name}/{path.name}", doc.get("url") or doc.get("id") or str(n), doc["text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N HTML pages and N text documents (a quick check)")
    args = parser.parse_args()
    pairs = []
    pages = Counter()
    for source, url, html in islice(warc_pages(), args.limit):
        pages["html"] += 1
        for pair in mine_html(html):
            pairs.append({"source": source, "url": url, **pair})
    for source, url, text in islice(text_docs(), args.limit):
        pages["text"] += 1
        for pair in mine_text(text):
            pairs.append({"source": source, "url": url, **pair})
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    out = results / "webqa_pairs.jsonl"
    out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    judged = {}
    if JUDGED.exists():
        for line in JUDGED.read_text().splitlines():
            row = json.loads(line)
            judged[(row["url"], row["instruction"])] = row["label"]
    by_method: dict[str, Counter] = {}
    for pair in pairs:
        label = judged.get((pair["url"], pair["instruction"]), "unjudged")
        by_method.setdefault(pair["method"], Counter())[label] += 1
    total = sum(by_method.values(), Counter())
    result = {"pages": dict(pages), "pairs": len(pairs), "pages_with_pairs": len({p["url"] for p in pairs}),
              "by_method": {m: dict(c) for m, c in sorted(by_method.items())}, "judged": dict(total),
              "precision": round(total["good"] / max(1, total["good"] + total["bad"]), 3)}
    (results / "webqa_precision.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
