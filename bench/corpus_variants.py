"""Variants of a real HTML page for the benchmark corpus: the same markup, new text.

bench/build_corpus.py repeats a few hundred real pages to reach tens of thousands of records. Repeated
verbatim, the copies would let every cache on the way (trafilatura's duplicate-text cache, a parse
cache, a language-ID cache) answer from memory, so a throughput figure would measure the caches. A
variant keeps every tag, attribute, script and comment of its page, and changes only the visible text:

  * paragraph exchange: each prose paragraph (a `<p>` holding 40+ characters of text) is, with
    probability `EXCHANGE_P`, replaced by a prose paragraph of another page of the same group (same
    source, same language), inline markup included;
  * sentence order: the whole sentences of each text run of a block are put in a new order;
  * names: a capitalized word in mid-sentence (after a word, a digit or a comma) becomes another such
    word of the same language, drawn from the corpus' own pages; one mapping per variant, so a name
    reads the same in the title, the headings and the text;
  * numbers: each run of ASCII digits becomes other random digits of the same length (a leading zero
    stays a zero, a leading non-zero digit stays non-zero); one mapping per variant as well;
  * word swaps, last: a block of 20+ characters whose text the corpus already holds (a one-sentence
    paragraph without names or numbers) gets two of its inner words swapped (two letters in scripts
    written without spaces, or after six tries) until its text is new.

Titles and headings keep their sentence order, and a heading whose words are swapped has them swapped
in the <title> too, so that an extractor that looks for the title among the headings still finds it.
Character references (`&amp;`, `&#8217;`) are never changed. Every choice comes from the `random.Random`
the caller passes, so a seed gives the same variant.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

EXCHANGE_P = 0.5
MIN_BLOCK_CHARS = 40  # a shorter <p> is not prose (a date, a caption): it is not exchanged
# A block this long or longer must not repeat a block written before (resiliparse makes a paragraph of
# 40 characters out of a 37-character list item, numbering it "1. "); a shorter one (a menu item) may.
MIN_CHECKED_CHARS = 20
SWAP_TRIES = 12

# Markup that is never text: comments, doctype, raw-text elements whole, and tags.
_MARKUP = re.compile(
    r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<!\w[^>]*>|<\?[^>]*>"
    r"|<(script|style|textarea|noscript|template|svg|math)\b[^>]*>.*?</\1\s*>"
    r"|</?[a-zA-Z][\w:-]*(?:\s[^>]*)?/?>",
    re.S | re.I)
_TAG_NAME = re.compile(r"<(/?)([a-zA-Z][\w:-]*)")
# Elements that start a new line of text: a run of text between two of them is one block.
BLOCK_TAGS = frozenset(
    "address article aside blockquote body br caption center dd details dialog div dl dt fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 head header hgroup hr html li main nav ol option p pre section select "
    "summary table tbody td tfoot th thead title tr ul".split())
NAMES_ONLY = frozenset("title h1 h2 h3 h4 h5 h6".split())
_ENTITY = re.compile(r"(&#?[0-9A-Za-z]+;)")
_UPPER = "".join(c for c in map(chr, range(0x250)) if c.isupper()) + "".join(
    c for c in map(chr, range(0x370, 0x530)) if c.isupper())
# A capitalized word after a word and a space, or after a comma or semicolon and a space.
_MID_NAME = re.compile(rf"(?<=[^\W_] |[,;] )[{_UPPER}]\w+")
_DIGITS = re.compile(r"[0-9]+")
# Sentence ends: two word characters then . ! ? and a space (so "U.S. officials" and "J. Smith" hold),
# or a CJK full stop.
_SENTENCE_SPLIT = re.compile(r"((?<=\w\w[.!?])\s+(?=\S)|(?<=[。！？])(?=\S))")


@dataclass
class Block:
    """A run of text between two block-level tags: text parts and the inline markup between them."""

    parts: list[str]
    is_text: list[bool]
    element: str  # the block-level element it opens in (p, li, h2, ...)
    prose: bool = False  # a <p> of MIN_BLOCK_CHARS or more, closed by </p>: exchangeable
    inert: bool | None = None  # nothing to vary (short, no names, no digits): known after the first variant

    def text(self) -> str:
        return " ".join("".join(p for p, t in zip(self.parts, self.is_text, strict=True) if t).split())


@dataclass
class Template:
    """A page cut into markup that stays as it is (str) and blocks of text that vary."""

    pieces: list[str | Block]
    group: str
    language: str
    prose: list[Block] = field(default_factory=list)


def template(html: str, group: str, language: str) -> Template:
    pieces: list[str | Block] = []
    static: list[str] = []
    block: Block | None = None
    element = ""

    def close() -> None:
        nonlocal block
        if block is not None:
            pieces.append(block)
            block = None

    def markup(chunk: str, boundary: bool) -> None:
        if boundary or block is None:
            close()
            static.append(chunk)
        else:
            block.parts.append(chunk)
            block.is_text.append(False)

    def text(chunk: str) -> None:
        nonlocal block
        if block is None:
            if not chunk.strip():
                static.append(chunk)
                return
            pieces.append("".join(static))
            static.clear()
            block = Block([], [], element)
        block.parts.append(chunk)
        block.is_text.append(True)

    pos = 0
    for m in _MARKUP.finditer(html):
        if m.start() > pos:
            text(html[pos:m.start()])
        tag = _TAG_NAME.match(m.group())
        name = tag.group(2).lower() if tag and not m.group(1) else ""
        if name in BLOCK_TAGS:
            if block is not None and name == "p" and tag.group(1) and block.element == "p" \
                    and len(block.text()) >= MIN_BLOCK_CHARS:
                block.prose = True
            if not tag.group(1):
                element = name
        markup(m.group(), name in BLOCK_TAGS)
        pos = m.end()
    if pos < len(html):
        text(html[pos:])
    close()
    pieces.append("".join(static))
    pieces = [p for p in pieces if p != ""]
    return Template(pieces, group, language, [p for p in pieces if isinstance(p, Block) and p.prose])


def mid_sentence_names(blocks: Iterable[Block]) -> set[str]:
    """The capitalized mid-sentence words of some blocks: the pool a language's names are drawn from."""
    names = set()
    for block in blocks:
        for part, is_text in zip(block.parts, block.is_text, strict=True):
            if is_text:
                names.update(w for w in _MID_NAME.findall(part) if not w.isupper())
    return names


def key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def checked_keys(page: Template) -> Iterable[bytes]:
    """The keys of a page's blocks that variants must not repeat."""
    texts = (p.text() for p in page.pieces if isinstance(p, Block))
    return (key(t) for t in texts if len(t) >= MIN_CHECKED_CHARS)


class Variant:
    """One variant of one page: its random choices, and the name and number mappings all its blocks share."""

    def __init__(self, rng: random.Random, names: list[str]):
        self.rng, self.names = rng, names
        self.name_map: dict[str, str] = {}
        self.digit_map: dict[str, str] = {}

    def render(self, page: Template, pools: dict[str, list[Block]], seen: set[bytes]) -> str:
        out, titles = [], []
        self.heading_edits: list[tuple[str, str]] = []
        for piece in page.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            if piece.prose and self.rng.random() < EXCHANGE_P:
                piece = self.rng.choice(pools[page.group])
            if piece.element == "title":
                titles.append(len(out))
            out.append(self.block(piece, seen))
        for i in titles:  # a heading whose words were swapped reads the same in the <title>
            for before, after in self.heading_edits:
                out[i] = out[i].replace(before, after)
        return "".join(out)

    def block(self, block: Block, seen: set[bytes]) -> str:
        if block.inert is None:
            texts = [p for p, t in zip(block.parts, block.is_text, strict=True) if t]
            block.inert = len(block.text()) < MIN_CHECKED_CHARS and not any(
                _DIGITS.search(t) or _MID_NAME.search(t) for t in texts)
        if block.inert:  # a menu item, a label: the same in every copy
            return "".join(block.parts)
        names_only = block.element in NAMES_ONLY
        # Text runs between inline tags start or end mid-sentence, except the block's first and last.
        runs = [i for i, (p, t) in enumerate(zip(block.parts, block.is_text, strict=True)) if t and p.strip()]
        parts = [self.text(p, names_only, i == runs[0], i == runs[-1]) if t else p
                 for i, (p, t) in enumerate(zip(block.parts, block.is_text, strict=True))]
        varied = Block(list(parts), block.is_text, block.element)
        text = varied.text()
        if len(text) < MIN_CHECKED_CHARS or block.element == "title":
            return "".join(parts)
        for attempt in range(SWAP_TRIES):
            if key(text) not in seen:
                break
            self.swap_words(varied, letters=attempt >= SWAP_TRIES // 2)
            text = varied.text()
        seen.add(key(text))
        if names_only:
            self.heading_edits += [(a, b) for a, b in zip(parts, varied.parts, strict=True) if a != b]
        return "".join(varied.parts)

    def text(self, part: str, names_only: bool, starts: bool, ends: bool) -> str:
        if not names_only:
            part = self.reorder_sentences(part, starts, ends)
        if "&" not in part:
            return self.names_and_numbers(part)
        return "".join(p if i % 2 else self.names_and_numbers(p) for i, p in enumerate(_ENTITY.split(part)))

    def reorder_sentences(self, part: str, starts: bool, ends: bool) -> str:
        """The sentences of a text run in a new order; a piece of a sentence at either end (the run starts
        or ends at an inline tag) stays where it is."""
        pieces = _SENTENCE_SPLIT.split(part)
        sentences, gaps = pieces[::2], pieces[1::2]
        lo, hi = (0 if starts else 1), (len(sentences) if ends else len(sentences) - 1)
        if hi - lo < 2:
            return part
        # The first sentence keeps the text run's leading space, the last its trailing space.
        lead, trail = sentences[0][:len(sentences[0]) - len(sentences[0].lstrip())], \
            sentences[-1][len(sentences[-1].rstrip()):]
        core = [s.strip() for s in sentences]
        order = list(range(lo, hi))
        while order == sorted(order):
            self.rng.shuffle(order)
        order = [*range(lo), *order, *range(hi, len(core))]
        out = [lead]
        for k, i in enumerate(order):
            out.append(core[i])
            if k < len(gaps):
                out.append(gaps[k])
        return "".join(out) + trail

    def names_and_numbers(self, text: str) -> str:
        if self.names:
            text = _MID_NAME.sub(self._name, text)
        return _DIGITS.sub(self._number, text)

    def _name(self, m: re.Match[str]) -> str:
        word = m.group()
        if word.isupper():
            return word
        if word not in self.name_map:
            self.name_map[word] = self.rng.choice(self.names)
        return self.name_map[word]

    def _number(self, m: re.Match[str]) -> str:
        digits = m.group()
        if digits not in self.digit_map:
            first = "0" if digits[0] == "0" else str(self.rng.randint(1, 9))
            self.digit_map[digits] = first + "".join(str(self.rng.randint(0, 9)) for _ in digits[1:])
        return self.digit_map[digits]

    def swap_words(self, block: Block, letters: bool = False) -> None:
        """Swap two words of the longest text part, not its first (nor its last, of five or more words);
        two letters where the script is written without spaces, or when `letters` (a short heading has
        few orders of its words)."""
        k = max((i for i, t in enumerate(block.is_text) if t), key=lambda i: len(block.parts[i]))
        part = block.parts[k]
        words = part.split(" ")
        at = [i for i, w in enumerate(words) if w][1:]
        at = at[:-1] if len(at) >= 4 else at
        if len(at) >= 2 and not letters:
            i, j = self.rng.sample(at, 2)
            words[i], words[j] = words[j], words[i]
            block.parts[k] = " ".join(words)
            return
        letters = [i for i, c in enumerate(part) if c.isalpha()][1:-1]
        if len(letters) >= 2:
            i, j = sorted(self.rng.sample(letters, 2))
            block.parts[k] = part[:i] + part[j] + part[i + 1:j] + part[i] + part[j + 1:]


def near_copy(html: str, rng: random.Random) -> str:
    """The page with two words swapped in one of its blocks of MIN_BLOCK_CHARS or more: a near duplicate."""
    page = template(html, "", "")
    pieces = [p if isinstance(p, str) else "".join(p.parts) for p in page.pieces]
    long_blocks = [i for i, p in enumerate(page.pieces) if isinstance(p, Block) and len(p.text()) >= MIN_BLOCK_CHARS]
    if long_blocks:
        i = rng.choice(long_blocks)
        block = page.pieces[i]
        edited = Block(list(block.parts), block.is_text, block.element)
        Variant(rng, []).swap_words(edited)
        pieces[i] = "".join(edited.parts)
    return "".join(pieces)
