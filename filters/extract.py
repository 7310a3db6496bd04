"""HTML text extraction with resiliparse or trafilatura, time-boxed per document.

The default extractor is chosen by `bench/extraction.py` (F1 on the scrapinghub article
pages and documents per second); the README has the table. Each document gets a hard time
limit through SIGALRM in the worker's main thread, which costs nothing per document (datatrove
pays an inter-process round trip per page for the same guarantee), and the HTML is clipped to
`max_html_chars` first so that C-level parsing is bounded too.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pyarrow as pa

from filters.base import Doc, Filter, StepParams, pkg_version

log = logging.getLogger("winnow.extract")

Extractor = Literal["resiliparse", "trafilatura"]


class ExtractParams(StepParams):
    type: Literal["extract"] = "extract"
    extractor: Extractor = "resiliparse"
    timeout_s: float = 5.0
    max_html_chars: int = 2_000_000
    min_text_chars: int = 1
    # resiliparse only: cut non-prose lines at both ends (0.934 -> 0.944 F1, see bench/).
    trim_boilerplate: bool = True
    # trafilatura only: FineWeb ran it with favor_precision.
    favor_precision: bool = True


class ExtractTimeout(BaseException):
    """A BaseException, like KeyboardInterrupt: extractors' own `except Exception` must not swallow it."""


def _on_alarm(signum, frame):
    raise ExtractTimeout()


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ExtractTimeout after `seconds`; a no-op off the main thread, where signals can't go."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Figures, captions, share bars and "related" boxes survive resiliparse's main-content
# heuristic; skipping them lifts F1 on the scrapinghub pages from 0.927 to 0.934.
SKIP_SELECTORS = ["figure", "figcaption", '[class*="caption"]', '[class*="share"]', '[class*="social"]',
                  '[class*="related"]', '[class*="recommend"]']
_TERMINAL = (".", "!", "?", '"', "”", "。", "！", "？", ":", ";", ")", "’", "'")


def resiliparse_text(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True, alt_texts=False, links=False, form_fields=False,
                              noscript=False, comments=False, skip_elements=SKIP_SELECTORS)


def trim_boilerplate(text: str, min_words: int = 8) -> str:
    """Cut the lines before the first and after the last line that reads like prose.

    Menus, bylines, "Read more" and footers cluster at the two ends of extracted text. A prose
    line has `min_words` words and ends like a sentence, or is long (scripts without spaces).
    """
    lines = text.splitlines()
    prose = [i for i, line in enumerate(lines)
             if len(line) >= 200 or (len(line.split()) >= min_words and line.rstrip().endswith(_TERMINAL))]
    if not prose:
        return text
    return "\n".join(lines[prose[0] : prose[-1] + 1])


def trafilatura_text(html: str, favor_precision: bool = True, seen: object = True) -> str:
    """trafilatura as FineWeb ran it. `seen` is its dedup cache of recent text segments."""
    import trafilatura

    return trafilatura.extract(html, favor_precision=favor_precision, include_comments=False,
                               deduplicate=seen) or ""


def new_dedup_cache() -> object:
    from trafilatura.deduplication import LRUCache

    return LRUCache(maxsize=4096)


def clean_text(text: str) -> str:
    """Trim trailing spaces and collapse runs of blank lines, which both extractors leave."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


class Extract(Filter):
    type_name = "extract"
    Params = ExtractParams
    output_columns = {"text": pa.string()}

    def __init__(self, params: ExtractParams):
        super().__init__(params)
        self.fn = self._trafilatura if params.extractor == "trafilatura" else resiliparse_text
        self.trim = params.extractor == "resiliparse" and params.trim_boilerplate

    def start_shard(self) -> None:
        super().start_shard()
        # trafilatura's deduplicate option remembers text across calls. A cache per shard keeps
        # a shard's output independent of what its worker processed before (resume, retries).
        self.seen = new_dedup_cache()

    def _trafilatura(self, html: str) -> str:
        return trafilatura_text(html, self.params.favor_precision, self.seen)

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        return {params.extractor: pkg_version(params.extractor)}

    def filter(self, doc: Doc) -> str | None:
        # Read, don't pop, until the end: a failed batch is retried document by document.
        html = doc.get("html") or ""
        if len(html) > self.params.max_html_chars:
            self.stats["html_clipped"] += 1
            html = html[: self.params.max_html_chars]
        try:
            with time_limit(self.params.timeout_s):
                text = self.fn(html)
        except ExtractTimeout:
            log.warning("extraction timed out after %.1fs on %s (%s)", self.params.timeout_s,
                        doc.get("id"), doc.get("url"))
            text, reason = "", "timeout"
        except Exception as exc:  # noqa: BLE001 - a page that breaks the parser costs one document
            log.warning("extraction failed on %s (%s): %r", doc.get("id"), doc.get("url"), exc)
            text, reason = "", "error"
        else:
            text = clean_text(text)
            if self.trim:
                text = trim_boilerplate(text)
            reason = None if len(text) >= self.params.min_text_chars else "empty"
        doc["text"] = text
        doc.pop("html", None)
        return reason
