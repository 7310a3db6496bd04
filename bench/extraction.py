"""Extraction benchmark: F1 and speed of each extractor on the scrapinghub article pages.

Ground truth is the `articleBody` of 181 real pages (../shared/data/html-extraction/
scrapinghub-aeb). The score is the article-extraction-benchmark's: precision and recall of
whitespace-separated tokens (as bags), averaged over pages. Speed is pages per second on one
core, extraction only, after decoding. Run: `.venv/bin/python bench/extraction.py`.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.extract import clean_text, resiliparse_text, trafilatura_text, trim_boilerplate  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "html-extraction" / "scrapinghub-aeb"
RESULTS = ROOT / "bench" / "results" / "extraction.json"


def token_prf(predicted: str, truth: str) -> tuple[float, float, float]:
    pred, gold = Counter(predicted.split()), Counter(truth.split())
    common = sum((pred & gold).values())
    if not pred and not gold:
        return 1.0, 1.0, 1.0
    precision = common / max(1, sum(pred.values()))
    recall = common / max(1, sum(gold.values()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def load_pages() -> list[tuple[str, str]]:
    truth = json.loads((DATA / "ground-truth.json").read_text())
    pages = []
    for key, item in sorted(truth.items()):
        raw = gzip.decompress((DATA / "html" / f"{key}.html.gz").read_bytes())
        pages.append((raw.decode("utf-8", errors="replace"), item["articleBody"]))
    return pages


EXTRACTORS = {
    "resiliparse + boilerplate trim (Winnow default)": lambda h: trim_boilerplate(clean_text(resiliparse_text(h))),
    "resiliparse (no trim)": resiliparse_text,
    "trafilatura (favor_precision, as FineWeb)": lambda h: trafilatura_text(h, True),
    "trafilatura (default)": lambda h: trafilatura_text(h, False),
}


def main() -> None:
    pages = load_pages()
    rows = []
    for name, fn in EXTRACTORS.items():
        scores, start = [], time.perf_counter()
        for html, truth in pages:
            scores.append(token_prf(clean_text(fn(html) or ""), truth))
        elapsed = time.perf_counter() - start
        p, r, f = (sum(s[i] for s in scores) / len(scores) for i in range(3))
        rows.append({"extractor": name, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4),
                     "pages_per_s": round(len(pages) / elapsed, 1), "pages": len(pages)})
    print(f"{'extractor':45s} {'F1':>6s} {'P':>6s} {'R':>6s} {'pages/s':>8s}")
    for row in rows:
        print(f"{row['extractor']:45s} {row['f1']:6.3f} {row['precision']:6.3f} {row['recall']:6.3f} "
              f"{row['pages_per_s']:8.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
