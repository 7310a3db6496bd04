"""Extraction's compiled loops (filters/extract_speedups.pyx) against their pure-Python originals, output for
output: on every real HTML page of ../shared/data, on pages built to hit the scanners' edge cases, and on
lines holding every character up to U+2FFFF."""

from __future__ import annotations

import gzip
import os
import random

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from filters import extract_fences
from filters.extract_boundary import _CAPITALS, _TERMINAL, SAMPLE_CHARS, blocks, line_features_python
from filters.extract_fences import LINK_CLOSE, LINK_OPEN, link_share_python, mark_html_python
from filters.extract_methods import (
    _TAG_LINE,
    MAX_LINK_SHARE,
    link_lines_python,
    nesting_depth_python,
    unhide_embedded_posts,
)
from filters.extract_trim import length_and_words_python, page_title
from tests.conftest import SHARED

try:
    from filters import extract_speedups
except ImportError:
    if os.environ.get("WINNOW_REQUIRE_COMPILED"):
        raise
    pytest.skip("filters/extract_speedups.pyx was not built (no C compiler at install)", allow_module_level=True)

# Pages made to hit the tag scanner's edges: case, stray and unclosed tags, names that are prefixes of
# others, a tag left open at the end, whitespace HTML does not know, the page's own fence characters.
EDGE_PAGES = [
    "", "<", "</", "<p", "<p>", "</div>", "<a>x", "<DIV><P>One</p></Div><LI>two", "<div/><p>x</div>",
    "<h1>t</h1><h7>no</h7><h12>no</h12><header><h6>six</h6></header><hgroup>",
    "<article><aside>a</aside><abbr>b</abbr><a1>c</a1><address>d</address><link><li>e</li></article>",
    "<p\u00a0class=x>no break space</p><p\tclass=x>tab</p><p\nclass=x>newline</p>",
    "<div><section>open</div></section></section><form><nav><p>deep", "<div class='a>b'><p>quoted</p></div>",
    "<p>unclosed <a href='x", "<p>" + "\ue000\ue001\ue002\ue003" + "own fences</p><a>x\ue001</a>",
    "<main><footer><p>a</p></footer><p>b</p></main><p>after", "<a href=x><a href=y>nested</a></a>",
    "text only, no tags at all", "<<p>>double<</p>>", "<p" + "x" * 5 + ">", "<sectionx><section >ok",
]
# Marked lines made to hit the line reader's edges: a fence at the end, fences back to back, links unclosed,
# nested or empty, a bare tag, a heading made of links, container numbers out of range.
FENCE = "\ue002\U000f0001"
EDGE_TEXTS = [
    "", "\n\n", FENCE, "\ue002", "a\ue002", "\ue002\ue002x", f"{FENCE}   ",
    f"\ue003\U000f0002{LINK_OPEN}Home{LINK_CLOSE}",
    f"{FENCE}Read {LINK_OPEN}more{LINK_CLOSE} here", f"{LINK_OPEN}all link{LINK_CLOSE}", f"{LINK_OPEN}open only",
    f"close only{LINK_CLOSE}", f"{LINK_OPEN}a{LINK_OPEN}b{LINK_CLOSE}c{LINK_CLOSE}", f"{LINK_OPEN}{LINK_CLOSE}",
    "<img src=x>", f"{FENCE}<br/>", "\ue002\U000fffff too far", "\ue002a not a number", "x\u2028y\x0bz\r\nw",
    f"{FENCE}first{FENCE}second\n continued\n{FENCE}\n{LINK_OPEN}__{LINK_CLOSE} underscores",
]


def real_pages() -> list[str]:
    """Every real HTML page in ../shared/data: the annotated and DCLM pages, UDHR, the WARC files' responses."""
    data = SHARED / "html-extraction"
    pages = [gzip.decompress(p.read_bytes()).decode("utf-8", "replace")
             for p in sorted((data / "scrapinghub-aeb" / "html").glob("*.html.gz"))]
    pages += [p.read_text("utf-8", "replace") for p in sorted((data / "dclm-cc-html").glob("*.html"))]
    pages += [p.read_text("utf-8", "replace") for p in sorted((SHARED / "langid" / "udhr").rglob("*.html"))]
    for path in sorted((SHARED / "warc").rglob("*.warc*")):
        with path.open("rb") as stream:
            try:
                for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
                    if "html" in (record.http_content_type or ""):
                        pages.append(record.reader.read().decode("utf-8", "replace"))
            except Exception:  # noqa: BLE001 - the damaged files end early; their readable records count
                pass
    return pages


@pytest.fixture(scope="module")
def pages() -> list[str]:
    found = real_pages()
    assert len(found) > 500
    return found


def test_constants_agree():
    assert extract_fences.compiled is extract_speedups  # what the extraction runs is what is checked here
    for name in ("LINK_OPEN", "LINK_CLOSE", "BLOCK", "HEADING"):
        assert ord(getattr(extract_fences, name)) == {"LINK_OPEN": 0xE000, "LINK_CLOSE": 0xE001, "BLOCK": 0xE002,
                                                      "HEADING": 0xE003}[name]
    assert extract_fences.CONTAINER_BASE == 0xF0000 and extract_fences.MAX_CONTAINERS == 0xFFFD
    assert set(extract_speedups.CONTAINERS) == extract_fences.CONTAINERS


def fuzz_pages(count: int) -> list[str]:
    """Random pages strung from tag fragments, text and fences (fixed seed)."""
    pieces = ["<", "</", ">", "/", " ", "\n", "a", "A", "p", "li", "h1", "h9", "div", "DIV", "section", "nav", "x",
              "class='q'", "text", "\ue000", "\ue002", "é", "中文", "<a href=u>", "</a>", "<p>", "</div>"]
    rng = random.Random(7)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(count)]


# Pages made to hit the depth scan's edges: case, names that start with "div" or "article", stray closers,
# whitespace HTML does not know, a name at the very end.
DEPTH_PAGES = [
    "<div", "<div>", "</div", "<div ", "<DIV\t><Article\n><div/><divx><div\u00a0><articles>", "</div></div><div>",
    "<div><div><div></div></div></div><div>", "<<div>>", "</ div><div\x0b>", "<article>" * 300 + "</article>" * 299,
]


def test_nesting_depth_matches_python(pages):
    pieces = ["<", "</", ">", "/", " ", "\t", "\u00a0", "div", "DIV", "Div", "article", "ARTICLE", "articl", "x",
              "<div>", "</div>", "<article class=a>", "é"]
    rng = random.Random(11)
    fuzz = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))) for _ in range(5000)]
    for html in [*DEPTH_PAGES, *EDGE_PAGES, *fuzz, *pages]:
        assert extract_speedups.nesting_depth(html) == nesting_depth_python(html), html[:200]


def test_mark_html_matches_python(pages):
    for html in [*EDGE_PAGES, *fuzz_pages(3000), *pages]:
        html = unhide_embedded_posts(html)
        assert extract_speedups.mark_html(html) == mark_html_python(html), html[:200]


def test_link_lines_and_link_share_match_python(pages):
    texts = [*EDGE_TEXTS, *(mark_html_python(html)[0] for html in [*EDGE_PAGES, *fuzz_pages(3000), *pages])]
    for text in texts:
        assert (extract_speedups.link_lines(text, MAX_LINK_SHARE, _TAG_LINE) == link_lines_python(text)), text[:200]
        for line in text.splitlines()[:50]:
            assert extract_speedups.link_share(line) == link_share_python(line), line


def line_cases(pages: list[str]) -> list[tuple[list[str], list[float], list[bool], str, frozenset[str]]]:
    """The boundary model's inputs on each page, and lines holding every character up to U+2FFFF (120 each,
    spaced so that each opens a token), with long, short, spaced and unspaced lines around them."""
    cases = []
    for html in pages:
        text_lines, headings = link_lines_python(mark_html_python(unhide_embedded_posts(html))[0])
        lines, links, blanks, _ = blocks(text_lines)
        cases.append((lines, links, blanks, page_title(html), headings))
    every = [" ".join(chr(c) for c in range(start, start + 120) if not 0xD800 <= c <= 0xDFFF)
             for start in range(0, 0x30000, 120)]
    every += ["".join(chr(c) for c in range(start, start + 300)) for start in range(0, 0x30000, 3000)]
    odd = ["", " ", "•", "   x   ", "AB CD ef. 12 345", "中文" * 200, "ไทย" * 90, "Ünïcødé Über Öl." * 30,
           "x" * 239 + " Yz", "a " * 121, "The Title Of The Page Is Here"]
    cases.append((every + odd, [0.5] * (len(every) + len(odd)), [True, False] * ((len(every) + len(odd)) // 2 + 1),
                  "the title of the page is here", frozenset({"•", "Über"})))
    return cases


def test_line_rows_match_python(pages):
    for lines, links, blanks, title, keep in line_cases(pages):
        blanks = blanks[: len(lines)]
        want = [line_features_python(line, link, keep, title, blank)
                for line, link, blank in zip(lines, links, blanks, strict=True)]
        got = extract_speedups.line_rows(lines, links, keep, title, blanks, SAMPLE_CHARS, _TERMINAL, _CAPITALS)
        assert got == want


def test_length_and_words_matches_python(pages):
    for lines, *_ in line_cases(pages):
        for line in lines:
            tokens = len(line.split())
            assert extract_speedups.length_and_words(line, tokens) == length_and_words_python(line, tokens), line
