"""The edge trim: which lines of the extracted text are the article, and which are the page around it.

resiliparse's main-content pass keeps menus, share bars, footers, cookie notices, dates and bylines at the
edges of the text; `trim_boilerplate` cuts them by how the lines read. With `boundary: model` (the default)
the trim's verdict is a feature of the learned boundary (`filters/extract_boundary.py`), which decides; with
`boundary: rules` the trim decides alone. Standard library only, as the extraction child
process imports it (`filters/extract_methods.py`).
"""

from __future__ import annotations

import html as html_lib
import re

if __package__:
    from filters.extract_fences import compiled
else:  # imported by the extraction child, run as a script from filters/
    from extract_fences import compiled

# Page furniture that reads like text: cookie notices and share counters never anchor the article, and the
# edge trim stops at them; dates, bylines and photo credits above the first sentence are metadata, not the
# article. The words are English, German, French, Spanish, Portuguese and Polish.
_COOKIE = re.compile(r"\bcookies?\b", re.I)
_COOKIE_NOTICE = re.compile(
    r"website|webseite|site|browser|consent|einwillig|zustimm|akzept|accept|agree|datenschutz|privacy|experience|"
    r"politique|pol[ií]tica|utiliz|utilis|verwend|nutz|używa|korzyst|polityk|navega|privacidad", re.I)
_COUNTER = re.compile(r"\d[\d.,]*\s*[kKmM]?\s*(?:shares?|likes?|comments?|kommentare?|views?|aufrufe|partages|"
                      r"compartid[oa]s|komentarz\w*|udostępnie\w*)", re.I)
# Month names as whole words ("4 Maiskolben" and "2 Marshmallows" are ingredients, not dates).
_MONTHS = "|".join("""
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec
    januar jänner februar märz mär mai juni juli oktober okt dezember dez
    janvier janv février févr mars avril avr juin juillet juil août septembre octobre décembre déc
    enero ene febrero marzo abril mayo junio julio agosto septiembre setiembre octubre noviembre diciembre dic
    janeiro fevereiro março maio junho julho setembro outubro novembro dezembro
    styczeń stycznia luty lutego marzec marca kwiecień kwietnia maj maja czerwiec czerwca lipiec lipca
    sierpień sierpnia wrzesień września październik października listopad listopada grudzień grudnia
""".split())
_MONTH = rf"(?:{_MONTHS})\.?(?!\w)"
_DATE = re.compile(r"\b\d{1,2}\.\s?\d{1,2}\.\s?\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|"
                   rf"\b\d{{1,2}}:\d{{2}}\b|\b{_MONTH}\s*\d{{1,4}}\b|\b\d{{1,2}}\.?\s+(?:de\s+)?{_MONTH}", re.I)
# "By"/"Von" open a byline only before a capital ("Von der Leyen will ..." is a subtitle); a credit may stand in
# brackets ("(Foto: dpa)").
_BYLINE = re.compile(r"(?i:by|von|par|por|przez)\s+[A-ZÀ-ÞĄĆĘŁŃÓŚŹŻ]|(?i:autor|author|posted|published|veröffentlicht|"
                     r"aktualisiert|updated|stand|erstellt|publié|publicado|opublikowano)\b|[(\[]?\s*(?i:foto|fotos|bild|"
                     r"bildquelle|quelle|photo|image|credit|crédit|fuente|źródło|fot)\b\.?\s*:")
# Reading-time notes ("Lesezeit: 3 Min.", "5 min read") are metadata too.
_READING_TIME = re.compile(r"(?:lesezeit|lesedauer|reading time|read time|tempo de leitura|tiempo de lectura|"
                           r"temps de lecture|czas czytania)\b|\d+\s*min(?:ute)?s?\.?\s+read\b", re.I)
MAX_METADATA_WORDS = 10
# Bylines and credits without a marker are names only: every word capitalised, no digit, no sentence end
# ("Tom Davies Associated Press", "Jupiterimages, Getty Images/Creatas RF"). A German subtitle has a verb or an
# article in lower case; an ingredient line opens with a number. In lower case a name line may hold only
# joiners, particles and the agencies that write themselves so (dpa, epd, kna, sid).
_NAME_SEPARATORS = re.compile(r"[,/|·•–—]")
_NAME_LOWER = frozenset({"and", "und", "&", "et", "y", "e", "i", "of", "von", "van", "de", "der", "den", "del",
                         "da", "do", "dos", "du", "la", "le", "al", "el", "bin", "ibn", "dpa", "epd", "kna", "sid",
                         "afp", "apa", "ots"})
MAX_NAME_WORDS = 8
# Labels of the sections around an article, as whole lines, in English, German, French, Spanish, Polish and
# Russian. After an end label comes what is not the article (other stories, comments, the author's box); the
# others (tags, share bars, newsletters, ads) stop the bottom edge but may also stand inside an article.
_END_LABEL = re.compile(r"""(?x)
    related(?:\ (?:articles?|stories|posts|content|news|links|reading))? | more\ (?:on|in|from|about)\b.*
    | more\ (?:stories|news|articles|like\ this|to\ read) | you\ (?:may|might)\ also\ (?:like|enjoy)
    | (?:also\ )?recommended(?:\ for\ you)? | (?:most\ )?popular(?:\ (?:on|in)\b.*)? | most\ (?:read|viewed|shared)
    | about\ the\ authors? | (?:\d+\ )?comments? | leave\ a\ (?:comment|reply)
    | mehr\ (?:zum\ thema|zu\ diesem\ thema|aus\b.*|von\b.*) | auch\ interessant
    | das\ könnte\ sie\ (?:auch\ )?interessieren | weitere\ (?:artikel|themen|nachrichten|beiträge|meldungen)
    | ähnliche\ (?:artikel|beiträge|themen) | meistgelesen(?:e\ artikel)? | (?:\d+\ )?kommentare?
    | über\ (?:den|die)\ autor(?:in)? | zu(?:r|m)\ autor(?:in)?
    | sur\ le\ même\ sujet | articles?\ similaires | commentaires? | à\ propos\ de\ l'auteur | (?:les\ )?plus\ lus
    | te\ puede\ interesar | noticias\ relacionadas | más\ noticias | comentarios | sobre\ el\ autor | lo\ más\ leído
    | zobacz\ (?:także|też) | komentarze | podobne\ artykuły | polecane | najczęściej\ czytane | материалы\ по\ теме
""")
_SECTION_LABEL = re.compile(r"""(?x)
    read\ (?:more|next|also) | trending(?:\ now)? | latest\ (?:news|stories|posts|articles) | tags
    | share(?:\ this)?(?:\ (?:story|article|post))? | share\ (?:on|via)\ \S+ | sharing\ is\ caring
    | sponsored(?:\ links|\ content)?
    | (?:sign\ up\ for\ (?:our|the)\ )?newsletter | subscribe | follow\ us(?:\ on\b.*)?
    | lesen\ sie\ (?:auch|mehr) | empfehlungen | themen | schlagw(?:ö|o)rte(?:r)? | (?:artikel\ )?teilen
    | (?:à\ )?lire\ aussi | partager | lee\ también | compartir | czytaj\ (?:także|też) | udostępnij
    | читайте\ также | теги
""")
# Lines that are only an ad slot's label or a control ("Advertisement", "Anzeige", "Back to top") are never text,
# wherever they stand.
_CHROME_LINE = re.compile(r"""(?x)
    advertisement | advert | ad | anzeige | werbung | publicité | publicidad | reklama | реклама
    | story\ continues\ below(?:\ advertisement)? | (?:artikel|text)\ wird\ unter\ der\ anzeige\ fortgesetzt
    | back\ to\ top | nach\ oben | zurück\ nach\ oben | retour\ en\ haut | volver\ arriba | do\ góry
""")
MAX_LABEL_CHARS = 80  # a longer line is never a label
# Metadata under the lead paragraph: at most this many lines (a byline, a date, a credit, a reading time).
MAX_UNDER_LEAD_LINES = 4
# An end label ends the article only where less than this share of the text before it follows it.
MAX_AFTER_END_LABEL = 0.5
# A heading shorter than this is not taken for the page's title ("Home", "News" are in many <title>s).
MIN_TITLE_CHARS = 12
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.I | re.S)
_OG_TITLE = re.compile(r"""<meta[^>]+property=["']og:title["'][^>]+content=["']([^"']*)""", re.I)
# Chinese and Japanese are written without spaces: a word is about two characters, so each character of
# theirs counts half a word, and weighs three in a line's length (200 letters of a spaced script hold about
# as much as 67 Han characters). Thai, Lao, Khmer and Burmese words run about five characters.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_UNSPACED = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
_TERMINAL = (".", "!", "?", '"', "”", "“", "»", "«", "。", "！", "？", ":", ";", ")", "’", "'", "…")


def word_count(line: str) -> int:
    """Words in a line, in scripts with spaces and without (see _CJK)."""
    return length_and_words(line, len(line.split()))[1]


def length_and_words_python(line: str, tokens: int) -> tuple[int, int]:
    """`weighted_length` and `word_count` of a line that splits into `tokens` at whitespace, with one pass of
    each script's regex."""
    if line.isascii():
        return len(line), tokens
    cjk = len(_CJK.findall(line))
    return len(line) + 2 * cjk, tokens + cjk // 2 + len(_UNSPACED.findall(line)) // 5


# Compiled where the install could build it (filters/extract_speedups.pyx): one pass over the line.
length_and_words = compiled.length_and_words if compiled else length_and_words_python


def weighted_length(line: str) -> int:
    """A line's length with each Chinese or Japanese character weighing three."""
    return length_and_words(line, 0)[0]


def _is_prose(line: str, min_words: int) -> bool:
    length, words = length_and_words(line, len(line.split()))
    return length >= 200 or (words >= min_words and line.rstrip().endswith(_TERMINAL))


def _is_sentence(line: str) -> bool:
    """Three words or more ending in a full stop, a question or an exclamation mark ("On May 3 it rained.")."""
    stripped = line.rstrip()
    return stripped.endswith((".", "!", "?", "。", "！", "？")) and word_count(stripped) >= 3


def is_furniture(line: str) -> bool:
    """A cookie notice or a share/like/comment counter: text that belongs to the site, not to the article."""
    stripped = line.strip()
    if ("ookie" in stripped or "OOKIE" in stripped) and len(stripped) < 600:  # substring tests cost ~nothing
        return bool(_COOKIE.search(stripped) and _COOKIE_NOTICE.search(stripped))
    return stripped[:1].isdigit() and bool(_COUNTER.fullmatch(stripped))


def _label(line: str) -> str:
    """The line as a label is written in the patterns ("" for a line too long to be one)."""
    return " ".join(line.lower().rstrip(":.!…»›>→ ").split()) if len(line) < MAX_LABEL_CHARS else ""


def is_chrome(line: str) -> bool:
    """An ad slot's label or a page control on a line of its own ("Advertisement", "Back to top")."""
    return 1 < len(line) < MAX_LABEL_CHARS and bool(_CHROME_LINE.fullmatch(_label(line)))


def is_end_label(line: str) -> bool:
    """A label after which the page shows other pages or its readers: related stories, comments, the author."""
    return 3 < len(line) < MAX_LABEL_CHARS and bool(_END_LABEL.fullmatch(_label(line)))


def is_section_label(line: str) -> bool:
    """The label of any section around the article (an end label, or "Tags", "Share", "Newsletter", ...)."""
    label = _label(line)
    return bool(_END_LABEL.fullmatch(label) or _SECTION_LABEL.fullmatch(label))


def is_metadata(line: str) -> bool:
    """A short line with a date, a time or a reading time, one that opens like a byline or a photo credit, or
    one made of names only."""
    stripped = line.strip()
    return word_count(stripped) <= MAX_METADATA_WORDS and bool(
        _BYLINE.match(stripped) or _DATE.search(stripped) or _READING_TIME.search(stripped) or is_names(stripped))


def is_names(line: str) -> bool:
    """Two to eight capitalised words (names may be joined by "and", "von", "de", ...), no digit, no sentence end.
    Not all in capitals: that is a dateline ("BAAR, SWITZERLAND"), which opens the article's first sentence."""
    words = _NAME_SEPARATORS.sub(" ", line).split()
    return (2 <= len(words) <= MAX_NAME_WORDS and words[0][0].isupper() and not line.endswith(_TERMINAL)
            and not line.isupper()
            and not any(ch.isdigit() for ch in line) and all(w[0].isupper() or w in _NAME_LOWER for w in words))


def page_title(html: str) -> str:
    """The page's <title> and og:title, lower-cased and whitespace collapsed, to find its title among the lines.

    Found by substring first and matched there: a regex search through the page costs more than the whole trim."""
    found = []
    at = html.find("<title")
    at = at if at >= 0 else html.find("<TITLE")
    if at >= 0 and (title := _TITLE.match(html, at)):
        found.append(title.group(1))
    at = html.find("og:title")
    if at >= 0 and (og_title := _OG_TITLE.match(html, max(0, html.rfind("<meta", 0, at)))):
        found.append(og_title.group(1))
    return " ".join(html_lib.unescape(" ".join(found)).split()).lower()


def trim_boilerplate(text: str, min_words: int = 8, keep: frozenset[str] = frozenset(), title: str = "") -> str:
    """Cut menus, share bars and footers at both ends of extracted text, keeping short real lines.

    The prose span runs from the first to the last line that reads like prose (`min_words` words ending
    like a sentence, or 200 characters for scripts without spaces), page furniture (cookie notices, share
    counters) and the page's own headings aside: a long headline is not yet the article. The bottom is
    `article_end`, the top `article_start`. What lies beyond is cut, and so are the dates, bylines and credits
    (`is_metadata`) above the second prose line when only a few lines part it from the first: news pages put
    them under the lead paragraph as often as above it.
    """
    lines = text.splitlines()
    kept = trim_kept(lines, min_words, keep, title)
    return text if kept is None else "\n".join(lines[i] for i in kept).strip("\n")


def trim_kept(lines: list[str], min_words: int = 8, keep: frozenset[str] = frozenset(),
              title: str = "") -> list[int] | None:
    """The indices of the lines `trim_boilerplate` keeps, or None where it finds no prose (it keeps all)."""
    furniture = [is_furniture(line) and line.strip() not in keep for line in lines]
    prose_like = [not furniture[i] and _is_prose(line, min_words) for i, line in enumerate(lines)]
    prose = [i for i, line in enumerate(lines) if prose_like[i] and line.strip() not in keep]
    prose = prose or [i for i, is_prose in enumerate(prose_like) if is_prose]  # a page of long headings only
    if not prose:
        return None
    first = prose[0]
    end = article_end(lines, prose, furniture, keep)
    start = article_start(lines, first, furniture, keep, title)
    lead_end = first
    if len(prose) > 1 and prose[1] <= end and sum(
            1 for line in lines[first + 1 : prose[1]] if line.strip()) <= MAX_UNDER_LEAD_LINES:
        lead_end = prose[1]
    head = [i for i in range(start, lead_end) if lines[i].strip() in keep or prose_like[i]
            or (i > first and _is_sentence(lines[i])) or not is_metadata(lines[i])]
    return [i for i in [*head, *range(lead_end, end + 1)] if not is_chrome(lines[i])]


def article_end(lines: list[str], prose: list[int], furniture: list[bool], keep: frozenset[str]) -> int:
    """Where the article ends, given its prose lines `prose`.

    A label that closes an article ("Related stories", "Comments", "Mehr zum Thema") ends it where the prose
    after it is less than half the prose before it: the teasers under it read like prose too. Below the last
    prose line the article grows over the lines that look like content (headings, list items, dialogue: two
    words or more, a sentence end, or a line in `keep`, the page's own headings) until the first other
    one-word line ("Share", "Menu"), piece of furniture or section label ("Tags", "Newsletter", "Teilen").
    """
    first, end = prose[0], prose[-1]
    labels = [i for i in range(first + 1, end) if is_end_label(lines[i])]
    for i in labels:
        before = sum(len(lines[p]) for p in prose if p < i)
        if sum(len(lines[p]) for p in prose if p > i) < MAX_AFTER_END_LABEL * before:
            end = max(p for p in prose if p < i)
            break
    while (end + 1 < len(lines) and not furniture[end + 1] and _content_like(lines[end + 1], keep)
           and not is_section_label(lines[end + 1])):
        end += 1
    return end


def article_start(lines: list[str], first: int, furniture: list[bool], keep: frozenset[str], title: str) -> int:
    """Where the article starts above its first prose line `first`.

    Site names, dates, bylines and breadcrumbs sit there, so the start grows only over sentences, list items
    and headings, unless a heading of the page stands above the content-like lines (two words or more, or a
    sentence end): a heading starts the article, and the lines below it (a subtitle, an ingredient list) are
    its own, though the caller still drops the dates, bylines and credits among them. Of several headings the
    one found in the page's <title> wins, so that a site name or a section label above the headline goes.
    """
    start = lenient = first
    while lenient > 0 and not furniture[lenient - 1] and _content_like(lines[lenient - 1], keep):
        lenient -= 1
    while start > 0 and not furniture[start - 1] and _sentence_like(lines[start - 1], keep):
        start -= 1
    headed = [i for i in range(lenient, first) if lines[i].strip() in keep]
    titled = [i for i in headed if len(lines[i].strip()) >= MIN_TITLE_CHARS and " ".join(lines[i].split()).lower()
              in title]
    if titled:
        return max(titled, key=lambda i: len(lines[i].strip()))
    return min(headed[0], start) if headed else start


def _sentence_like(line: str, keep: frozenset[str]) -> bool:
    """Blank lines, headings of the page, list items, and lines of two words or more that end a sentence."""
    stripped = line.strip()
    return (not stripped or stripped in keep or stripped.startswith("•")
            or (stripped.endswith(_TERMINAL) and word_count(stripped) >= 2))


def _content_like(line: str, keep: frozenset[str]) -> bool:
    """Blank lines, headings of the page, and lines of two words or more or that end like a sentence."""
    words = len(line.split())  # a CJK menu item is one "word" here: a CJK sentence passes by its ending
    return (not words or words >= 2 or line.strip() in keep
            or (line.rstrip().endswith(_TERMINAL) and len(line.strip()) > 3))
