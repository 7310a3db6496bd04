"""Heuristic filters: Winnow's fast tokenizer against datatrove's spaCy tokenizer, decision by decision.

Run: `.venv/bin/python bench/heuristics.py` (about a minute). Writes bench/results/heuristics.json.

* Data: every document in ../shared/data/cc-text (697 dolma CC-MAIN-2019-30 pages, 300 C4
  documents, 20 CCNet documents) and the 30 Wikipedia articles of pretrain-text/wiki-demo, all of
  them, short ones included.
* For each of the four filters on its own (datatrove's defaults; C4 also without its terminal
  punctuation rule, as FineWeb runs it) and for the FineWeb chain of the four: the share of
  documents on which `tokenizer: fast` and `tokenizer: spacy` (datatrove's own) make the same
  keep or drop decision, and the documents where they differ.
* Words: documents whose word lists are identical under both tokenizers.
* Speed: CPU seconds (this process, `time.process_time`, so other load on the machine does not
  count) for each filter over all documents, with a cold cache as a fresh worker has it.
* Gopher repetition and Gopher quality, whose own code Winnow replaces (hashed n-grams, C string tests),
  against datatrove's classes given the same word splitter, warm: the same decisions, and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dedup_corpus import shared_texts  # noqa: E402
from paths import results_dir  # noqa: E402

from filters import STEPS  # noqa: E402
from filters.heuristics import fast_tokenizer  # noqa: E402

RESULTS = results_dir()
SETUPS = {
    "gopher_repetition": {},
    "gopher_quality": {},
    "c4_quality": {},
    "c4_quality_no_terminal_punct": {"filter_no_terminal_punct": False},
    "fineweb_quality": {},
}




def decisions(kind: str, params: dict, texts: list[str]) -> tuple[list[str | None], float]:
    cls = STEPS[kind.removesuffix("_no_terminal_punct")]
    step = cls(cls.Params(**params))
    docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    start = time.process_time()
    step(docs)
    return [d.get("drop_reason") for d in docs], time.process_time() - start


def chain(tokenizer: str, texts: list[str]) -> list[str | None]:
    docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    for kind in ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"):
        extra = {"filter_no_terminal_punct": False} if kind == "c4_quality" else {}
        STEPS[kind](STEPS[kind].Params(tokenizer=tokenizer, **extra))(docs)
    return [d.get("drop_reason") for d in docs]


def compare(fast: list[str | None], spacy: list[str | None], texts: list[str]) -> dict:
    differ = [i for i, (a, b) in enumerate(zip(fast, spacy, strict=True)) if (a is None) != (b is None)]
    return {"agreement": round(1 - len(differ) / len(texts), 4), "differ": len(differ),
            "kept_fast": sum(r is None for r in fast), "kept_spacy": sum(r is None for r in spacy),
            "examples": [{"doc": i, "fast": fast[i], "spacy": spacy[i], "text": texts[i][:160]} for i in differ[:5]]}


def against_datatrove_class(kind: str, texts: list[str]) -> dict:
    """The step as Winnow runs it against datatrove's own class given the same word splitter, both warm, so
    that only the filter's own code differs: whether every decision is the same, and the CPU seconds."""
    from datatrove.data import Document
    from datatrove.pipeline import filters as dt_filters

    ours = STEPS[kind](STEPS[kind].Params()).impl
    theirs = getattr(dt_filters, STEPS[kind].datatrove_class)(language=fast_tokenizer("en"))
    out: dict = {}
    for name, impl in (("datatrove_s", theirs), ("winnow_s", ours)):
        [impl.filter(Document(text=t, id="w")) for t in texts]  # the word cache is warm for both
        start = time.process_time()
        out[name.removesuffix("_s")] = [impl.filter(Document(text=t, id="w")) for t in texts]
        out[name] = round(time.process_time() - start, 3)
    return {"same_decisions": out.pop("datatrove") == out.pop("winnow"), **out,
            "speedup": round(out["datatrove_s"] / out["winnow_s"], 1)}


def main() -> None:
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N documents (a quick check)")
    texts = shared_texts()[:parser.parse_args().limit]
    print(f"{len(texts)} documents")
    spacy_words = load_word_tokenizer("en")
    same_words = sum(fast_tokenizer("en").word_tokenize(t) == spacy_words.word_tokenize(t) for t in texts)
    fast_tokenizer.cache_clear()  # the timed runs start cold

    per_filter, cpu = {}, {}
    for kind, params in SETUPS.items():
        fast, fast_s = decisions(kind, {**params, "tokenizer": "fast"}, texts)
        spacy, spacy_s = decisions(kind, {**params, "tokenizer": "spacy"}, texts)
        per_filter[kind] = compare(fast, spacy, texts)
        cpu[kind] = {"fast_s": round(fast_s, 2), "spacy_s": round(spacy_s, 2), "speedup": round(spacy_s / fast_s, 1)}
        print(kind, per_filter[kind]["agreement"], per_filter[kind]["differ"], cpu[kind])
    fineweb = compare(chain("fast", texts), chain("spacy", texts), texts)
    print("fineweb chain", fineweb["agreement"], fineweb["differ"])
    own_code = {kind: against_datatrove_class(kind, texts) for kind in ("gopher_repetition", "gopher_quality")}
    print("against datatrove's classes, same words:", own_code)
    result = {"documents": len(texts), "documents_with_identical_words": same_words, "per_filter": per_filter,
              "fineweb_chain": fineweb, "cpu_seconds": cpu, "against_datatrove_class": own_code}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "heuristics.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
