"""Train the article-boundary model of the `extract` step (filters/extract_boundary.py).

Run: `.venv/bin/python bench/train_boundary.py` (about a minute on one core). Writes
filters/models/extract-boundary.json; same data and code give the same file.

Blocks are the lines of resiliparse's main-content output, as the step sees them. Labels come without
annotators as well as with them:
  * scrapinghub-aeb: a line is article if it is part of the page's annotated `articleBody`;
  * every other real HTML page in ../shared/data (the WARCs' HTML responses, dclm-cc-html): trafilatura's
    default output is the teacher (the benchmark corpus, bench/build_corpus.py, is made of the same pages);
  * UDHR pages: every heading, paragraph and list item is the declaration;
  * a line that three pages or more of one site carry is the site's, not an article's (boilerplate).
Only the `dev` half of the sites (bench/extraction.py's split by host) is used: the `test` half is held out,
and `bench/extraction.py --split test` reports on it. The two thresholds (span and drop) are chosen by the
benchmark's snippet F1 over the dev pages, with probabilities from 3 folds grouped by site.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from build_corpus import dclm_pages, scrapinghub_pages, udhr_pages, warc_pages  # noqa: E402
from extraction import DATA, DEFAULT, make_case, norm, score, split_of, udhr_reference  # noqa: E402
from paths import work_dir  # noqa: E402

from filters.extract_boundary import FEATURES, MODEL, best_span, blocks, features  # noqa: E402
from filters.extract_methods import (  # noqa: E402
    clean_text,
    link_lines,
    resiliparse_main,
    resiliparse_marked,
    trafilatura_text,
)
from filters.extract_trim import page_title, trim_boilerplate  # noqa: E402

UDHR_PAGES = 60
SITE_REPEATS = 3
FOLDS = 3
SPAN_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)
DROP_GRID = (0.0, 0.02, 0.05, 0.1, 0.2)


_MARKER = re.compile(r"^(?:[•\-*·]|\d{1,3}[.)]|[a-z][.)])\s+")
MIN_OVERLAP = 0.5


def bare(line: str) -> str:
    """A line whitespace-collapsed, without a list marker ("•", "-", "3.", "b)")."""
    return _MARKER.sub("", norm(line))


def grams(text: str) -> set:
    """Word 3-grams of a text, or character 5-grams where it has fewer than three words (CJK, Thai)."""
    words = text.split()
    if len(words) >= 3:
        return set(zip(words, words[1:], words[2:], strict=False))
    flat = text.replace(" ", "")
    return {flat[i : i + 5] for i in range(len(flat) - 4)}


def labels(lines: list[str], reference: str) -> list[int]:
    """1 for a line of the reference: most of a long line's word 3-grams (character 5-grams for scripts without
    spaces) are in it, or a short line is a whole line of it. List markers and table bars do not count."""
    ref_lines = [bare(line) for line in reference.splitlines()]
    whole = set(ref_lines)
    ref_words: set = set()
    ref_chars: set = set()
    for line in ref_lines:
        words = line.split()
        ref_words.update(zip(words, words[1:], words[2:], strict=False))
        flat = line.replace(" ", "")
        ref_chars.update(flat[i : i + 5] for i in range(len(flat) - 4))
    out = []
    for line in lines:
        text = bare(line)
        mine = grams(text)
        if len(text) < 15 or not mine:
            out.append(int(bool(text) and text in whole))
            continue
        ref = ref_words if len(text.split()) >= 3 else ref_chars
        out.append(int(len(mine & ref) >= MIN_OVERLAP * len(mine)))
    return out


def load_pages() -> list[dict]:
    """The pages with their reference text (cached in bench/work: trafilatura, the teacher, is slow)."""
    cache = work_dir() / "boundary-pages.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    truth = json.loads((DATA / "html-extraction" / "scrapinghub-aeb" / "ground-truth.json").read_text())
    bodies = {item["url"]: item["articleBody"] for item in truth.values()}
    pages = [{"source": "scrapinghub-aeb", "url": p.url, "html": p.html, "reference": bodies[p.url]}
             for p in scrapinghub_pages()]
    pages += [{"source": "udhr", "url": p.url, "html": p.html, "reference": udhr_reference(p.html)}
              for p in udhr_pages(UDHR_PAGES)]
    warc, _ = warc_pages()
    pages += [{"source": "warc", "url": p.url, "html": p.html, "reference": trafilatura_text(p.html, False, False)}
              for p in [*warc, *dclm_pages()]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(pages))
    return pages


def site(page: dict) -> str:
    return page["url"] if page["source"] == "udhr" else urlsplit(page["url"]).netloc.lower().removeprefix("www.")


def page_rows(page: dict) -> dict:
    marked, parents = resiliparse_marked(page["html"], DEFAULT["skip_classes"])
    text_lines, headings = link_lines(marked)
    lines, links, blanks, containers = blocks(text_lines)
    title = page_title(page["html"])
    rows = (features(lines, links, headings, title, blanks, containers, parents) if lines
            else np.zeros((0, len(FEATURES))))
    return {"lines": lines, "rows": rows, "y": np.array(labels(lines, page["reference"]), dtype=np.int64)}


def mark_site_repeats(pages: list[dict]) -> int:
    """Label 0 the lines that SITE_REPEATS pages or more of one site carry; returns how many were article."""
    by_site: dict[str, list[dict]] = defaultdict(list)
    for page in pages:
        by_site[site(page)].append(page)
    flipped = 0
    for members in by_site.values():
        if len(members) < SITE_REPEATS:
            continue
        counts = Counter(line for page in members for line in {norm(x) for x in page["lines"]})
        for page in members:
            for i, line in enumerate(page["lines"]):
                if counts[norm(line)] >= SITE_REPEATS and page["y"][i]:
                    page["y"][i] = 0
                    flipped += 1
    return flipped


def fit(pages: list[dict]) -> tuple[LogisticRegression, np.ndarray, np.ndarray]:
    x = np.vstack([p["rows"] for p in pages])
    y = np.concatenate([p["y"] for p in pages])
    weight = np.concatenate([np.full(len(p["y"]), 1.0 / len(p["y"])) for p in pages])  # each page counts once
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    model = LogisticRegression(C=1.0, max_iter=2000)
    model.fit((x - mean) / scale, y, sample_weight=weight * len(pages))
    return model, mean, scale


def predict(model: LogisticRegression, mean: np.ndarray, scale: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return model.predict_proba((rows - mean) / scale)[:, 1] if len(rows) else np.zeros(0)


def decode(lines: list[str], p: np.ndarray, span: float, drop: float) -> str:
    if not lines:
        return ""
    start, end = best_span(p - span)
    return clean_text("\n".join(lines[i] for i in range(start, end + 1) if p[i] >= drop))


def main() -> None:
    pages = load_pages()
    for page in pages:
        page.update(page_rows(page))
    flipped = mark_site_repeats(pages)
    dev = [p for p in pages if split_of(p["source"], p["url"]) == "dev" and len(p["y"])]
    print(f"{len(pages)} pages, {len(dev)} dev pages with lines; {flipped} lines relabelled as site boilerplate")
    for page in dev:
        page["fold"] = zlib.crc32(site(page).encode()) % FOLDS
        page["case"] = make_case(page["url"], page["html"], page["reference"], negatives=page["source"] != "udhr")
    for fold in range(FOLDS):
        model, mean, scale = fit([p for p in dev if p["fold"] != fold])
        for page in dev:
            if page["fold"] == fold:
                page["p"] = predict(model, mean, scale, page["rows"])
    scored = [p for p in dev if p["case"]]
    grid = {}
    for span in SPAN_GRID:
        for drop in DROP_GRID:
            texts = [decode(p["lines"], p["p"], span, drop) for p in scored]
            grid[(span, drop)] = score(texts, [p["case"] for p in scored])["f1"]
    span, drop = max(grid, key=grid.get)
    print(f"dev F1 by 3 folds over sites: {grid[(span, drop)]:.4f} at span {span}, drop {drop}")
    rules = []
    for p in scored:
        text, headings = resiliparse_main(p["html"])
        rules.append(clean_text(trim_boilerplate(clean_text(text), keep=headings, title=page_title(p["html"]))))
    print(f"the word-list trim on the same pages: {score(rules, [p['case'] for p in scored])['f1']:.4f}")
    model, mean, scale = fit(dev)
    out = {"features": FEATURES, "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
           "coef": model.coef_[0].round(6).tolist(), "intercept": round(float(model.intercept_[0]), 6),
           "span_threshold": span, "drop_threshold": drop,
           "trained_on": {"pages": len(dev), "lines": int(sum(len(p["y"]) for p in dev)),
                          "sources": dict(Counter(p["source"] for p in dev)), "split": "dev",
                          "dev_fold_snippet_f1": grid[(span, drop)]}}
    MODEL.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {MODEL} ({MODEL.stat().st_size} bytes)")
    for name, weight in sorted(zip(FEATURES, model.coef_[0], strict=True), key=lambda t: -abs(t[1]))[:10]:
        print(f"  {name:16s} {weight:+.3f}")


if __name__ == "__main__":
    main()
