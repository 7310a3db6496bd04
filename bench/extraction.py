"""Extraction benchmark: snippet precision/recall/F1 per source, token F1 on scrapinghub, and speed.

Run: `.venv/bin/python bench/extraction.py [--udhr 60] [--limit N] [--only NAME...] [--repeats 3]`. Writes
bench/results/extraction.json.

Split: pages go to dev or test by a hash of their site (host), so one site's pages never sit on both sides;
UDHR pages all share one site, so there it is the page's URL. The boundary model (bench/train_boundary.py)
is trained and its thresholds chosen on dev only; every row reports dev and test (held out) apart, and the
test half per source and per language group (lid.176 on the page's reference snippets). The word-list
trim's rules were read off scrapinghub pages of both halves, and the first skip class tokens were chosen on
all of them, so the scrapinghub test figures flatter every row that uses them.

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
over pages). Speed is pages per CPU second: CPU time of this process and of its reaped child processes
(resource.getrusage(RUSAGE_CHILDREN)), so that other work on the machine does not count and the killable
child does; extraction only, after decoding; the fastest of `--repeats` passes (CPU time on a shared virtual
machine still varies by a third from pass to pass). `step` runs the `extract` step itself as a pipeline does
(default config: the risk scan, risky pages in the child, the cascade), and once with every page in the
child (`isolate: all`). `emptied` counts the pages plain resiliparse extracts text from that a method
empties, and names those whose reference holds article text.
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
from typing import Any, TypeVar
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
T = TypeVar("T")


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
           "boundary": "model", "skip_classes": True, "max_depth": 256, "check_depth": False}
EXTRACTORS: dict[str, Callable[[str], str]] = {
    "Winnow default (model boundary, cascade)": lambda h: extract_page(h, DEFAULT)[0],
    "model boundary, no cascade": lambda h: extract_page(h, DEFAULT | {"cascade": False})[0],
    "model boundary, no class-token skips, cascade": lambda h: extract_page(h, DEFAULT | {"skip_classes": False})[0],
    "word-list trim, cascade": lambda h: extract_page(h, DEFAULT | {"boundary": "rules"})[0],
    "word-list trim, no cascade": lambda h: extract_page(h, DEFAULT | {"boundary": "rules", "cascade": False})[0],
    "previous default (substring skips, prose trim)": previous_default,
    "resiliparse, no trim": lambda h: clean_text(resiliparse_text(h)),
    "trafilatura (favor_precision, as FineWeb)": lambda h: trafilatura_text(h, True, False),
    "trafilatura (default)": lambda h: trafilatura_text(h, False, False),
}
BASELINE = "trafilatura (default)"
PLAIN = "resiliparse, no trim"
# Language groups for the per-language F1: lid.176 on each page's reference text.
GROUPS = {"en": "en", "de": "de", "fr": "fr", "es": "es", "pl": "pl", "pt": "pt", "it": "it", "ru": "ru",
          "zh": "cjk", "ja": "cjk", "ko": "cjk"}


def language_groups(cases: list[dict]) -> list[str]:
    from filters.langid import bundled_model_path, load_model

    model = load_model(str(bundled_model_path()))
    texts = [" ".join(c["must"]).lower().replace("\n", " ") for c in cases]
    labels, _ = model.predict(texts, k=1)
    return [GROUPS.get(label[0].removeprefix("__label__"), "other") for label in labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--udhr", type=int, default=60, help="UDHR pages, evenly spaced over the 532")
    parser.add_argument("--only", nargs="*", help="run only the extractors whose name starts with these")
    parser.add_argument("--limit", type=int, help="at most this many pages per source (a quick check)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes over the pages per extractor; speed is the fastest (shared machines are noisy)")
    args = parser.parse_args()
    sources = {name: cases[: args.limit] for name, cases in load_sources(args.udhr).items()}
    cases = [c | {"source": name, "split": split_of(name, c["key"])} for name, cs in sources.items() for c in cs]
    for case, group in zip(cases, language_groups(cases), strict=True):
        case["language"] = group
    rows, outputs = [], {}
    for name, fn in EXTRACTORS.items():
        if args.only and not any(name.startswith(o) for o in args.only) and name not in (BASELINE, PLAIN):
            continue
        seconds, texts = fastest(lambda _, fn=fn: [clean_text(fn(c["html"]) or "") for c in cases], args.repeats)
        outputs[name] = texts
        rows.append(row_of(name, texts, cases, seconds))
        print_row(rows[-1])
    baseline = next(r for r in rows if r["extractor"] == BASELINE)
    for row in rows:
        row["speed_vs_trafilatura"] = round(row["pages_per_cpu_s"] / baseline["pages_per_cpu_s"], 2)
        row["f1_test_minus_trafilatura"] = round(row["test"]["f1"] - baseline["test"]["f1"], 4)
        row["emptied"] = emptied(outputs[row["extractor"]], outputs[PLAIN], cases)
    step = step_speed([c["html"] for c in cases], args.repeats)
    step["speed_vs_trafilatura"] = round(step["pages_per_cpu_s"] / baseline["pages_per_cpu_s"], 2)
    step["no_class_skips_speed_vs_trafilatura"] = round(
        step["no_class_skips_pages_per_cpu_s"] / baseline["pages_per_cpu_s"], 2)
    print(json.dumps(step, indent=2))
    parts = part_times([c["html"] for c in cases if c["source"] != "udhr"], args.repeats)
    print("ms per page, by part of the default:", json.dumps(parts))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": "bench/extraction.py " + " ".join(sys.argv[1:]), "rows": rows,
                                   "step": step, "parts_ms": parts}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def row_of(name: str, texts: list[str], cases: list[dict], seconds: float) -> dict:
    """Scores over all pages, per split (dev: tuned on; test: held out), per source and per language group."""
    def part(keep: Callable[[dict], bool]) -> dict:
        pairs = [(t, c) for t, c in zip(texts, cases, strict=True) if keep(c)]
        return score([t for t, _ in pairs], [c for _, c in pairs]) | {"pages": len(pairs)}

    row = {"extractor": name, "pages_per_cpu_s": round(len(cases) / max(seconds, 1e-9), 1),
           "all": part(lambda c: True), "dev": part(lambda c: c["split"] == "dev"),
           "test": part(lambda c: c["split"] == "test")}
    for split in ("dev", "test"):
        row[f"sources_{split}"] = {s: part(lambda c, s=s, split=split: c["source"] == s and c["split"] == split)
                                   for s in dict.fromkeys(c["source"] for c in cases)}
    row["languages_test"] = {g: part(lambda c, g=g: c["language"] == g and c["split"] == "test")
                             for g in sorted({c["language"] for c in cases if c["split"] == "test"})}
    shub = [(t, c) for t, c in zip(texts, cases, strict=True) if c["source"] == "scrapinghub-aeb"]
    if shub:
        row["token_f1_scrapinghub"] = round(sum(token_f1(t, c["truth"]) for t, c in shub) / len(shub), 4)
    return row


def emptied(texts: list[str], plain: list[str], cases: list[dict]) -> dict:
    """Pages plain resiliparse extracts text from that this extractor empties; `with_article` are those whose
    reference holds text (not boilerplate by the labels)."""
    gone = [c for t, p, c in zip(texts, plain, cases, strict=True) if p.strip() and not t.strip()]
    return {"pages": len(gone), "with_article": [c["key"] for c in gone if c["must"]]}


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the step's extraction child)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def fastest(run: Callable[[Any], T], repeats: int, setup: Callable[[], Any] = lambda: None) -> tuple[float, T]:
    """The fewest CPU seconds (see cpu_seconds) that `run(setup())` took in `repeats` tries, `setup` untimed,
    and what the last try returned."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        prepared = setup()
        start = cpu_seconds()
        result = run(prepared)
        best = min(best, cpu_seconds() - start)
    return best, result


def step_speed(pages: list[str], repeats: int = 1) -> dict:
    """The `extract` step as a pipeline runs it (default config: risky pages in the killable child, the
    cascade on), in CPU seconds of the worker and of its child processes; the same with every page in the
    child (`isolate: all`, the previous behaviour), and without the class-token skips (`skip_classes: false`)."""
    from filters import STEPS

    out: dict = {"pages": len(pages), "mean_html_kb": round(sum(map(len, pages)) / len(pages) / 1e3, 1),
                 "max_depth_seen": max(nesting_depth(h) for h in pages)}
    configs = (("default", {}), ("isolate_all", {"isolate": "all"}), ("no_class_skips", {"skip_classes": False}))
    for label, params in configs:
        def warmed_up(params: dict = params) -> Any:
            step = STEPS["extract"](STEPS["extract"].Params(timeout_s=5.0, **params))
            step([{"id": "warm-up", "html": "<p>warm up</p>"}])  # the child's start-up, once per worker
            return step

        def run(step: Any) -> Any:
            step([{"id": str(i), "html": h} for i, h in enumerate(pages)])
            if step.sandbox is not None:
                step.sandbox.close()  # reaped, so that its CPU time is counted
            return step

        seconds, step = fastest(run, repeats, warmed_up)
        out["pages_per_cpu_s" if label == "default" else f"{label}_pages_per_cpu_s"] = round(len(pages) / seconds, 1)
        out[f"{label}_isolated_pages"] = step.stats["isolated"]
        out[f"{label}_cascade_pages"] = step.stats["cascade"]
    return out


def part_times(pages: list[str], repeats: int) -> dict[str, float]:
    """Milliseconds per page of each part of the default method (the fastest of `repeats` passes; in-process,
    no child), beside resiliparse's plain main-content pass on the raw HTML, the floor it builds on."""
    import numpy as np
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    from filters.extract_boundary import blocks, features, rule_features, tree_features
    from filters.extract_methods import (
        link_lines,
        mark_html,
        resiliparse_marked,
        skip_selector,
        unhide_embedded_posts,
    )
    from filters.extract_trim import page_title

    def per_page(fn: Callable[[Any], object], items: list) -> float:
        return round(fastest(lambda _: [fn(item) for item in items], repeats)[0] / len(pages) * 1e3, 3)

    fenced = [mark_html(unhide_embedded_posts(h))[0] for h in pages]
    marked = [resiliparse_marked(h) for h in pages]
    lines = []  # (blocks, headings, title, parents) of each page with a line
    for (text, parents), h in zip(marked, pages, strict=True):
        text_lines, headings = link_lines(text)
        if (page_blocks := blocks(text_lines))[0]:
            lines.append((page_blocks, headings, page_title(h), parents))
    options = DEFAULT | {"cascade": False}
    out = {
        "resiliparse plain main-content pass": per_page(lambda h: extract_plain_text(h, main_content=True), pages),
        "fence links and blocks": per_page(lambda h: mark_html(unhide_embedded_posts(h)), pages),
        "parse and main-content pass": per_page(lambda h: extract_plain_text(
            HTMLTree.parse(h), main_content=True, alt_texts=False, links=False, form_fields=False, noscript=False,
            comments=False), fenced),
        "class-token scan": per_page(skip_selector, pages),
        "resiliparse_marked, all of the above": per_page(resiliparse_marked, pages),
        "link shares, containers and headings per line": per_page(lambda m: link_lines(m[0]), marked),
        "boundary features": per_page(lambda x: features(x[0][0], x[0][1], x[1], x[2], x[0][2], x[0][3], x[3]),
                                      lines),
        "of which the word-list trim's verdicts": per_page(lambda x: rule_features(x[0][0], x[1], x[2]), lines),
        "of which the tree's": per_page(lambda x: tree_features(
            np.array([len(line) for line in x[0][0]], dtype=np.float64), x[0][3], x[3]), lines),
        "default without cascade": per_page(lambda h: extract_page(h, options), pages),
        "default": per_page(lambda h: extract_page(h, DEFAULT), pages),
    }
    return out


def print_row(row: dict) -> None:
    def fmt(v: dict) -> str:
        return f"F1 {v['f1']:.3f} (P {v['precision']:.3f} R {v['recall']:.3f})"

    print(f"{row['extractor']:46s} {row['pages_per_cpu_s']:6.1f} pages/CPU-s  all {fmt(row['all'])}  "
          f"dev {row['dev']['f1']:.3f}  test {fmt(row['test'])}  token F1 {row.get('token_f1_scrapinghub', 0):.3f}")
    print("    test by source: " + " | ".join(f"{s} {v['f1']:.3f} ({v['pages']})"
                                            for s, v in row["sources_test"].items()))
    print("    test by language: " + " | ".join(f"{g} {v['f1']:.3f} ({v['pages']})"
                                              for g, v in row["languages_test"].items()), flush=True)


if __name__ == "__main__":
    main()
