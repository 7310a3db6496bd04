"""URL filter: datatrove's shipped blocklists, plus allow and deny lists from the config.

datatrove's own URLFilter loads its 4.5M-domain list into a Python set in every worker
(about half a gigabyte, several seconds) and builds a tldextract that fetches the public
suffix list over the network. We reuse the same lists and word rules, but keep the domains
as a sorted array of 64-bit hashes, built once into a cache file and loaded from it (36 MB), and
use tldextract's bundled suffix list so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from functools import cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import xxhash
from tldextract import TLDExtract

from filters.base import Doc, Filter, StepParams, pkg_version

_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


def _datatrove_assets() -> Path:
    import datatrove

    return Path(datatrove.__file__).parent / "assets"


def _cache_dir() -> Path:
    root = os.environ.get("WINNOW_CACHE") or Path.home() / ".cache" / "winnow"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hash64(values: list[str]) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest(v.encode()) for v in values), dtype=np.uint64, count=len(values))


@cache
def blocklist() -> tuple[np.ndarray, frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """Domain hashes, blocked URLs, banned words, banned subwords, soft-banned words."""
    assets = _datatrove_assets()
    tarball = assets / "url_filterblacklistsv0_3_0.tar.gz"
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"blocklist-{digest}.npz"
    if not cached.exists():
        with tarfile.open(tarball, "r:gz") as tar:
            domains = tar.extractfile("domains").read().decode().split()
            urls = tar.extractfile("urls").read().decode().split()
        tmp = cached.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, domains=np.unique(_hash64(domains)), urls=np.array(urls))
        os.replace(tmp, cached)
    data = np.load(cached)

    def words(name: str) -> frozenset[str]:
        lines = (assets / name).read_text().splitlines()
        return frozenset(_NON_ALNUM.sub("", w).lower() for w in lines if w and not w.startswith("#"))

    return (data["domains"], frozenset(data["urls"].tolist()), words("banned_words.txt"),
            words("banned_subwords.txt"), words("soft_banned_words.txt"))


@cache
def offline_tldextract() -> TLDExtract:
    return TLDExtract(suffix_list_urls=(), cache_dir=None)


class UrlFilterParams(StepParams):
    type: Literal["url_filter"] = "url_filter"
    use_blocklist: bool = True
    soft_word_threshold: int = 2
    deny_domains: list[str] = []
    deny_url_words: list[str] = []
    # When set, only these registered domains (or their subdomains) pass.
    allow_domains: list[str] = []


class UrlFilter(Filter):
    type_name = "url_filter"
    Params = UrlFilterParams

    def __init__(self, params: UrlFilterParams):
        super().__init__(params)
        self.tld = offline_tldextract()
        if params.use_blocklist:
            self.domains, self.urls, self.words, self.subwords, self.soft = blocklist()
        else:
            self.domains, self.urls = np.array([], dtype=np.uint64), frozenset()
            self.words = self.subwords = self.soft = frozenset()
        self.deny_domains = {d.lower() for d in params.deny_domains}
        self.deny_words = {w.lower() for w in params.deny_url_words}
        self.allow_domains = {d.lower() for d in params.allow_domains}

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        return {"datatrove_lists": pkg_version("datatrove"), "tldextract": pkg_version("tldextract")}

    def _blocked_domain(self, name: str) -> bool:
        if not name or not len(self.domains):
            return False
        h = np.uint64(xxhash.xxh64_intdigest(name.encode()))
        i = int(np.searchsorted(self.domains, h))
        return i < len(self.domains) and self.domains[i] == h

    def filter(self, doc: Doc) -> str | None:
        url = doc.get("url") or ""
        if not url:
            return "no_url"
        parts = self.tld(url)
        host = (urlsplit(url).hostname or "").lower()
        # Hosts under unknown suffixes (intranet names, IPs) have no registered domain: use the host.
        registered, fqdn = parts.top_domain_under_public_suffix or host, parts.fqdn or host
        # A listed domain covers its subdomains: match the host and each of its parents.
        labels = host.split(".")
        parents = {".".join(labels[i:]) for i in range(len(labels))}
        if self.allow_domains and not parents & self.allow_domains:
            return "not_allowed"
        if parents & self.deny_domains:
            return "denied_domain"
        if self._blocked_domain(registered):
            return "blocklist_domain"
        if fqdn != registered and self._blocked_domain(fqdn):
            return "blocklist_subdomain"
        if url in self.urls:
            return "blocklist_url"
        url_words = set(_NON_ALNUM.split(url.lower()))
        if self.deny_words & url_words:
            return "denied_word"
        if self.words & url_words:
            return "banned_word"
        if len(self.soft & url_words) >= self.params.soft_word_threshold:
            return "soft_banned_words"
        flat = _NON_ALNUM.sub("", url).lower()
        if any(sub in flat for sub in self.subwords):
            return "banned_subword"
        return None
