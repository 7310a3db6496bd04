"""Extraction benchmark: snippet precision/recall/F1 per source, token F1 on scrapinghub, and speed.

Run: `.venv/bin/python bench/extraction.py [--udhr 60] [--split dev|test|all]`. Writes bench/results/extraction.json.

Split: tune on `dev`, report `test` too. Pages go to dev or test by a hash of their site (host), so one site's
pages never sit on both sides; UDHR pages all share one site, so there it is the page's URL.

Snippet scoring (the style of trafilatura's evaluation): each page gets "must contain" snippets taken
from its reference text and "must not contain" snippets taken from the page's visible text outside the
reference. A kept must-contain snippet is a true positive, a missing one a false negative; a kept
must-not-contain snippet is a false positive. Counts are summed over a source's pages, then P, R, F1.
Snippets are up to 8 consecutive words of one reference line; every page gets the first and last lines
(titles, closing lines: what an end trim can lose) and up to two lines drawn at random (fixed seed).

Sources and their reference text:
  scrapinghub-aeb  181 article pages, reference = the annotated `articleBody` (ground truth).
  udhr             UDHR translations in many scripts, reference = the text of every heading, paragraph
                   and list item (the pages hold nothing else, so there are no must-not snippets).
  warc             the HTML responses of the real WARC files plus the 5 dclm-cc pages: no ground truth,
                   reference = trafilatura's default (recall-leaning) output. This measures agreement
                   with trafilatura, so trafilatura scores high there by construction.
The token F1 on scrapinghub is the article-extraction-benchmark's (bags of whitespace tokens, averaged
over pages). Speed is pages per CPU second (process time, so that other work on the machine does not
count), extraction only, after decoding. The hard limit's cost is the `extract` step with its child
process against the same work in-process, in CPU time of both processes, and the nesting-depth scan
timed as if it ran on every page (it runs only on pages that overran).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from build_corpus import dclm_pages, scrapinghub_pages, udhr_pages, warc_pages  # noqa: E402
from paths import results_dir  # noqa: E402

from filters.extract_methods import (  # noqa: E402
    clean_text,
    extract_page,
    nesting_depth,
    resiliparse_text,
    trafilatura_text,
)

DATA = ROOT.parent / "shared" / "data"
RESULTS = results_dir() / "extraction.json"
SNIPPET_WORDS = 8


def norm(text: str) -> str:
    """Whitespace collapsed; table-cell bars (trafilatura writes `| a | b |`, escaping `\\|`) read as spaces."""
    return " ".join(text.replace("\\|", " ").replace("|", " ").split())


def visible_lines(html: str) -> list[str]:
    from resiliparse.extract.html2text import extract_plain_text

    return [norm(line) for line in extract_plain_text(html, main_content=False).splitlines() if norm(line)]


def snippet(line: str, rng: random.Random) -> str:
    words = line.split()
    if len(words) <= SNIPPET_WORDS:
        return line
    start = rng.randrange(len(words) - SNIPPET_WORDS + 1)
    return " ".join(words[start : start + SNIPPET_WORDS])


def usable(line: str) -> bool:
    return len(line) >= 10 and len(line.split()) >= 2 or len(line) >= 6 and len(line.split()) == 1 and ord(
        line[0]) > 0x2E7F  # a CJK heading has no spaces


def make_case(key: str, html: str, reference: str, negatives: bool = True) -> dict:
    rng = random.Random(zlib.crc32(key.encode()))
    lines = [norm(line) for line in reference.splitlines()]
    lines = [line for line in lines if usable(line)]
    if not lines:
        return {}
    picks = [lines[0], lines[-1], *rng.sample(lines[1:-1], min(2, max(0, len(lines) - 2)))]
    must = list(dict.fromkeys(snippet(line, rng) for line in picks))
    must_not: list[str] = []
    if negatives:
        ref = norm(reference)
        outside = [line for line in visible_lines(html) if usable(line) and line not in ref
                   and " ".join(line.split()[:4]) not in ref]
        if outside:
            edges = [outside[0], outside[-1]]
            middle = rng.sample(outside[1:-1], min(2, max(0, len(outside) - 2)))
            must_not = list(dict.fromkeys(snippet(line, rng) for line in edges + middle))
    return {"key": key, "html": html, "must": must, "must_not": must_not}


def udhr_reference(html: str) -> str:
    from resiliparse.parse.html import HTMLTree

    body = HTMLTree.parse(html).body
    return "\n".join(n.text for n in body.query_selector_all("h1, h2, h3, h4, h5, h6, p, li")) if body else ""


def load_sources(udhr: int) -> dict[str, list[dict]]:
    truth = json.loads((DATA / "html-extraction" / "scrapinghub-aeb" / "ground-truth.json").read_text())
    bodies = {item["url"]: item["articleBody"] for item in truth.values()}
    sources: dict[str, list[dict]] = {"scrapinghub-aeb": [], "udhr": [], "warc": []}
    for page in scrapinghub_pages():
        sources["scrapinghub-aeb"].append(make_case(page.url, page.html, bodies[page.url]))
        sources["scrapinghub-aeb"][-1]["truth"] = bodies[page.url]
    for page in udhr_pages(udhr):
        sources["udhr"].append(make_case(page.url, page.html, udhr_reference(page.html), negatives=False))
    warc, _ = warc_pages()
    for page in [*warc, *dclm_pages()]:
        sources["warc"].append(make_case(page.url, page.html, trafilatura_text(page.html, False, False)))
    return {name: [c for c in cases if c] for name, cases in sources.items()}


def split_of(source: str, url: str) -> str:
    """"dev" or "test" for a page, by a hash of its host (of its URL where a source is one site)."""
    key = url if source == "udhr" else urlsplit(url).netloc.lower().removeprefix("www.") or url
    return "dev" if zlib.crc32(key.encode()) % 2 == 0 else "test"


def score(texts: list[str], cases: list[dict]) -> dict:
    tp = fn = fp = tn = 0
    for text, case in zip(texts, cases, strict=True):
        flat = norm(text)
        hits = sum(s in flat for s in case["must"])
        tp, fn = tp + hits, fn + len(case["must"]) - hits
        bad = sum(s in flat for s in case["must_not"])
        fp, tn = fp + bad, tn + len(case["must_not"]) - bad
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "must": tp + fn, "must_not": fp + tn}


def token_f1(predicted: str, truth: str) -> float:
    pred, gold = Counter(predicted.split()), Counter(truth.split())
    if not pred and not gold:
        return 1.0
    common = sum((pred & gold).values())
    precision, recall = common / max(1, sum(pred.values())), common / max(1, sum(gold.values()))
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# The default before token-exact skip rules and the content-aware trim, for comparison.
OLD_SKIP = ["figure", "figcaption", '[class*="caption"]', '[class*="share"]', '[class*="social"]',
            '[class*="related"]', '[class*="recommend"]']


def previous_default(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    text = clean_text(extract_plain_text(html, main_content=True, alt_texts=False, links=False, form_fields=False,
                                         noscript=False, comments=False, skip_elements=OLD_SKIP))
    lines = text.splitlines()
    prose = [i for i, line in enumerate(lines) if len(line) >= 200 or (
        len(line.split()) >= 8 and line.rstrip().endswith((".", "!", "?", '"', "”", "。", "！", "？", ":", ";", ")")))]
    return "\n".join(lines[prose[0] : prose[-1] + 1]) if prose else text


DEFAULT = {"extractor": "resiliparse", "trim_boilerplate": True, "favor_precision": True, "cascade": True,
           "max_depth": 256, "check_depth": False}
EXTRACTORS: dict[str, Callable[[str], str]] = {
    "Winnow default (resiliparse, cascade)": lambda h: extract_page(h, DEFAULT)[0],
    "resiliparse + trim, no cascade": lambda h: extract_page(h, DEFAULT | {"cascade": False})[0],
    "previous default (substring skips, prose trim)": previous_default,
    "resiliparse, no trim": lambda h: clean_text(resiliparse_text(h)),
    "trafilatura (favor_precision, as FineWeb)": lambda h: trafilatura_text(h, True, False),
    "trafilatura (default)": lambda h: trafilatura_text(h, False, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--udhr", type=int, default=60, help="UDHR pages, evenly spaced over the 532")
    parser.add_argument("--only", nargs="*", help="run only the extractors whose name starts with these")
    parser.add_argument("--split", choices=("dev", "test", "all"), default="all",
                        help="the pages to score: dev (tune on these), test (held out), or all")
    parser.add_argument("--limit", type=int, help="at most this many pages per source (a quick check)")
    args = parser.parse_args()
    sources = {name: [c for c in cases if args.split == "all" or split_of(name, c["key"]) == args.split][:args.limit]
               for name, cases in load_sources(args.udhr).items()}
    rows = []
    for name, fn in EXTRACTORS.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        row: dict = {"extractor": name, "sources": {}}
        all_texts, all_cases, seconds = [], [], 0.0
        for source, cases in sources.items():
            start = time.process_time()
            texts = [clean_text(fn(c["html"]) or "") for c in cases]
            elapsed = time.process_time() - start
            seconds += elapsed
            row["sources"][source] = score(texts, cases) | {"pages": len(cases),
                                                            "pages_per_s": round(len(cases) / max(elapsed, 1e-9), 1)}
            if source == "scrapinghub-aeb" and cases:
                row["token_f1_scrapinghub"] = round(
                    sum(token_f1(t, c["truth"]) for t, c in zip(texts, cases, strict=True)) / len(cases), 4)
            all_texts += texts
            all_cases += cases
        row["all"] = score(all_texts, all_cases) | {"pages": len(all_cases),
                                                    "pages_per_s": round(len(all_cases) / seconds, 1)}
        rows.append(row)
        print_row(row)
    pages = [c["html"] for cases in sources.values() for c in cases]
    guard = guard_costs(pages)
    print(json.dumps(guard, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": "bench/extraction.py " + " ".join(sys.argv[1:]), "split": args.split,
                                   "rows": rows,
                                   "guard": guard}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the step's extraction child)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def guard_costs(pages: list[str]) -> dict:
    """What the hard limit costs per page: the step with its child process against the same work in-process,
    in CPU milliseconds of both processes; and the nesting-depth scan, as if it ran on every page."""
    from filters import STEPS

    start = time.process_time()
    depths = [nesting_depth(h) for h in pages]
    scan_ms = (time.process_time() - start) / len(pages) * 1e3
    costs = {}
    for label, timeout in (("in_process", 0.0), ("child_process", 5.0)):
        step = STEPS["extract"](STEPS["extract"].Params(timeout_s=timeout))
        if step.sandbox is not None:
            step([{"id": "warm-up", "html": "<p>warm up</p>"}])  # the child's start-up, once per worker
        start = cpu_seconds()
        step([{"id": str(i), "html": h} for i, h in enumerate(pages)])
        if step.sandbox is not None:
            step.sandbox.close()  # reaped, so that its CPU time is counted
        costs[label] = (cpu_seconds() - start) / len(pages) * 1e3
    return {"pages": len(pages), "mean_html_kb": round(sum(map(len, pages)) / len(pages) / 1e3, 1),
            "max_depth_seen": max(depths), "nesting_scan_ms_per_page": round(scan_ms, 3),
            "in_process_ms_per_page": round(costs["in_process"], 3),
            "child_process_ms_per_page": round(costs["child_process"], 3),
            "child_process_overhead": round(costs["child_process"] / costs["in_process"] - 1, 4)}


def print_row(row: dict) -> None:
    parts = [f"{s}: F1 {v['f1']:.3f} (P {v['precision']:.3f} R {v['recall']:.3f}) {v['pages_per_s']:.0f}/s"
             for s, v in row["sources"].items()]
    a = row["all"]
    print(f"{row['extractor']:42s} all F1 {a['f1']:.3f} P {a['precision']:.3f} R {a['recall']:.3f} "
          f"{a['pages_per_s']:6.1f} pages/s  token F1 {row.get('token_f1_scrapinghub', 0):.3f}\n    "
          + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
