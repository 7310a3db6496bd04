"""`webqa` on real pages: FAQ pages give their pairs, forums and prose give none, and on pages whose
pairs were judged by hand (tests/fixtures/webqa_judged.jsonl, bench/webqa_precision.py) the miner's
pairs are mostly the good ones and miss none of them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline.synth.webqa import WebQAParams, is_question, mine, mine_html, mine_text
from tests.conftest import SHARED, WARC

JUDGED = Path(__file__).parent / "fixtures" / "webqa_judged.jsonl"
WANTED = {"http://www.archive.org/about/faqs.php", "http://www.archive.org/about/faq.php?faq_id=252",
          "http://www.archive.org/iathreads/forum-display.php?poster=bluedevil", "https://commoncrawl.org/faq"}


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    found = {}
    for path in (WARC / "aut-archiveit" / "example.warc.gz", *sorted((WARC / "dolma-wget").glob("*.warc.gz"))):
        with open(path, "rb") as f:
            for record in ArchiveIterator(f, record_types=WarcRecordType.response):
                url = (record.headers.get("WARC-Target-URI") or "").strip("<>")
                if url in WANTED and url not in found:
                    found[url] = record.reader.read().decode("utf-8", "replace")  # the body: headers parsed
    assert set(found) == WANTED
    return found


def test_an_faq_page_gives_its_questions_with_their_answers(pages):
    pairs = {p["instruction"]: p for p in mine_html(pages["http://www.archive.org/about/faqs.php"])}
    assert len(pairs) >= 45
    wayback = pairs["What is the Internet Archive Wayback Machine?"]
    assert wayback["output"].startswith("The Internet Archive Wayback Machine is a service that allows people")
    assert wayback["method"] == "html_question" and wayback["input"] == ""
    assert pairs["Where does the name come from?"]["output"].startswith("The Wayback Machine is named in reference")
    # The table of contents lists every question as a link: none of them becomes an answer.
    assert not any(p["output"].endswith("?") for p in pairs.values())


def test_a_single_question_page_and_a_text_faq(pages):
    (flac,) = mine_html(pages["http://www.archive.org/about/faq.php?faq_id=252"])
    assert flac["instruction"] == "What are FLAC files and how can I listen to them?"
    assert flac["output"].startswith("FLAC stands for free lossless audio codec.")
    cc = {p["instruction"]: p["output"] for p in mine_html(pages["https://commoncrawl.org/faq"])}
    assert cc["How can I block the Common Crawl CCBot?"].startswith("You configure your robots.txt file")
    assert len(cc) >= 12


def test_forums_and_prose_give_nothing(pages):
    assert mine_html(pages["http://www.archive.org/iathreads/forum-display.php?poster=bluedevil"]) == []
    with gzip.open(SHARED / "cc-text" / "dolma-cc-2019-30" /
                   "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz", "rt") as f:
        docs = [json.loads(line)["text"] for line in f]
    found = [d for d in docs if mine_text(d)]
    assert len(found) <= 3 and len(docs) == 697  # questions in forums and prose are not FAQ pairs
    assert not is_question("Re: How to Delete?", WebQAParams()) and is_question("How do I delete it?", WebQAParams())


@pytest.mark.parametrize("url", ["http://www.archive.org/about/faqs.php", "https://commoncrawl.org/faq"])
def test_the_miner_keeps_its_precision_and_recall_on_hand_judged_pages(pages, url):
    judged = {r["instruction"]: r for r in map(json.loads, JUDGED.read_text().splitlines()) if r["url"] == url}
    good = {q for q, r in judged.items() if r["label"] == "good"}
    # A pair counts as good only with the answer the judge read; a pair nobody judged counts against it.
    mined = mine_html(pages[url])
    right = {p["instruction"] for p in mined
             if p["instruction"] in good and p["output"][:120] == judged[p["instruction"]]["output_start"]}
    assert len(right) / len(mined) >= 0.8, [p["instruction"] for p in mined if p["instruction"] not in right]
    assert len(right) / len(good) >= 0.95, sorted(good - right)


def test_structured_markup_and_marked_text():
    html = """<html><head><script type="application/ld+json">{"@context": "https://schema.org", "@type": "FAQPage",
      "mainEntity": [{"@type": "Question", "name": "Do you ship abroad?", "acceptedAnswer": {"@type": "Answer",
      "text": "<p>Yes, we ship to most countries within ten working days.</p>"}}]}</script></head>
      <body><details><summary>How do I return an item?</summary><p>Send it back within thirty days with the
      receipt and we refund you in full.</p></details><h2>About us</h2><p>We sell books.</p></body></html>"""
    pairs = mine_html(html)
    assert [(p["instruction"], p["method"]) for p in pairs] == [("Do you ship abroad?", "json_ld"),
                                                                ("How do I return an item?", "html_question")]
    assert pairs[0]["output"] == "Yes, we ship to most countries within ten working days."
    text = "Q: Can I pay in cash?\nA: No, only cards are accepted at the box office.\nQ: Is there parking?\n" \
           "A: Yes, the garage next door is open until midnight."
    assert [p["instruction"] for p in mine({"text": text})] == ["Can I pay in cash?", "Is there parking?"]
    assert mine({"text": "", "html": None}) == [] and mine_html("") == []
