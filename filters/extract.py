"""HTML text extraction: resiliparse with a trafilatura cascade (default), or trafilatura; risky pages hard time-boxed.

The methods live in `filters/extract_methods.py`; `bench/extraction.py` measures them (the README has
the table). A cheap scan (`is_risky`: size, tag count, <div> nesting depth) picks the pages that may run
long; they are extracted in a child process that is killed when the page overruns `timeout_s`
(`filters/extract_sandbox.py`, `isolated` in the stats): resiliparse runs in C code that no signal can
interrupt, so only a process boundary makes the limit hard. Every other page is extracted in the worker
itself, which saves the process hop (about a quarter of the step's CPU time). A page that overran is
scanned for deep <div> nesting, which costs resiliparse quadratic time; beyond `max_depth` the excess
levels are flattened (linear time) and the page is extracted again (`guarded`). With `isolate: all` every
page goes to the child; with `timeout_s: 0` none does, and every page gets the depth guard first.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from filters.base import Doc, Filter, StepParams, pkg_version
from filters.extract_boundary import load_model, model_digest
from filters.extract_methods import (  # noqa: F401 - re-exported: the methods' historical home
    RISKY_DEPTH,
    clean_text,
    extract_page,
    is_risky,
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
    timeout_s: float = Field(5.0, ge=0)
    # Which pages the limit applies to: "risky" ones (by a cheap scan of size, tags and nesting), or "all".
    isolate: Literal["risky", "all"] = "risky"
    max_html_chars: int = Field(2_000_000, ge=1)
    min_text_chars: int = Field(1, ge=0)
    # resiliparse only: cut menus, footers and the boilerplate between, keeping headings and short real lines.
    trim_boilerplate: bool = True
    # How: "model", the learned article boundary (filters/extract_boundary.py, its model shipped in
    # filters/models/), or "rules", the word-list edge trim alone (filters/extract_trim.py).
    boundary: Literal["model", "rules"] = "model"
    # resiliparse only: remove share bars, "related" boxes, captions, cookie notices, bylines, post metadata and
    # sidebar widgets by their class tokens before the main-content pass. Off, the step is a tenth to a sixth faster
    # and keeps more photo captions and credits (bench/extraction.py measures both).
    skip_classes: bool = True
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
            "boundary": params.boundary, "skip_classes": params.skip_classes,
            "favor_precision": params.favor_precision, "max_depth": params.max_depth, "check_depth": False}
        if params.extractor == "resiliparse" and params.trim_boilerplate and params.boundary == "model":
            load_model()  # once per worker process, and a missing or stale model file fails here, not per page
        uses_trafilatura = params.extractor == "trafilatura" or params.cascade
        if params.timeout_s > 0:
            self.sandbox = Sandbox(preload=("trafilatura",) if uses_trafilatura else ())
        # The risk scan, which runs when there is a child to send pages to, has then measured a page's nesting
        # within the depth guard's limit: the guard need not measure it again.
        self.depth_scanned = self.sandbox is not None and params.max_depth >= RISKY_DEPTH

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
        if params.extractor == "resiliparse" and params.trim_boilerplate and params.boundary == "model":
            versions["boundary_model"] = model_digest()
        return versions

    def _extract(self, html: str, check_depth: bool, isolated: bool) -> tuple[str, list[str]]:
        options = self.options | {"check_depth": check_depth}
        if not isolated:
            return extract_page(html, options, self.seen)
        assert self.sandbox is not None
        return self.sandbox.call(("page", html, options), self.params.timeout_s)

    def filter(self, doc: Doc) -> str | None:
        # Read, don't pop, until the end: a failed batch is retried document by document.
        html = doc.get("html") or ""
        if len(html) > self.params.max_html_chars:
            self.stats["html_clipped"] += 1
            html = html[: self.params.max_html_chars]
        isolated = self.sandbox is not None and (self.params.isolate == "all" or is_risky(html))
        if isolated:
            self.stats["isolated"] += 1
        try:
            try:
                # In the worker the depth guard runs first: no limit would stop a page that nests deep.
                text, events = self._extract(html, check_depth=not (isolated or self.depth_scanned),
                                             isolated=isolated)
            except PageTimeout:
                self.stats["overran"] += 1
                # Deep nesting is the known way to make resiliparse slow: flatten it and try once more.
                if self.params.extractor != "resiliparse" or nesting_depth(html) <= self.params.max_depth:
                    raise
                text, events = self._extract(html, check_depth=True, isolated=True)
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
