"""Fences: private-use characters written into the HTML before resiliparse reads it, so that each line of its
text still says which part of it was a link, and which element of the page holds it.

resiliparse's DOM costs about a tenth of a millisecond per node read back from Python, so the page's
structure is read in one regex pass over the HTML instead, and rides through the extraction as text:
- the text of each <a> is fenced by LINK_OPEN ... LINK_CLOSE (a line that is mostly link text is a menu);
- each text block opens with BLOCK (<p>, <li>) or HEADING (<h1>-<h6>) and one character that names the
  container it sits in (the nearest enclosing <div>, <section>, <article>, <main>, <aside>, <header>,
  <footer>, <nav> or <form>); `parents` maps each container to the one around it. The learned boundary
  finds the container that holds most of the page's prose, as readability does, and asks of every line
  whether it lies inside. A heading line is known without a second pass over the HTML.
- after each container's end, a BLOCK fence names the container around it, so that text written straight
  into a <div> after its children (a "Request a reprint" line under the article's paragraphs) is not
  taken for part of the last child. Where nothing but markup follows, the fence stands alone on a line,
  which the reader of the lines skips.
Standard library only, as the extraction child process imports it.
"""

from __future__ import annotations

import re

LINK_OPEN, LINK_CLOSE = "\ue000", "\ue001"
BLOCK, HEADING = "\ue002", "\ue003"
# The container's number is one character of plane 15's private use area (65,534 of them): a page with more
# containers than that files the rest under the last one it numbered.
CONTAINER_BASE = 0xF0000
MAX_CONTAINERS = 0xFFFD
NO_CONTAINER = -1

CONTAINERS = frozenset({"div", "section", "article", "main", "aside", "header", "footer", "nav", "form"})
# "<" or "</", the name, whole (`<abbr>`, `<link>`, `<param>`, `<pre>` do not match), and the rest of the tag:
# joining the parts that `split` returns gives back the page.
_TAG = re.compile(r"(</?)(a|p|li|h[1-6]|div|section|article|main|aside|header|footer|nav|form)((?=[\s/>])[^>]*>)",
                  re.I | re.A)
_LOWER_NAMES = frozenset({"a", "p", "li", *(f"h{level}" for level in range(1, 7)), *CONTAINERS})
_BLOCK_FENCE = re.compile(f"[{BLOCK}{HEADING}].", re.S)
# Link share counts letters and digits only: the bars and dots between menu links are not text.
_NOT_ALNUM = re.compile(r"[\W_]+")
_LINK_SPAN = re.compile(f"{LINK_OPEN}[^{LINK_CLOSE}]*{LINK_CLOSE}")


def strip_fence_chars(html: str) -> str:
    """A page without the fence characters of its own (icon fonts use the private use area), so that every
    fence in the marked page is one of ours (str.replace: str.translate is ten times slower on long pages)."""
    for fence in (LINK_OPEN, LINK_CLOSE, BLOCK, HEADING):
        if fence in html:
            html = html.replace(fence, "")
    return html


def mark_html_python(html: str) -> tuple[str, list[int]]:
    """The HTML with links and text blocks fenced, and each container's parent (container 0 is the page).

    The split parts are edited in place, and only where a fence goes: most tags need none, and a new string
    per tag would cost more than the regex pass. `<div/>` opens a <div>, as HTML parsers read it."""
    parts = _TAG.split(strip_fence_chars(html))  # text, "<" or "</", name, rest of the tag, text, ...
    parents = [NO_CONTAINER]
    open_ids, open_tags = [0], [""]
    for i in range(1, len(parts), 4):
        name = parts[i + 1]
        if name == "a":  # half of all the tags the pass sees
            if parts[i] == "<":
                parts[i + 2] += LINK_OPEN
            else:
                parts[i] = LINK_CLOSE + "</"
            continue
        tag = name if name in _LOWER_NAMES else name.lower()
        if parts[i] == "<":
            if tag in CONTAINERS:
                if len(parents) < MAX_CONTAINERS:
                    parents.append(open_ids[-1])
                open_ids.append(len(parents) - 1)
                open_tags.append(tag)
            elif tag == "a":
                parts[i + 2] += LINK_OPEN
            else:
                parts[i + 2] += (HEADING if tag[0] == "h" else BLOCK) + chr(CONTAINER_BASE + open_ids[-1])
        elif tag == "a":
            parts[i] = LINK_CLOSE + "</"
        elif tag in CONTAINERS:
            for depth in range(len(open_tags) - 1, 0, -1):  # a stray closing tag closes nothing
                if open_tags[depth] == tag:
                    del open_ids[depth:], open_tags[depth:]
                    parts[i + 2] += BLOCK + chr(CONTAINER_BASE + open_ids[-1])  # back in the one around it
                    break
    return "".join(parts), parents


def block_container(line: str) -> tuple[str, int, bool]:
    """A marked line without its block fences, the container of the first block it opens (NO_CONTAINER if it
    opens none: it continues the block above), and whether that block is a heading."""
    block, heading = line.find(BLOCK), line.find(HEADING)
    if block < 0 and heading < 0:
        return line, NO_CONTAINER, False
    at = heading if block < 0 or 0 <= heading < block else block
    container = ord(line[at + 1]) - CONTAINER_BASE if at + 1 < len(line) else NO_CONTAINER
    if not 0 <= container < MAX_CONTAINERS:
        container = NO_CONTAINER
    return _BLOCK_FENCE.sub("", line), container, at == heading


def link_share_python(line: str) -> float:
    """The share of a marked line's letters and digits that lie inside links (unclosed links count as text)."""
    if LINK_OPEN not in line:
        return 0.0
    total = len(_NOT_ALNUM.sub("", line))  # the fences are not letters
    linked = sum(len(_NOT_ALNUM.sub("", m.group(0))) for m in _LINK_SPAN.finditer(line))
    return linked / total if total else 0.0


try:  # these functions compiled, where the install could build them (filters/extract_speedups.pyx)
    if __package__:
        from filters import extract_speedups as compiled
    else:
        import extract_speedups as compiled
except ImportError:
    compiled = None
mark_html = compiled.mark_html if compiled else mark_html_python
link_share = compiled.link_share if compiled else link_share_python
