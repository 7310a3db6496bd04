"""Educational-value labels in the style of FineWeb-Edu: an LLM rates a sample of documents 0-5.

The ratings then train a fastText classifier (`winnow quality train --labelled ... --label-column
edu_score`), which scores every document cheaply through the `quality` step: its score is the
expected rating. The rubric is additive, like FineWeb-Edu's: one point per criterion met.
"""

from __future__ import annotations

import random
import re
from typing import Any

from llmclient import LLMClient

RUBRIC = """Rate how useful the web page below would be for teaching, from primary school to college.
Add up points:
- 1 point if it gives some basic information on an educational topic, even mixed with ads or other noise.
- 1 more point if it covers material relevant to education, even if loosely organized or incomplete.
- 1 more point if a student could learn from it: it is coherent and introduces key concepts.
- 1 more point if it is well organized and clear, like a chapter of a textbook or a good tutorial.
- 1 more point if it is outstanding teaching material with no distractions.
Pages that are mostly advertising, navigation or adult content get 0.

Page:
<<<
{text}
>>>

Explain in at most 80 words, then end with the line "Educational score: N" where N is 0 to 5."""

_SCORE = re.compile(r"educational score:\s*([0-5])", re.IGNORECASE)


def parse_score(answer: str | None) -> int | None:
    """The last "Educational score: N" in an answer, or None."""
    if not answer:
        return None
    found = _SCORE.findall(answer)
    return int(found[-1]) if found else None


def annotate(texts: list[str], client: LLMClient, sample: int | None = None, seed: int = 0,
             max_chars: int = 6000) -> list[dict[str, Any]]:
    """Rate a random sample of `texts`; rows are {text, edu_score, answer}, unparseable ones left out."""
    chosen = list(texts)
    if sample is not None and sample < len(chosen):
        chosen = random.Random(seed).sample(chosen, sample)
    answers = client.chat_many([[{"role": "user", "content": RUBRIC.format(text=t[:max_chars])}] for t in chosen])
    rows = []
    for text, answer in zip(chosen, answers, strict=True):
        score = parse_score(answer)
        if score is not None:
            rows.append({"text": text, "edu_score": score, "answer": answer})
    return rows
