"""Names and places for the PII step, from a spaCy pipeline's named-entity recognizer.

presidio finds PERSON and LOCATION by running the whole spaCy pipeline (tagger, parser,
lemmatizer and NER) over every page, then reading the entities. Only the NER reads into the
answer, so Winnow loads the pipeline without the other components and runs it over a batch of
pages at once with `nlp.pipe`. Labels map to presidio's entities as presidio's own spaCy
configuration maps them, and each span gets presidio's score for spaCy entities (0.85), so
thresholds mean the same in both.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from filters.light_imports import without_deep_learning

# presidio's default spaCy label mapping, for the entities Winnow offers.
LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
SCORE = 0.85
# Components whose output the NER does not read.
UNUSED = ("tagger", "parser", "attribute_ruler", "lemmatizer", "senter", "morphologizer", "tok2vec", "transformer")
# spaCy refuses texts over 1,000,000 characters by default, as a guard on the parser's memory; the
# NER alone needs far less, and a page must never fail for being long.
MAX_CHARS = 20_000_000


def check_installed(model: str) -> None:
    with without_deep_learning(keep_torch="trf" in model):
        import spacy

    if not spacy.util.is_package(model):
        raise ValueError(f"spacy_model: {model!r} is not installed (`pip install` it, for example "
                         "`pip install -e '.[ner]'`; Winnow never downloads)")


@lru_cache(maxsize=2)
def load_ner(model: str) -> Any:
    import spacy

    check_installed(model)
    nlp = spacy.load(model)
    # A shared token-to-vector layer stays when the NER listens to it (it does not in en_core_web_sm).
    feeds_ner = {name for name, pipe in nlp.pipeline if "ner" in getattr(pipe, "listening_components", ())}
    nlp.disable_pipes(*[name for name, _ in nlp.pipeline if name in UNUSED and name not in feeds_ner])
    nlp.max_length = MAX_CHARS
    return nlp


def entity_spans(model: str, texts: list[str], entities: tuple[str, ...]) -> list[list[tuple[str, int, int, float]]]:
    """For each text, (entity, start, end, score) of the named entities of the wanted types."""
    nlp = load_ner(model)
    out = []
    for doc in nlp.pipe(texts, batch_size=32):
        out.append([(LABELS[ent.label_], ent.start_char, ent.end_char, SCORE) for ent in doc.ents
                    if LABELS.get(ent.label_) in entities])
    return out
