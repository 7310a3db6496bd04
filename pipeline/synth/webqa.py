"""Question/answer pairs that pages already hold, mined without a model.

Many pages are already in the instruction shape: FAQ pages, help centres, interviews, "Q:"/"A:" layouts.
Mining them costs nothing and keeps the page's own human-written answer. Sources, most precise first:

- HTML: schema.org `FAQPage` JSON-LD; `<details><summary>`; `<dt>`/`<dd>`; and a question block that
  stands alone and stands out (a heading, a bold paragraph, a `<dt>`) followed by the blocks that answer
  it, up to the next question or heading. A question followed straight by another question (a table of
  contents) has no answer and yields nothing.
- Extracted text (what the pipeline's shards hold): lines marked `Q:`/`A:` (or Question/Answer), and a
  line that is one question on its own followed by its answer lines. Such question lines are common in
  forums and prose, where what follows is rarely the answer, so unmarked text pairs are kept only on a
  page that calls itself an FAQ and holds at least `min_text_pairs` of them.

Forum subjects ("Re: ..."), questions that do not open with a question word (in HTML: "Need help?"),
answers that open with a fragment (a user name, a date cell) and answers made of links (a table of
contents) are left out: bench/webqa_precision.py measured what each rule bought.

Each pair is `{instruction, input: "", output, method}`; `method` names the rule that found it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

QUESTION_WORDS = ("what", "how", "why", "when", "where", "who", "which", "whom", "whose", "can", "could", "do",
                  "does", "did", "is", "are", "was", "were", "will", "would", "should", "may", "might", "has",
                  "have", "am", "shall")
_QA_MARK = re.compile(r"^\s*(?:Q(?:uestion)?\s*\d*\s*[:.)-]|Q\d+[:.)])\s*(.+)$", re.IGNORECASE)
_A_MARK = re.compile(r"^\s*A(?:nswer)?\s*\d*\s*[:.)-]\s*(.*)$", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_FAQ_SIGNAL = re.compile(r"\bFAQs?\b|frequently asked|questions and answers|\bQ ?& ?A\b", re.IGNORECASE)
BLOCK_TAGS = {"p", "div", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "summary",
              "blockquote", "pre", "section", "article", "details", "dl", "ul", "ol", "table", "tr", "form"}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
SKIP_TAGS = {"script", "style", "noscript", "nav", "footer", "header", "select", "option", "button", "svg"}


class WebQAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_question_chars: int = Field(10, ge=1)
    max_question_chars: int = Field(300, ge=10)
    min_answer_chars: int = Field(20, ge=1)
    max_answer_chars: int = Field(3000, ge=50)
    # Unmarked question lines in plain text count only when a page holds at least this many pairs.
    min_text_pairs: int = Field(2, ge=1)
    max_pairs_per_doc: int = Field(50, ge=1)
    use_html: bool = True  # mine an `html` column when the documents have one


@dataclass
class Block:
    text: str
    question: bool  # one question on its own
    marked: bool  # stands out: a heading, bold, a <dt> or <summary>
    heading: bool
    links: bool = False  # mostly link text: navigation or a table of contents


def clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def is_question(text: str, p: WebQAParams) -> bool:
    """One question sentence: ends with '?', has no other sentence end before it, and is of question length."""
    text = text.strip().strip('"\'“”‘’').strip()
    if text.lower().startswith(("re:", "re :", "aw:", "fwd:")):
        return False  # a forum reply's subject line
    if not (p.min_question_chars <= len(text) <= p.max_question_chars) or not text.endswith("?"):
        return False
    body = text[:-1]
    if re.search(r"[.!?]\s+[A-Z]", body) and body.count("?") == 0:
        return False  # a statement, then a question: prose, not a question line
    first = re.sub(r"^[\W\d_]+", "", text).split(" ", 1)[0].lower()
    return first in QUESTION_WORDS or text[:1].isupper() or text[:1].isdigit()


def _pair(question: str, answer_parts: list[str], method: str, p: WebQAParams) -> dict[str, Any] | None:
    question = clean(_QA_MARK.sub(r"\1", question))
    answer = ""
    first = clean(answer_parts[0]) if answer_parts else ""
    if len(first.split()) < 4 and not first.endswith((".", "!")):
        return None  # an answer opening with a fragment is a user name, a date, a table cell
    for part in answer_parts:
        part = clean(_A_MARK.sub(r"\1", part)) if not answer else clean(part)
        if not part:
            continue
        if answer and len(answer) + len(part) > p.max_answer_chars:
            break
        answer = f"{answer}\n{part}" if answer else part
    if len(answer) < p.min_answer_chars or len(answer) > p.max_answer_chars:
        return None
    if not (p.min_question_chars <= len(question) <= p.max_question_chars):
        return None
    return {"instruction": question, "input": "", "output": answer, "method": method}


# -- plain text --------------------------------------------------------------------------------

def mine_text(text: str, p: WebQAParams | None = None) -> list[dict[str, Any]]:
    """Pairs from extracted text: Q:/A: markers, and (on list-shaped pages) standalone question lines."""
    p = p or WebQAParams()
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    marked = _mine_marked(lines, p)
    if marked:
        return marked[: p.max_pairs_per_doc]
    pairs = []
    i = 0
    while i < len(lines):
        if not is_question(lines[i], p):
            i += 1
            continue
        j = i + 1
        answer: list[str] = []
        while j < len(lines) and not is_question(lines[j], p):
            # A short line without an end mark after some answer is the next section's title.
            if answer and len(lines[j].split()) <= 4 and not lines[j].endswith((".", "!", ":", ")")):
                break
            answer.append(lines[j])
            j += 1
        pair = _pair(lines[i], answer, "text_question", p) if answer else None
        if pair:
            pairs.append(pair)
        i = j
    if len(pairs) < p.min_text_pairs or not _FAQ_SIGNAL.search(text):
        return []
    return pairs[: p.max_pairs_per_doc]


def _mine_marked(lines: list[str], p: WebQAParams) -> list[dict[str, Any]]:
    pairs = []
    i = 0
    while i < len(lines):
        q = _QA_MARK.match(lines[i])
        if not q or not _A_MARK.match(lines[i + 1] if i + 1 < len(lines) else ""):
            i += 1
            continue
        j = i + 1
        answer = []
        while j < len(lines) and not _QA_MARK.match(lines[j]):
            answer.append(lines[j])
            j += 1
        pair = _pair(q.group(1), answer, "qa_marker", p)
        if pair:
            pairs.append(pair)
        i = j
    return pairs


# -- HTML ----------------------------------------------------------------------------------------

def _json_ld(tree: Any, p: WebQAParams) -> list[dict[str, Any]]:
    pairs = []
    for script in tree.xpath('//script[@type="application/ld+json"]'):
        try:
            data = json.loads(script.text or "")
        except (json.JSONDecodeError, TypeError):
            continue
        stack = data if isinstance(data, list) else [data]
        while stack:
            node = stack.pop(0)
            if isinstance(node, list):
                stack.extend(node)
                continue
            if not isinstance(node, dict):
                continue
            stack.extend(v for k, v in node.items() if k in ("@graph", "mainEntity"))
            if node.get("@type") == "Question":
                answer = node.get("acceptedAnswer") or node.get("suggestedAnswer") or {}
                answer = answer[0] if isinstance(answer, list) and answer else answer
                text = answer.get("text", "") if isinstance(answer, dict) else ""
                from lxml import html as lxml_html

                text = lxml_html.fromstring(f"<div>{text}</div>").text_content() if text.strip() else ""
                pair = _pair(str(node.get("name", "")), [text], "json_ld", p)
                if pair:
                    pairs.append(pair)
    return pairs


def _is_marked(el: Any) -> bool:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag in HEADINGS or tag in ("dt", "summary"):
        return True
    if "bold" in (el.get("style") or "").replace(" ", "").lower():
        return True
    own = clean(el.text_content())
    strong = "".join(clean(s.text_content()) for s in el.iter("strong", "b"))
    return bool(own) and len(strong.replace(" ", "")) >= 0.9 * len(own.replace(" ", ""))


def _blocks(tree: Any, p: WebQAParams) -> list[Block]:
    """Leaf block elements in document order, with <br><br> splitting a block into paragraphs."""
    out: list[Block] = []
    for el in tree.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag not in BLOCK_TAGS or any(isinstance(c.tag, str) and c.tag in BLOCK_TAGS for c in el.iterdescendants()):
            continue
        if any(isinstance(a.tag, str) and a.tag in SKIP_TAGS for a in el.iterancestors()):
            continue
        marked, heading = _is_marked(el), tag in HEADINGS
        for br in el.iter("br"):
            br.tail = "\n" + (br.tail or "")
        parts = [clean(x) for x in re.split(r"\n\s*\n", el.text_content())]
        link_chars = sum(len(clean(a.text_content())) for a in el.iter("a"))
        links = link_chars >= 0.8 * max(1, sum(map(len, parts)))
        for part in parts:
            if part:
                out.append(Block(part, is_question(part, p), marked, heading, links))
    return out


def mine_html(html: str, p: WebQAParams | None = None) -> list[dict[str, Any]]:
    """Pairs from a page's HTML (see the module docstring for the rules)."""
    from lxml import etree
    from lxml import html as lxml_html

    p = p or WebQAParams()
    try:
        tree = lxml_html.fromstring(html)
    except (etree.ParserError, ValueError):
        return []
    pairs = _json_ld(tree, p)
    for el in list(tree.iter(*SKIP_TAGS)):
        el.drop_tree()
    seen = {pair["instruction"] for pair in pairs}
    blocks = _blocks(tree, p)
    i = 0
    while i < len(blocks) and len(pairs) < p.max_pairs_per_doc:
        block = blocks[i]
        opener = re.sub(r"^[\W\d_]+", "", block.text).split(" ", 1)[0].lower()
        if not (block.question and block.marked and opener in QUESTION_WORDS):
            i += 1
            continue
        j = i + 1
        answer = []
        while j < len(blocks) and not blocks[j].heading and not (blocks[j].question and blocks[j].marked):
            if (blocks[j].marked and answer) or blocks[j].links:  # the next section, or navigation
                break
            answer.append(blocks[j].text)
            j += 1
        pair = _pair(block.text, answer, "html_question", p) if answer else None
        if pair and pair["instruction"] not in seen:
            seen.add(pair["instruction"])
            pairs.append(pair)
        i = j
    return pairs or mine_text("\n".join(b.text for b in blocks), p)


def mine(doc: dict[str, Any], p: WebQAParams | None = None) -> list[dict[str, Any]]:
    """Pairs for one document: from its `html` when it has one (and `use_html`), else from its `text`."""
    p = p or WebQAParams()
    if p.use_html and doc.get("html"):
        return mine_html(doc["html"], p)
    return mine_text(doc.get("text") or "", p)
