"""The extraction methods: resiliparse with its guards, trafilatura, and the cascade (the learned article
boundary is `filters/extract_boundary.py`, the word-list edge trim `filters/extract_trim.py`).

`extract_page` is what the `extract` step runs for each page, in the worker or, for a risky page, inside the
child process of `filters/extract_sandbox.py`. This module imports only the standard library, numpy and
resiliparse at the top (trafilatura on first use), so that the child starts fast; it is also the child's
entry point.
"""

from __future__ import annotations

import html as html_lib
import re
from typing import Any

if __package__:
    from filters.extract_boundary import Line, article_lines
    from filters.extract_fences import (
        LINK_CLOSE,
        LINK_OPEN,
        NO_CONTAINER,
        block_container,
        compiled,
        link_share,
        mark_html,
    )
    from filters.extract_trim import page_title, trim_boilerplate
else:  # the child process runs this file as a script, with filters/ on sys.path and no package loaded
    from extract_boundary import Line, article_lines
    from extract_fences import LINK_CLOSE, LINK_OPEN, NO_CONTAINER, block_container, compiled, link_share, mark_html
    from extract_trim import page_title, trim_boilerplate

# Share bars, "related" boxes, captions, cookie notices and post metadata survive resiliparse's main-content heuristic.
# They are matched as whole class tokens: `class="docked-sharebar-content-container"`,
# `"has-recommendations"` or `"no-share"` name the article itself, not a share bar. lexbor finds the
# candidates by substring (a few selectors: each costs a pass over the tree) and the tokens decide.
SKIP_CLASS_TOKENS = frozenset({
    "share", "shares", "sharing", "sharebar", "share-bar", "share-buttons", "share-links", "share-tools",
    "sharedaddy", "social", "social-share", "social-links", "social-icons", "social-media", "social-buttons",
    "related", "related-posts", "related-articles", "related-content", "related-links", "relatedposts",
    "jp-relatedposts", "yarpp-related", "recommended", "recommendations",
    "caption", "wp-caption-text", "image-caption", "caption-text", "figure-caption", "photo-caption",
    "cookie", "cookies", "cookie-notice", "cookie-banner", "cookie-bar", "cookie-consent", "cookie-law-info-bar",
    # Bylines and the post-meta rows of blog themes ("Posted in … | Tagged … | Leave a comment").
    "byline", "entry-meta", "post-meta", "postmetadata", "entry-utility", "entry-footer", "post-footer",
    # Sidebar widgets. Not "teaser" (news sites put the lead paragraph in one) nor "paywall" (it may wrap the
    # article itself); author boxes and newsletter sign-ups gained nothing measurable (resiliparse drops most)
    # and each token costs a pass over the tree on the pages that use it.
    "widget",
})
SKIP_TAGS = ("figure", "figcaption")
# Which skip tokens a page uses is read from its raw HTML first (a regex pass), so that lexbor is asked only
# for those: a selector costs a pass over the tree, and each node read back from it costs far more.
# The value of each class attribute (for an unquoted one, up to the tag's end: a few extra words only add a
# candidate selector, and lexbor's whole-token match decides). Two case-sensitive patterns, as a literal
# start lets the regex engine skip ahead (five times faster than one case-insensitive pass); "cLaSs" is lost.
_CLASS_ATTRS = (re.compile(r"""class\s*=\s*["']?([^"'>]*)"""), re.compile(r"""(?:CLASS|Class)\s*=\s*["']?([^"'>]*)"""))
_FIGURE = re.compile(r"<fig(?:ure|caption)[\s>]", re.I)
# A skipped element never holds this share of the body's text: then it is the article, whatever its class.
MAX_SKIP_SHARE = 0.5
# Nor the page's largest run of text between two tags, outside scripts and styles: the article's main prose.
# Blogger wraps the post in `class="widget Blog"`, and its sidebar widgets may hold more text than the post.
_TEXT_RUN = re.compile(r"<(?!/?(?:script|style)\b)[a-zA-Z/][^>]*>([^<]{100,})", re.I)
PROBE_CHARS = 60

# The class of the <blockquote> an embedded tweet is (see `unhide_embedded_posts`).
EMBEDDED_TWEET = "twitter-tweet"

# resiliparse's main-content pass costs time quadratic in the nesting depth of <div>/<article>
# (10,000 levels: 2.6 s; 40,000: 40 s), in C code no signal can interrupt. Real pages stay under 60.
# Tag names and the whitespace after them are ASCII in HTML.
_NEST_TAG = re.compile(r"<(/?)(?:div|article)(?=[\s/>])", re.I | re.A)
_WHOLE_NEST_TAG = re.compile(r"<(/?)(?:div|article)(?=[\s/>])[^>]*>?", re.I | re.A)
MAX_DEPTH = 256

# A line (one block) that is mostly link text (see filters/extract_fences.py) is a menu, a "related" teaser, a
# tag list or a footer bar (trafilatura's link-density idea, at block level); resiliparse keeps many of them.
MAX_LINK_SHARE = 0.8
# A line that is one bare tag: markup inside <noscript> in <head> (tracking pixels) reaches the text as text.
_TAG_LINE = re.compile(r"\s*<[a-zA-Z/!][^>]*>\s*")


# The space separators of Unicode (category Zs) but the plain space: no-break, thin, ideographic, ...
_UNICODE_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")

# Shorter results go to trafilatura, when the cascade is on (bench/extraction.py measures the choice).
CASCADE_MIN_CHARS = 300
# ... unless the page has more tags than this: trafilatura's time grows with the tag count (a 15,000-tag
# listing page costs it 250 ms, what the default spends on fifty pages), and a page where resiliparse finds under 300
# characters of prose among that many tags is a listing or an index, where trafilatura adds a menu at most.
CASCADE_MAX_TAGS = 8_000


def nesting_depth(html: str) -> int:
    """Deepest nesting of <div>/<article> tags, counting stray closing tags as no-ops (one pass)."""
    return compiled.nesting_depth(html) if compiled else nesting_depth_python(html)


def nesting_depth_python(html: str) -> int:
    """`nesting_depth` in one regex pass (filters/extract_speedups.pyx holds the compiled one equal to it)."""
    depth = deepest = 0
    for closing in _NEST_TAG.findall(html):
        if closing:
            depth = depth - 1 if depth else 0
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


# A page is risky, and goes to the killable child, beyond any of these (bench/extraction.py prints the scan on
# the real pages of ../shared/data: at most 1.5 MB, 71,000 tags and 53 levels of <div> nesting; 99% of them
# under 600 KB, 3,600 tags and 21 levels). Extraction time grows linearly in size and tags, quadratically in depth.
RISKY_CHARS = 1_600_000
RISKY_TAGS = 100_000
RISKY_DEPTH = 128


def is_risky(html: str) -> bool:
    """Whether a page may take resiliparse or trafilatura long enough to need a hard limit (a cheap scan:
    its length, then a count of "<", then the nesting depth; 0.07 ms on a typical page)."""
    return len(html) > RISKY_CHARS or html.count("<") > RISKY_TAGS or nesting_depth(html) > RISKY_DEPTH


def flatten_deep(html: str, max_depth: int = MAX_DEPTH) -> str:
    """Drop the <div>/<article> tags nested deeper than `max_depth`, keeping their content (linear time).

    The content of a dropped level joins its parent block. The tags go whole: a `<br>` in their place
    would be no better, as thousands of line breaks in one block are slow in resiliparse too."""
    depth = 0

    def keep_shallow(match: re.Match[str]) -> str:
        nonlocal depth
        if match.group(1):
            depth = depth - 1 if depth else 0
            return match.group(0) if depth < max_depth else ""
        depth += 1
        return match.group(0) if depth <= max_depth else ""

    return _WHOLE_NEST_TAG.sub(keep_shallow, html)


def resiliparse_text(html: str) -> str:
    """Main content by resiliparse, without figures, captions, share bars and "related" boxes."""
    return resiliparse_main(html)[0]


def unhide_embedded_posts(html: str) -> str:
    """The HTML with embedded tweets renamed: they quote what the article is about, and resiliparse's social-media
    rule takes the `twitter-tweet` class for a share button (a str.replace, on the pages that embed one)."""
    return html.replace(EMBEDDED_TWEET, "quoted-tweet") if EMBEDDED_TWEET in html else html


def link_lines(text: str) -> tuple[list[Line], frozenset[str]]:
    """The marked lines without their fences, with their link share and container (a line that opens no block
    continues the one above), but the lines that are mostly link text (not headings) and bare tags; and the
    heading lines' text."""
    if compiled:
        return compiled.link_lines(text, MAX_LINK_SHARE, _TAG_LINE)
    return link_lines_python(text)


def link_lines_python(text: str) -> tuple[list[Line], frozenset[str]]:
    """`link_lines` in Python (filters/extract_speedups.pyx compiles it)."""
    out, headings = [], []
    container = NO_CONTAINER
    for line in text.splitlines():
        line, opened, heading = block_container(line)
        if opened != NO_CONTAINER:
            container = opened
            if not line.strip():  # a fence alone: the end of a container, between two of its children
                continue
        if LINK_OPEN in line or LINK_CLOSE in line:
            plain = line.replace(LINK_OPEN, "").replace(LINK_CLOSE, "")
            share = link_share(line)
            if share >= MAX_LINK_SHARE and not heading:
                continue
        else:
            plain, share = line, 0.0
        if heading:
            if stripped := plain.strip():
                headings.append(stripped)
        elif "<" in plain and _TAG_LINE.fullmatch(plain):
            continue
        out.append((plain, share, container))
    return out, frozenset(headings)


def skip_selector(html: str) -> str:
    """The CSS selector for the skip tags and skip class tokens this page uses (whole tokens), or "" if none."""
    tokens = SKIP_CLASS_TOKENS.intersection(" ".join(v for attr in _CLASS_ATTRS for v in attr.findall(html)).split())
    if not tokens and not _FIGURE.search(html):
        return ""
    return ", ".join([*SKIP_TAGS, *(f'[class~="{token}"]' for token in sorted(tokens))])


def main_prose_probe(html: str) -> str:
    """A piece of the page's largest run of text between tags, whitespace collapsed ("" if none is long)."""
    runs = (m.group(1) for m in _TEXT_RUN.finditer(html))
    longest = " ".join(html_lib.unescape(max(runs, key=len, default="")).split())
    middle = max(0, len(longest) // 2 - PROBE_CHARS // 2)
    return longest[middle : middle + PROBE_CHARS] if len(longest) >= PROBE_CHARS else ""


def resiliparse_main(html: str, skip_classes: bool = True) -> tuple[str, frozenset[str]]:
    """resiliparse's main content, without link-dense lines, and the text of its heading lines."""
    text_lines, headings = link_lines(resiliparse_marked(html, skip_classes)[0])
    return "\n".join(line for line, *_ in text_lines), headings


def resiliparse_marked(html: str, skip_classes: bool = True) -> tuple[str, list[int]]:
    """resiliparse's main content with links and blocks fenced (filters/extract_fences.py), and the parent of
    each container the fences name; with `skip_classes`, without the elements the skip rules name."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    marked_html, parents = mark_html(unhide_embedded_posts(html))
    tree = HTMLTree.parse(marked_html)
    body = tree.body
    if body is None:
        return "", parents
    total, probe = -1, None
    selector = skip_selector(html) if skip_classes else ""
    for node in body.query_selector_all(selector) if selector else ():
        if node.parent is None:
            continue  # nothing to remove it from
        text = node.text
        if len(text) > 200:  # only a sizeable element can hold the article: measure the page once
            total = len(body.text) if total < 0 else total
            probe = main_prose_probe(html) if probe is None else probe
            if len(text) > MAX_SKIP_SHARE * total or (probe and probe in " ".join(text.split())):
                continue  # it is the article, whatever its class says
        node.parent.remove_child(node)
    text = extract_plain_text(tree, main_content=True, alt_texts=False, links=False, form_fields=False,
                              noscript=False, comments=False)
    return text, parents


def clean_text(text: str) -> str:
    """Trim trailing spaces and collapse runs of blank lines, which both extractors leave; non-breaking and the
    other Unicode spaces become plain ones (tokenizers, dedup and the line rules all split on " ")."""
    if not text.isascii():
        text = _UNICODE_SPACE.sub(" ", text)
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def trafilatura_text(html: str, favor_precision: bool = True, seen: object = True, fast: bool = False) -> str:
    """trafilatura as FineWeb ran it. `seen` is its dedup cache of recent text segments; `fast` skips its
    fallback extractors (readability, jusText), which cost about half its time."""
    import trafilatura

    return trafilatura.extract(html, favor_precision=favor_precision, include_comments=False,
                               deduplicate=seen, fast=fast) or ""


def new_dedup_cache() -> object:
    from trafilatura.deduplication import LRUCache

    return LRUCache(maxsize=4096)


def looks_wrong(text: str, html: str) -> bool:
    """Whether resiliparse's result is worth a second opinion from trafilatura, at a bounded cost
    (see bench/extraction.py)."""
    return len(text) < CASCADE_MIN_CHARS and html.count("<") <= CASCADE_MAX_TAGS


def extract_page(html: str, options: dict[str, Any], seen: object = True) -> tuple[str, list[str]]:
    """Text of one page and the events worth counting (`guarded`, `cascade`), as the step's options say.

    `seen` is trafilatura's dedup cache of recent text segments, for the trafilatura extractor.

    options: extractor, trim_boilerplate, boundary, skip_classes, favor_precision,
    cascade, max_depth, check_depth (scan the nesting depth first; the step asks for it after a page overran
    its time limit, or with no limit)."""
    events: list[str] = []
    if options["extractor"] == "trafilatura":
        return clean_text(trafilatura_text(html, options["favor_precision"], seen)), events
    if options.get("check_depth") and nesting_depth(html) > options["max_depth"]:
        html = flatten_deep(html, options["max_depth"])
        events.append("guarded")
    skip_classes = options.get("skip_classes", True)
    if options["trim_boilerplate"] and options.get("boundary", "model") == "model":
        marked, parents = resiliparse_marked(html, skip_classes)
        text_lines, headings = link_lines(marked)
        text = clean_text(article_lines(text_lines, headings, page_title(html), parents))
    else:
        raw, headings = resiliparse_main(html, skip_classes)
        text = clean_text(raw)
        if options["trim_boilerplate"]:
            text = trim_boilerplate(text, keep=headings, title=page_title(html))
    if options.get("cascade") and looks_wrong(text, html):
        events.append("cascade")
        # Without trafilatura's cross-page dedup: a page's text must not depend on which pages went before.
        # Without its fallbacks: they gain little on such pages and would halve the step's speed, as the
        # link-line filter sends more short pages here (bench/extraction.py).
        second = clean_text(trafilatura_text(html, options["favor_precision"], False, fast=True))
        if len(second) > len(text):
            events.append("cascade_used")
            text = second
    return text, events


_child_seen: object = None


def _handle(kind: str, *args: Any) -> Any:
    """The child process's requests: ("page", html, options), and ("reset",) at each new shard."""
    global _child_seen
    if kind == "reset":
        _child_seen = None
        return None
    html, options = args
    if options["extractor"] == "trafilatura" and _child_seen is None:
        _child_seen = new_dedup_cache()
    return extract_page(html, options, _child_seen)


if __name__ == "__main__":
    # Started by filters/extract_sandbox.py as a script: this directory is on sys.path, and the `filters`
    # package, with every step it imports, is not loaded.
    import sys

    from extract_sandbox import serve

    serve(int(sys.argv[1]), int(sys.argv[2]), _handle, ["resiliparse.extract.html2text", *sys.argv[3:]])
