# cython: language_level=3
"""Extraction's per-tag and per-line loops, compiled: the same functions as their pure-Python originals in
`filters/extract_fences.py`, `filters/extract_methods.py`, `filters/extract_boundary.py` and
`filters/extract_trim.py`, which use these when the install could build them (a C compiler; `pip install`
builds this file with Cython) and fall back to themselves otherwise. `tests/test_extract_speedups.py` holds each equal to its original, output for output,
on every real page of `../shared/data`.

Python's regular expressions are fast to scan with but slow to act on: a match object per tag, a list of
parts per page, a findall per line. Here a page, and each line, is one pass over its characters.
"""

from cpython.unicode cimport Py_UNICODE_ISALNUM, Py_UNICODE_ISDECIMAL, Py_UNICODE_ISSPACE

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end, int direction) except -2

import math

_round = round  # Python's, half to even (C's round goes half away from zero)

# The constants of filters/extract_fences.py (the test checks that they agree).
cdef Py_UCS4 LINK_OPEN = 0xE000
cdef Py_UCS4 LINK_CLOSE = 0xE001
cdef Py_UCS4 BLOCK = 0xE002
cdef Py_UCS4 HEADING = 0xE003
cdef long CONTAINER_BASE = 0xF0000
cdef long MAX_CONTAINERS = 0xFFFD
cdef long NO_CONTAINER = -1
cdef int LONGEST_NAME = 7  # "section", "article"

CONTAINERS = ("div", "section", "article", "main", "aside", "header", "footer", "nav", "form")
cdef int NOT_MARKED = -3, LINK = -2, TEXT_BLOCK = -1  # a tag's kind; a container's is its index in CONTAINERS


cdef inline bint is_tag_space(Py_UCS4 ch):
    # The ASCII whitespace of `\s` under re.ASCII.
    return ch == 32 or 9 <= ch <= 13


cdef inline Py_UCS4 lower_at(str text, Py_ssize_t at):
    # The character at `at`, lower-cased if it is an ASCII letter (the callers know it is a letter or a digit).
    cdef Py_UCS4 ch = text[at]
    return <Py_UCS4>(<long>ch | 0x20)


cdef inline bint named(str html, Py_ssize_t at, str name):
    # Whether the tag name at `at` (letters and digits, as long as `name`) is `name`, in any case.
    cdef Py_ssize_t i
    for i in range(len(name)):
        if lower_at(html, at + i) != <Py_UCS4>name[i]:
            return False
    return True


cdef int tag_kind(str html, Py_ssize_t at, Py_ssize_t length):
    """What the tag whose name (ASCII letters and 1-6) starts at `at` is to the fences."""
    cdef Py_UCS4 first = lower_at(html, at), second
    cdef int i
    if length == 1:
        return LINK if first == "a" else TEXT_BLOCK if first == "p" else NOT_MARKED
    if length == 2:
        second = lower_at(html, at + 1)
        if first == "l":
            return TEXT_BLOCK if second == "i" else NOT_MARKED
        return TEXT_BLOCK if first == "h" and "1" <= second <= "6" else NOT_MARKED
    for i in range(len(CONTAINERS)):
        if len(<str>CONTAINERS[i]) == length and named(html, at, CONTAINERS[i]):
            return i
    return NOT_MARKED


def mark_html(str html):
    """`filters.extract_fences.mark_html_python`: the page with links and text blocks fenced, and each
    container's parent."""
    for fence in ("\ue000", "\ue001", "\ue002", "\ue003"):
        if fence in html:
            html = html.replace(fence, "")
    cdef Py_ssize_t n = len(html), at = 0, start, end, last = 0, name_end, depth
    cdef Py_UCS4 ch
    cdef bint closing
    cdef int kind
    cdef list out = [], parents = [NO_CONTAINER], open_ids = [0], open_kinds = [-1]
    while True:
        at = PyUnicode_FindChar(html, "<", at, n, 1)
        if at < 0 or at + 1 >= n:
            break
        start = at
        at += 1
        closing = html[at] == "/"
        if closing:
            at += 1
        name_end = at
        while name_end < n and name_end - at <= LONGEST_NAME:
            ch = html[name_end]
            if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "1" <= ch <= "6"):
                break
            name_end += 1
        if name_end == at or name_end >= n or name_end - at > LONGEST_NAME:
            continue
        ch = html[name_end]
        if not (ch == "/" or ch == ">" or is_tag_space(ch)):
            continue
        kind = tag_kind(html, at, name_end - at)
        if kind == NOT_MARKED:
            continue
        end = PyUnicode_FindChar(html, ">", name_end, n, 1)
        if end < 0:
            break  # no tag is closed from here on
        at = end + 1
        if kind == LINK:
            if closing:
                out.append(html[last:start])
                out.append("\ue001")
                last = start
            else:
                out.append(html[last:at])
                out.append("\ue000")
                last = at
        elif not closing:
            if kind >= 0:
                if len(parents) < MAX_CONTAINERS:
                    parents.append(open_ids[-1])
                open_ids.append(len(parents) - 1)
                open_kinds.append(kind)
            else:
                out.append(html[last:at])
                out.append(("\ue003" if lower_at(html, start + 1) == "h" else "\ue002")
                           + chr(CONTAINER_BASE + <long>open_ids[-1]))
                last = at
        elif kind >= 0:
            for depth in range(len(open_kinds) - 1, 0, -1):  # a stray closing tag closes nothing
                if open_kinds[depth] == kind:
                    del open_ids[depth:], open_kinds[depth:]
                    out.append(html[last:at])
                    out.append("\ue002" + chr(CONTAINER_BASE + <long>open_ids[-1]))
                    last = at
                    break
    if not out:
        return html, parents
    out.append(html[last:])
    return "".join(out), parents


def link_lines(str text, double max_link_share, tag_line):
    """`filters.extract_methods.link_lines_python`, given its MAX_LINK_SHARE and _TAG_LINE."""
    cdef list out = [], headings = []
    cdef long container = NO_CONTAINER, opened
    cdef Py_ssize_t i, n, j, first
    cdef Py_UCS4 ch
    cdef bint heading, has_links, in_link
    cdef long total, linked
    cdef double share
    cdef str line, plain
    cdef list kept
    for line in text.splitlines():
        n = len(line)
        # The block fences: the first one names the container; each goes with the character after it.
        first = -1
        for i in range(n):
            ch = line[i]
            if ch == BLOCK or ch == HEADING:
                first = i
                break
        opened, heading = NO_CONTAINER, False
        if first >= 0:
            heading = line[first] == HEADING
            if first + 1 < n:
                opened = <long>line[first + 1] - CONTAINER_BASE
                if not 0 <= opened < MAX_CONTAINERS:
                    opened = NO_CONTAINER
            kept, i, j = [], first, 0
            while i < n:
                ch = line[i]
                if (ch == BLOCK or ch == HEADING) and i + 1 < n:
                    kept.append(line[j:i])
                    i += 2
                    j = i
                else:
                    i += 1
            kept.append(line[j:])
            line = "".join(kept)
            n = len(line)
        if opened != NO_CONTAINER:
            container = opened
            if not line.strip():
                continue
        has_links = False
        for i in range(n):
            ch = line[i]
            if ch == LINK_OPEN or ch == LINK_CLOSE:
                has_links = True
                break
        if has_links:
            share = link_share(line)
            plain = line.replace("\ue000", "").replace("\ue001", "")
            if share >= max_link_share and not heading:
                continue
        else:
            plain, share = line, 0.0
        if heading:
            plain_stripped = plain.strip()
            if plain_stripped:
                headings.append(plain_stripped)
        elif "<" in plain and tag_line.fullmatch(plain):
            continue
        out.append((plain, share, container))
    return out, frozenset(headings)


def link_share(str line):
    """`filters.extract_fences.link_share_python`."""
    cdef Py_ssize_t i = 0, n = len(line), close
    cdef long total = 0, linked = 0
    cdef Py_UCS4 ch
    if line.find("\ue000") < 0:
        return 0.0
    while i < n:
        ch = line[i]
        if ch == LINK_OPEN:
            close = line.find("\ue001", i + 1)
            if close >= 0:
                while i < close:
                    ch = line[i]
                    if Py_UNICODE_ISALNUM(ch):
                        linked += 1
                        total += 1
                    i += 1
                i = close + 1
                continue
        elif Py_UNICODE_ISALNUM(ch):
            total += 1
        i += 1
    return <double>linked / total if total else 0.0


cdef inline bint nest_tag_at(str html, Py_ssize_t at, Py_ssize_t n, str name):
    # Whether `name` starts at `at`, in any case, followed by whitespace, "/" or ">" (the regex's lookahead).
    cdef Py_ssize_t end = at + len(name)
    cdef Py_UCS4 ch
    if end >= n or not named(html, at, name):
        return False
    ch = html[end]
    return is_tag_space(ch) or ch == "/" or ch == ">"


def nesting_depth(str html):
    """`filters.extract_methods.nesting_depth_python`: the deepest nesting of <div>/<article> tags."""
    cdef Py_ssize_t n = len(html), at = 0, name_at, depth = 0, deepest = 0
    cdef bint closing
    while True:
        at = PyUnicode_FindChar(html, "<", at, n, 1)
        if at < 0:
            return deepest
        name_at = at + 1
        closing = name_at < n and html[name_at] == "/"
        name_at += closing
        if nest_tag_at(html, name_at, n, "div") or nest_tag_at(html, name_at, n, "article"):
            if closing:
                depth = depth - 1 if depth else 0
            else:
                depth += 1
                deepest = max(deepest, depth)
        at += 1


cdef inline bint is_cjk(Py_UCS4 ch):
    # filters/extract_trim.py's _CJK: kana, CJK ideographs, half-width katakana.
    return (0x3040 <= ch <= 0x30FF or 0x3400 <= ch <= 0x4DBF or 0x4E00 <= ch <= 0x9FFF or 0xF900 <= ch <= 0xFAFF
            or 0xFF66 <= ch <= 0xFF9F)


cdef inline bint is_unspaced(Py_UCS4 ch):
    # filters/extract_trim.py's _UNSPACED: Thai and Lao, Burmese, Khmer.
    return 0x0E00 <= ch <= 0x0EFF or 0x1000 <= ch <= 0x109F or 0x1780 <= ch <= 0x17FF


def length_and_words(str line, Py_ssize_t tokens):
    """`filters.extract_trim.length_and_words_python`."""
    cdef Py_ssize_t i, cjk = 0, unspaced = 0
    cdef Py_UCS4 ch
    if line.isascii():
        return len(line), tokens
    for i in range(len(line)):
        ch = line[i]
        if is_cjk(ch):
            cjk += 1
        elif is_unspaced(ch):
            unspaced += 1
    return len(line) + 2 * cjk, tokens + cjk // 2 + unspaced // 5


cdef inline bint is_punct(Py_UCS4 ch):
    # filters/extract_boundary.py's _PUNCT.
    return ch in u".,;:!?()\"'«»“”„、，。；：！？（）"


def line_rows(list lines, list links, keep, str title, list blanks, Py_ssize_t sample_chars, tuple terminal,
              capitals):
    """`filters.extract_boundary.line_features_python` of each line, given its SAMPLE_CHARS, _TERMINAL and
    _CAPITALS."""
    cdef list rows = []
    cdef Py_ssize_t i, n, head_n, tokens, head_tokens, cjk, unspaced_chars, punct, digits, capital, short, run
    cdef long length, words, head_words
    cdef Py_UCS4 ch
    cdef bint unspaced, space
    cdef str line, stripped
    for line, link, blank_before in zip(lines, links, blanks):
        stripped = line.strip()
        n = len(stripped)
        tokens = cjk = unspaced_chars = 0
        space = True
        for i in range(n):
            ch = stripped[i]
            if Py_UNICODE_ISSPACE(ch):
                space = True
                continue
            if space:
                tokens += 1
                space = False
            if ch >= 0x80:
                if is_cjk(ch):
                    cjk += 1
                elif is_unspaced(ch):
                    unspaced_chars += 1
        length = n + 2 * cjk
        words = tokens + cjk // 2 + unspaced_chars // 5
        unspaced = words > 2 * tokens
        if n > sample_chars:
            head_n = sample_chars
            head_words = max(1, _round(words * head_n / <double>n))
        else:
            head_n = n
            head_words = max(1, words)
        head_tokens = punct = digits = capital = short = run = 0
        space = True
        for i in range(head_n):
            ch = stripped[i]
            if Py_UNICODE_ISSPACE(ch):
                if run and run <= 3:
                    short += 1
                run = 0
                space = True
                continue
            if space:
                head_tokens += 1
                space = False
                if stripped[i] in capitals:
                    capital += 1
            run += 1
            if is_punct(ch):
                punct += 1
            elif Py_UNICODE_ISDECIMAL(ch):
                digits += 1
        if run and run <= 3:
            short += 1
        head_tokens = head_tokens or 1
        rows.append([
            math.log1p(length), math.log1p(words), link, float(stripped.endswith(terminal)),
            punct / <double>head_words, digits / <double>max(1, head_n),
            capital / <double>head_tokens if tokens else 0.0,
            0.0 if unspaced or not tokens else short / <double>head_tokens,
            float(unspaced), float(stripped in keep),
            float(n >= 12 and " ".join(stripped.split()).lower() in title),
            float(stripped.startswith("•")), float(blank_before), float(length >= 200 or words >= 30),
        ])
    return rows

