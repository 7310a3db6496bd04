"""Heuristic quality filters: Gopher repetition, Gopher quality, C4 and FineWeb.

These are datatrove's own implementations, called document by document (Gopher repetition with its
n-gram measures counted on hashes: the same decisions, tested against datatrove's). With
`tokenizer: spacy` a Winnow run keeps exactly the documents a datatrove run with the same
parameters keeps (bench/vs_datatrove.py: Jaccard 1.000 on 20,000 records); the default
`tokenizer: fast` gives the same words as spaCy's, chunk by chunk, at a fraction of the cost, so
Gopher and FineWeb decisions are identical; only C4's sentence count uses a regex
(bench/heuristics.py). Each step's
parameters are those of the datatrove class, checked by pydantic; the defaults are the
papers' (and datatrove's). Drop reasons are datatrove's, without the redundant prefix:
`gopher_quality:short_doc`, `c4_quality:curly_bracket`, `fineweb_quality:line_punct_ratio`.
"""

from __future__ import annotations

import difflib
import math
import re
import string
from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import PositiveInt, model_validator

from filters import ngram_hash
from filters.base import Doc, Filter, StepParams, pkg_version
from filters.light_imports import without_deep_learning

_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# A chunk ending in one of these splits into the word and the mark, in spaCy's English rules, when
# the word is letters or digits. A period splits only after a lower-case ASCII letter or a digit
# ("W." and "GmbH." stay whole).
_SPLIT_MARKS = frozenset(",;:!?")
_BEFORE_PERIOD = frozenset(string.ascii_lowercase + string.digits)
_CACHE_SIZE = 1 << 18
# Two batches of the default size (256 documents).
RECENT_TEXTS = 512


class SpacyChunkTokenizer:
    """spaCy's English word splitting, computed once per distinct whitespace-separated chunk.

    spaCy's tokenizer splits text at whitespace and tokenizes each chunk on its own (prefixes,
    suffixes, infixes, special cases such as "don't" -> "do", "n't" and "St." kept whole). So the
    tokens of a text are the tokens of its chunks, and web text repeats its chunks: most are plain
    words, which need no tokenizer at all, and the rest are looked up in a cache before spaCy sees
    them. The result is token for token datatrove's spaCy word list (tests compare them on every
    real document in ../shared/data), at a fraction of the cost."""

    def __init__(self, language: str = "en"):
        self.language = language
        self._reset()

    def _reset(self) -> None:
        # A fresh tokenizer also drops the strings spaCy has interned, which otherwise grow with
        # every new word it sees.
        self.tokenizer = spacy_tokenizer(self.language)
        self.special = frozenset(self.tokenizer.rules)
        self.cache: dict[str, tuple[str, ...]] = {}

    def chunk(self, chunk: str) -> tuple[str, ...] | list[str]:
        if chunk not in self.special:
            if chunk.isalpha() or chunk.isdigit():
                return (chunk,)
            word, mark = chunk[:-1], chunk[-1]
            if (mark in _SPLIT_MARKS or (mark == "." and word and word[-1] in _BEFORE_PERIOD)) and \
                    (word.isalpha() or word.isdigit()) and word not in self.special:
                return (word, mark)
        found = self.cache.get(chunk)
        if found is None:
            if len(self.cache) >= _CACHE_SIZE:
                self._reset()
            found = self.cache[chunk] = tuple(t.text for t in self.tokenizer(chunk) if not t.is_space)
        return found

    def words(self, text: str) -> list[str]:
        out: list[str] = []
        append, special, chunk_words = out.append, self.special, self.chunk
        for chunk in text.split():
            if chunk.isalpha() and chunk not in special:  # most chunks: `chunk`'s first case, without the call
                append(chunk)
            else:
                out.extend(chunk_words(chunk))
        return out


def spacy_tokenizer(language: str) -> Any:
    """`spacy.blank(language).tokenizer`, built from the language's defaults the way spaCy builds it, but
    without a `Language`: creating one loads every package's spaCy plugins, and presidio's imports
    transformers and torch, which cost each worker process seconds. Languages with a tokenizer of their
    own (Chinese, Japanese, ...) still go through spacy.blank."""
    with without_deep_learning():
        from spacy.util import compile_infix_regex, compile_prefix_regex, compile_suffix_regex, get_lang_class

    lang = get_lang_class(language)
    if lang.default_config["nlp"]["tokenizer"].get("@tokenizers") != "spacy.Tokenizer.v1":
        import spacy

        return spacy.blank(language).tokenizer
    from spacy.tokenizer import Tokenizer
    from spacy.vocab import create_vocab

    d = lang.Defaults
    return Tokenizer(create_vocab(language, d), rules=d.tokenizer_exceptions,
                     prefix_search=compile_prefix_regex(d.prefixes).search if d.prefixes else None,
                     suffix_search=compile_suffix_regex(d.suffixes).search if d.suffixes else None,
                     infix_finditer=compile_infix_regex(d.infixes).finditer if d.infixes else None,
                     token_match=d.token_match, url_match=d.url_match)


@cache
def fast_tokenizer(language: str = "en") -> Any:
    """datatrove's word tokenizer for `language`, with spaCy's word splitting done chunk by chunk
    (SpacyChunkTokenizer) and sentences split by a regex at terminal punctuation followed by a
    space, in place of spaCy's sentencizer."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class FastWordTokenizer(WordTokenizer):
        def __init__(self, language: str):
            super().__init__(language)
            self.chunks = SpacyChunkTokenizer(language)
            self.recent: dict[str, list[str]] = {}

        def word_tokenize(self, text: str) -> list[str]:
            # The Gopher repetition, Gopher quality and FineWeb filters each split the same text into words,
            # a batch at a time: the words of the last RECENT_TEXTS texts are kept for the next filter.
            words = self.recent.get(text)
            if words is None:
                words = self.chunks.words(text)
                if len(self.recent) >= RECENT_TEXTS:
                    del self.recent[next(iter(self.recent))]
                self.recent[text] = words
            return list(words)  # a list of the caller's own

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            spans, start = [], 0
            for m in _SENTENCE_END.finditer(text):
                if text[start : m.end()].strip():
                    spans.append((start, m.end()))
                start = m.end()
            if text[start:].strip():
                spans.append((start, len(text)))
            return spans

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for a, b in self.span_tokenize(text) if (s := text[a:b].strip())]

    return FastWordTokenizer(language)


class _DatatroveFilter(Filter):
    """Runs one datatrove filter; subclasses name the class and its parameter model."""

    datatrove_class: ClassVar[str]
    strip_prefix: ClassVar[str] = ""

    def __init__(self, params: StepParams):
        super().__init__(params)
        from datatrove.pipeline import filters as dt_filters

        kwargs = _tuples(params.model_dump(exclude={"type", "tokenizer"}))
        if params.tokenizer == "fast":
            kwargs["language"] = fast_tokenizer(datatrove_tokenizer(params.language)[1])
        self.impl = getattr(dt_filters, self.datatrove_class)(**kwargs)

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        return {"datatrove": pkg_version("datatrove")}

    def filter(self, doc: Doc) -> str | None:
        from datatrove.data import Document

        dt_doc = Document(text=doc.get("text") or "", id=str(doc.get("id")), metadata={})
        result = self.impl.filter(dt_doc)
        doc["text"] = dt_doc.text  # C4 removes lines in place
        if result is True or (isinstance(result, tuple) and result[0]):
            return None
        reason = result[1] if isinstance(result, tuple) else "rejected"
        return str(reason).removeprefix(self.strip_prefix).replace(" ", "_")


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    # YAML has no tuples; datatrove's n-gram settings expect them.
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in kwargs.items()}


# "spacy" is datatrove's own word splitting for the language (spaCy's for most, another library's
# for some): exact parity with a datatrove run. "fast": the same words as spaCy's, chunk by chunk.
Tokenizer = Literal["fast", "spacy"]


def datatrove_tokenizer(language: str) -> tuple[str, str]:
    """(tokenizer class, its language code) that datatrove uses for `language`, or a ValueError
    naming the nearest languages it knows."""
    from datatrove.utils.word_tokenizers import load_tokenizer_assignments

    factories = load_tokenizer_assignments()
    if language not in factories:
        near = difflib.get_close_matches(language, sorted(factories), n=3, cutoff=0.5)
        hint = f"; nearest: {', '.join(map(repr, near))}" if near else ""
        raise ValueError(f"language: {language!r} is not a language datatrove has a word tokenizer for"
                         f" (ISO 639-1 or 639-3 codes, optionally with a script: 'sr_Latn'){hint}")
    class_name, code = factories[language].args
    return class_name, code or language


# spaCy's languages whose blank pipeline segments words with a library instead of its rule-based
# tokenizer (spaCy 3.8; tests/test_steps.py checks the set against spaCy's own configs). A constant,
# because asking spaCy means importing it, torch and every spaCy plugin: seconds at config time.
SEGMENTED_SPACY_LANGUAGES = frozenset({"ja", "ko", "th", "vi", "zh"})


def _rule_based_spacy(code: str) -> bool:
    """Whether spaCy's pipeline for `code` splits words with its rule-based tokenizer."""
    return code not in SEGMENTED_SPACY_LANGUAGES


class _HeuristicParams(StepParams):
    """Checks `language` (datatrove's word tokenizer is chosen by it) against `tokenizer`."""

    @model_validator(mode="after")
    def _known_language(self) -> _HeuristicParams:
        class_name, code = datatrove_tokenizer(self.language)
        if self.tokenizer == "fast" and not (class_name == "SpaCyTokenizer" and _rule_based_spacy(code)):
            raise ValueError(f"language: datatrove splits {self.language!r} into words with its {class_name}"
                             f"({code}), which `tokenizer: fast` does not reproduce; set `tokenizer: spacy` "
                             "to use datatrove's")
        return self


class GopherRepetitionParams(_HeuristicParams):
    type: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[PositiveInt, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[PositiveInt, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    language: str = "en"
    tokenizer: Tokenizer = "fast"


class GopherRepetition(_DatatroveFilter):
    type_name = "gopher_repetition"
    Params = GopherRepetitionParams
    datatrove_class = "GopherRepetitionFilter"

    def __init__(self, params: StepParams):
        super().__init__(params)
        self.impl = fast_repetition_filter(self.impl)


def fast_repetition_filter(impl: Any) -> Any:
    """datatrove's GopherRepetitionFilter `impl` with its n-gram measures counted on hashes of the words'
    characters (filters/ngram_hash.py) instead of one joined string per n-gram and n: the same decisions
    (tests compare them with datatrove's on real, repetitive and hash-colliding text) at a fraction of the
    cost (bench/heuristics.py)."""
    from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
    from datatrove.utils.text import split_into_words

    by_strings = impl.filter

    def filter(doc: Any) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        if len(text) > ngram_hash.MAX_CHARS:
            return by_strings(doc)  # datatrove's own counting, which holds less memory on a huge text
        checks = (("para", impl.paragraph_exp.split(text.strip()), impl.dup_para_frac, impl.dup_para_char_frac),
                  ("line", impl._line_splitter.split(text), impl.dup_line_frac, impl.dup_line_char_frac))
        for kind, parts, max_frac, max_char_frac in checks:
            duplicates, duplicate_chars = find_duplicates(parts)
            if max_frac and duplicates / len(parts) > max_frac:
                return False, f"dup_{kind}_frac"
            if max_char_frac and duplicate_chars / len(text) > max_char_frac:
                return False, f"dup_{kind}_char_frac"
        grams = ngram_hash.WordNgrams(split_into_words(text, impl.language))
        for n, n_frac in impl.top_n_grams:
            if len(grams.words) >= n and grams.top_chars(n) / len(text) > n_frac:  # datatrove skips short texts
                return False, f"top_{n}_gram"
        for n, n_frac in impl.dup_n_grams:
            if grams.repeated_chars(n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True

    impl.filter = filter
    return impl


class GopherQualityParams(_HeuristicParams):
    type: Literal["gopher_quality"] = "gopher_quality"
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: int | None = 3
    max_avg_word_length: int | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: list[str] | None = None
    language: str = "en"
    tokenizer: Tokenizer = "fast"


class GopherQuality(_DatatroveFilter):
    type_name = "gopher_quality"
    Params = GopherQualityParams
    datatrove_class = "GopherQualityFilter"
    strip_prefix = "gopher_"

    def __init__(self, params: StepParams):
        super().__init__(params)
        self.impl = fast_quality_filter(self.impl)


def fast_quality_filter(impl: Any) -> Any:
    """datatrove's GopherQualityFilter `impl` with its per-word tests run by C string methods instead of a
    generator per word (whether a word has a character outside the punctuation set, whether it has a letter):
    the same checks in the same order, so the same decisions (tests compare them with datatrove's)."""
    from datatrove.utils.text import PUNCTUATION_SET, split_into_words

    symbols = frozenset(PUNCTUATION_SET)

    def filter(doc: Any) -> bool | tuple[bool, str]:
        text = doc.text
        words = split_into_words(text, impl.language)
        n_words = len(words)
        lengths = [len(w) for w in words if not symbols.issuperset(w)]  # the words that are not all symbols
        if impl.min_doc_words and len(lengths) < impl.min_doc_words:
            return False, "gopher_short_doc"
        if impl.max_doc_words and len(lengths) > impl.max_doc_words:
            return False, "gopher_long_doc"
        average = sum(lengths) / len(lengths) if lengths else math.nan  # numpy's mean of no words
        if impl.min_avg_word_length and average < impl.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if impl.max_avg_word_length and average > impl.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if impl.max_symbol_word_ratio and text.count("#") / n_words > impl.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if impl.max_symbol_word_ratio and \
                (text.count("...") + text.count("\u2026")) / n_words > impl.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if impl.max_bullet_lines_ratio and \
                sum(s.lstrip().startswith(("\u2022", "-")) for s in lines) / len(lines) > impl.max_bullet_lines_ratio:
            return False, "gopher_too_many_bullets"
        if impl.max_ellipsis_lines_ratio and \
                sum(s.rstrip().endswith(("...", "\u2026")) for s in lines) / len(lines) > impl.max_ellipsis_lines_ratio:
            return False, "gopher_too_many_end_ellipsis"
        if impl.max_non_alpha_words_ratio and \
                sum(w.isalpha() or any(map(str.isalpha, w)) for w in words) / n_words < impl.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        if impl.min_stop_words and len(impl.stop_words.intersection(words)) < impl.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True

    impl.filter = filter
    return impl


class C4QualityParams(_HeuristicParams):
    type: Literal["c4_quality"] = "c4_quality"
    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    language: str = "en"
    tokenizer: Tokenizer = "fast"


class C4Quality(_DatatroveFilter):
    type_name = "c4_quality"
    Params = C4QualityParams
    datatrove_class = "C4QualityFilter"


class FineWebQualityParams(_HeuristicParams):
    type: Literal["fineweb_quality"] = "fineweb_quality"
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3
    language: str = "en"
    tokenizer: Tokenizer = "fast"


class FineWebQuality(_DatatroveFilter):
    type_name = "fineweb_quality"
    Params = FineWebQualityParams
    datatrove_class = "FineWebQualityFilter"
