"""Quality control of generated rows: each failed check is a `drop_reason`, as in the document stages.

Checks, in order, the first failure naming the row's reason:
- length bounds on the instruction and the output (`synth:instruction_short`, `..._long`, `synth:output_short`, ...);
- refusals ("I'm sorry, but I can't ...", "As an AI language model ...") -> `synth:refusal`;
- an output that copies the source (`synth:echo_source`): the share of its word 8-grams found in the source
  document. Backtranslation rows are exempt, since their output is the source by design;
- an answer not grounded in its source (`synth:ungrounded`): the share of the output's distinct content
  words (letters/digits, three or more characters, not a stopword, cut to their first five characters
  so that "gravity" finds "gravitational"; each CJK character counts as one) found in the source
  document is below `min_grounding`. Answers are asked for in the model's own words, so the bar is low:
  it catches answers about something else, not paraphrase. A page that planted its own instruction gets
  an answer about something else, and a model that ignored the page writes words it does not hold.
  Applied to question/answer pairs, to rephrased documents and to webqa rows; not to self-instruct
  tasks (written about the topic, not from the text) nor backtranslation (the output is the page);
- a language other than the source's (`synth:language_mismatch`), by filters/langid.py's lid.176 model,
  only when the model is confident about the output (short texts are often misread);
- near-duplicate instructions within the shard (`synth:near_duplicate`), with the dedup stage's MinHash
  (pipeline/dedup/minhash.py): a new instruction that shares an LSH band with an earlier one and whose
  signatures agree on at least `near_dup_threshold` of their rows.
JSON parse failures, judge scores and best-of-N choices are decided in shard.py with their own reasons.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.dedup import minhash

REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i apologi[sz]e|i can(?:no|')t (?:help|assist|provide|comply)|"
    r"i cannot (?:help|assist|provide|comply)|i(?:'m| am) (?:not able|unable) to|as an ai\b|as a language model)"
    r"|\bas an ai (?:language )?model\b|\bi(?:'m| am) just an ai\b",
    re.IGNORECASE)


# Latin-script runs of three or more letters/digits, or one CJK character: a "content word" candidate.
_CONTENT = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]|[^\W_\p{Han}\p{Hiragana}\p{Katakana}]{3,}")
_STOPWORDS = frozenset("""
the and for are but not you all any can had her was one our out has him his how its may new now old see two way
who did get let say she too use this that with from they will would there their what about which when your
into than then them these some could other more also only been were have each such most very like just over
does what where here those being both after before while because should many much same well even through
der die das und ist ein eine mit von den dem des les une est pour que qui dans par sur pas los las por con
""".split())


def content_words(text: str) -> set[str]:
    """Distinct content words, each cut to five characters (a crude stem that works across languages)."""
    return {w[:5] for w in (m.lower() for m in _CONTENT.findall(text)) if w not in _STOPWORDS}


def grounding(output: str, source: str) -> float:
    """Share of the output's distinct content words that the source holds (1.0 when it has none)."""
    words = content_words(output)
    if not words:
        return 1.0
    return len(words & content_words(source)) / len(words)


class QCParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_instruction_chars: int = Field(10, ge=0)
    max_instruction_chars: int = Field(2000, ge=1)
    min_output_chars: int = Field(20, ge=0)
    max_output_chars: int = Field(8000, ge=1)
    refusals: bool = True
    max_echo: float | None = Field(0.6, ge=0, le=1)  # None: keep outputs however much they copy
    echo_ngram: int = Field(8, ge=2)
    min_grounding: float | None = Field(0.35, ge=0, le=1)  # None: keep answers whatever words they use
    language_match: bool = True
    language_min_score: float = Field(0.6, ge=0, le=1)  # trust the language model only from this score on
    near_dup_threshold: float | None = Field(0.7, gt=0, le=1)  # None: keep near-duplicates
    num_perm: int = Field(64, ge=16)
    judge: bool = False  # score each instruction row with the judge prompt (one more request per row)
    judge_template: str | None = None
    min_score: float | None = None  # drop rows the judge scored lower
    # The decont step's parameters (sets, n, ...): rows and rephrased documents that share an n-gram with an
    # eval set are dropped as decont:<set>, as documents are by the step.
    decont: dict[str, Any] | None = None

    @field_validator("decont")
    @classmethod
    def _check_decont(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from filters.decont import DecontParams

        return DecontParams(**{**value, "type": "decont"}).model_dump(mode="json")


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = minhash.tokens(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def echo_fraction(output: str, source: str, n: int = 8) -> float:
    """Share of the output's word n-grams that appear in the source (0 when the output is shorter than n)."""
    grams = _ngrams(output, n)
    if not grams:
        return 0.0
    return len(grams & _ngrams(source, n)) / len(grams)


class LanguageCheck:
    """lid.176 (the langid step's model) on generated text."""

    def __init__(self) -> None:
        from filters.langid import bundled_model_path, load_model

        self.model = load_model(str(bundled_model_path()))

    def detect(self, text: str) -> tuple[str, float]:
        labels, scores = self.model.predict([text.replace("\n", " ").lower()[:2000]], k=1)
        if not len(labels[0]):
            return "unknown", 0.0
        return labels[0][0].removeprefix("__label__"), float(scores[0][0])


class NearDupIndex:
    """MinHash LSH over the instructions kept so far in a shard."""

    def __init__(self, threshold: float, num_perm: int, seed: int = 1):
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.bands, self.rows = minhash.lsh_params(threshold, num_perm)
        self.buckets: dict[int, list[int]] = defaultdict(list)
        self.signatures: list[np.ndarray] = []

    def add_if_new(self, text: str) -> bool:
        """True (and remembered) when no earlier text is a near-duplicate of this one."""
        sig = minhash.signatures([minhash.shingle_hashes(text, 3)], self.num_perm, self.seed)
        keys = minhash.band_keys(sig, self.bands, self.rows)[0]
        for key in keys.tolist():
            for other in self.buckets.get(key, ()):
                if float(np.mean(self.signatures[other] == sig[0])) >= self.threshold:
                    return False
        index = len(self.signatures)
        self.signatures.append(sig[0])
        for key in keys.tolist():
            self.buckets[key].append(index)
        return True


class QC:
    def __init__(self, params: QCParams):
        self.p = params
        self.language = LanguageCheck() if params.language_match else None
        self.near_dups = NearDupIndex(params.near_dup_threshold, params.num_perm) if params.near_dup_threshold \
            else None

    def _common(self, text: str, source: dict[str, Any], low: int, high: int, what: str) -> str | None:
        if len(text) < low:
            return f"synth:{what}_short"
        if len(text) > high:
            return f"synth:{what}_long"
        if self.p.refusals and REFUSAL.search(text[:300]):
            return "synth:refusal"
        if self.language is not None and source.get("language"):
            lang, score = self.language.detect(text)
            if score >= self.p.language_min_score and lang != source["language"]:
                return "synth:language_mismatch"
        return None

    def ungrounded(self, output: str, source: dict[str, Any]) -> bool:
        return self.p.min_grounding is not None and grounding(output, source.get("text") or "") < self.p.min_grounding

    def check_instruction(self, row: dict[str, Any], source: dict[str, Any], echo_exempt: bool = False,
                          grounded: bool = True) -> str | None:
        """The drop reason for an instruction row, or None to keep it (near-duplicates are checked last,
        in `is_near_duplicate`, so only rows that pass everything else enter the index)."""
        p = self.p
        if len(row["instruction"]) < p.min_instruction_chars:
            return "synth:instruction_short"
        if len(row["instruction"]) > p.max_instruction_chars:
            return "synth:instruction_long"
        reason = self._common(row["output"], source, p.min_output_chars, p.max_output_chars, "output")
        if reason:
            return reason
        if self.p.refusals and REFUSAL.search(row["instruction"][:300]):
            return "synth:refusal"
        if p.max_echo is not None and not echo_exempt and \
                echo_fraction(row["output"], source.get("text") or "", p.echo_ngram) > p.max_echo:
            return "synth:echo_source"
        if grounded and self.ungrounded(row["output"], source):
            return "synth:ungrounded"
        return None

    def check_text(self, text: str, source: dict[str, Any]) -> str | None:
        """The drop reason for a rephrased document, or None."""
        reason = self._common(text, source, max(self.p.min_output_chars, 50), 4 * self.p.max_output_chars, "output")
        return reason or ("synth:ungrounded" if self.ungrounded(text, source) else None)

    def is_near_duplicate(self, instruction: str) -> bool:
        return self.near_dups is not None and not self.near_dups.add_if_new(instruction)
