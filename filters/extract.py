"""HTML text extraction: resiliparse with a trafilatura cascade (default), or trafilatura, hard time-boxed.

The methods live in `filters/extract_methods.py`; `bench/extraction.py` measures them (the README has
the table). Each page is extracted in a child process that is killed when the page overruns
`timeout_s` (`filters/extract_sandbox.py`): resiliparse runs in C code that no signal can interrupt,
so only a process boundary makes the limit hard. A page that overran is scanned for deep <div> nesting,
which costs resiliparse quadratic time; beyond `max_depth` the excess levels are flattened (linear time)
and the page is extracted again (`guarded` in the stats). With `timeout_s: 0` pages are extracted in the
worker process itself, and every page gets that scan first.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from filters.base import Doc, Filter, StepParams, pkg_version
from filters.extract_methods import (  # noqa: F401 - re-exported: the methods' historical home
    clean_text,
    extract_page,
    nesting_depth,
    new_dedup_cache,
    resiliparse_text,
    trafilatura_text,
    trim_boilerplate,
)
from filters.extract_sandbox import ChildCrashed, PageTimeout, Sandbox

log = logging.getLogger("winnow.extract")

Extractor = Literal["resiliparse", "trafilatura"]


class ExtractParams(StepParams):
    type: Literal["extract"] = "extract"
    extractor: Extractor = "resiliparse"
    # A hard limit per page (a killed child process); 0 extracts in the worker itself, without a limit.
    timeout_s: float = 5.0
    max_html_chars: int = 2_000_000
    min_text_chars: int = 1
    # resiliparse only: cut menus and footers at both ends, keeping headings and short real lines.
    trim_boilerplate: bool = True
    # resiliparse only: send the pages whose result looks wrong (too short) to trafilatura.
    cascade: bool = True
    # resiliparse only: <div>/<article> nesting beyond this is flattened on a page that overran its limit.
    max_depth: int = 256
    # trafilatura (and the cascade): FineWeb ran it with favor_precision.
    favor_precision: bool = True


class Extract(Filter):
    type_name = "extract"
    Params = ExtractParams
    output_columns = {"text": pa.string()}

    def __init__(self, params: ExtractParams):
        self.sandbox: Sandbox | None = None
        super().__init__(params)
        self.options: dict[str, Any] = {
            "extractor": params.extractor, "trim_boilerplate": params.trim_boilerplate, "cascade": params.cascade,
            "favor_precision": params.favor_precision, "max_depth": params.max_depth, "check_depth": False}
        uses_trafilatura = params.extractor == "trafilatura" or params.cascade
        if params.timeout_s > 0:
            self.sandbox = Sandbox(preload=("trafilatura",) if uses_trafilatura else ())

    def start_shard(self) -> None:
        super().start_shard()
        # trafilatura's deduplicate option remembers text across calls. A cache per shard keeps
        # a shard's output independent of what its worker processed before (resume, retries).
        self.seen = new_dedup_cache() if self.params.extractor == "trafilatura" else False
        if self.sandbox is not None and self.sandbox.proc is not None:
            try:
                self.sandbox.call(("reset",), 60)
            except (PageTimeout, ChildCrashed):
                self.sandbox.close()  # a fresh child starts with an empty cache too

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        versions = {params.extractor: pkg_version(params.extractor)}
        if params.extractor == "resiliparse" and params.cascade:
            versions["trafilatura"] = pkg_version("trafilatura")
        # The step's module is in the stage fingerprint already; its helpers are not.
        helpers = hashlib.sha256()
        for name in ("extract_methods.py", "extract_trim.py", "extract_sandbox.py"):
            helpers.update(Path(__file__).with_name(name).read_bytes())
        return versions | {"helpers": helpers.hexdigest()[:16]}

    def _extract(self, html: str, check_depth: bool) -> tuple[str, list[str]]:
        options = self.options | {"check_depth": check_depth}
        if self.sandbox is None:
            return extract_page(html, options, self.seen)
        return self.sandbox.call(("page", html, options), self.params.timeout_s)

    def filter(self, doc: Doc) -> str | None:
        # Read, don't pop, until the end: a failed batch is retried document by document.
        html = doc.get("html") or ""
        if len(html) > self.params.max_html_chars:
            self.stats["html_clipped"] += 1
            html = html[: self.params.max_html_chars]
        try:
            try:
                text, events = self._extract(html, check_depth=self.sandbox is None)
            except PageTimeout:
                self.stats["overran"] += 1
                # Deep nesting is the known way to make resiliparse slow: flatten it and try once more.
                if self.params.extractor != "resiliparse" or nesting_depth(html) <= self.params.max_depth:
                    raise
                text, events = self._extract(html, check_depth=True)
        except PageTimeout:
            log.warning("extraction overran its %.1fs limit on %s (%s); the page is dropped", self.params.timeout_s,
                        doc.get("id"), doc.get("url"))
            text, reason, events = "", "timeout", []
        except Exception as exc:  # noqa: BLE001 - a page that breaks the parser (or its process) costs one document
            log.warning("extraction failed on %s (%s): %s", doc.get("id"), doc.get("url"), exc)
            text, reason, events = "", "error", []
        else:
            reason = None if len(text) >= self.params.min_text_chars else "empty"
        for event in events:
            self.stats[event] += 1
        doc["text"] = text
        doc.pop("html", None)
        return reason
