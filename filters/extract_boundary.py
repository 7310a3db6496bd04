"""The learned article boundary: which lines of resiliparse's main-content output are the article.

A logistic regression over structural features that any page has, in any language: a line's length and
word count (script-aware), link share, sentence ending, punctuation, digit, capitalised and short-token
shares (short tokens are a language-agnostic stand-in for stop words), whether it is a heading of the
page or its title, where it stands (from the top and the bottom, by lines and by text, and from the
page's largest block), the same for its neighbours, and where it stands in the page's tree: inside the
container that holds most of the page's prose (readability's idea: a block's text counts for its
container, half of it for the one around that), next to it, or how many containers away.
`bench/train_boundary.py` trains it on pages of `../shared/data` (annotated article bodies, trafilatura as
a teacher, lines a site repeats) and writes `filters/models/extract-boundary.json`; the file is loaded once
per process and its digest is part of the `extract` step's fingerprint.

The article is the run of lines with the largest sum of (p - SPAN_THRESHOLD) (the lines' article
probabilities), so that a short subheading inside it stays; inside that run, lines below
`DROP_THRESHOLD` go (an ad label, a share bar between paragraphs). Standard library and numpy only, as
the extraction child process imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import cache
from pathlib import Path

import numpy as np

if __package__:
    from filters.extract_fences import NO_CONTAINER, compiled
    from filters.extract_trim import (
        _TERMINAL,
        length_and_words,
        trim_kept,
    )
else:  # imported by the extraction child, run as a script from filters/
    from extract_fences import NO_CONTAINER, compiled
    from extract_trim import (
        _TERMINAL,
        length_and_words,
        trim_kept,
    )

MODEL = Path(__file__).with_name("models") / "extract-boundary.json"
_PUNCT = re.compile(r"[.,;:!?()\"'«»“”„、，。；：！？（）]")
_DIGIT = re.compile(r"\d")
# The capitals a token may open with: Latin, Greek, Cyrillic.
_CAPITALS = frozenset(
    "ĀĂĄĆĈĊČĎĐĒĖĘĚĞĠĢĪĮİĶĹĻĽŁŃŅŇŌŐŒŔŘŚŞŠŢŤŪŮŰŲŹŻŽЁ"
    + "".join(chr(c) for lo, hi in (("A", "Z"), ("À", "Ö"), ("Ø", "Þ"), ("Α", "Ω"), ("А", "Я"))
              for c in range(ord(lo), ord(hi) + 1)))
SAMPLE_CHARS = 240  # a line's shares are read off its start: on a long paragraph they settle early
Line = tuple[str, float, int]  # a line of text, its link share, its container (filters/extract_methods.link_lines)

LINE_FEATURES = ["log_len", "log_words", "link", "terminal", "punct", "digits", "capital", "short_tokens",
                 "unspaced", "heading", "title", "bullet", "blank_before", "long"]
CONTEXT = ["top_text", "bottom_text", "top_line", "bottom_line", "from_largest", "after_largest",
           "long_before", "long_after", "window_len", "window_link", "window_terminal", "log_lines", "log_chars"]
NEIGHBOUR = ["log_len", "link", "terminal", "heading"]
# The word-list trim's verdict, as evidence the model weighs (filters/extract_trim.py). Its line predicates
# (dates, bylines, ad labels, section labels, cookie notices) are not features of their own: they gained the
# model a fifth of a point of F1 on held-out folds, at the cost of a quarter of its features' time, and word lists
# read off a few sites carry over to others far less well than structure does.
RULES = ["trim_kept", "trim_found"]
TREE = ["in_main", "near_main", "no_block", "hops_from_main", "window_in_main", "main_share", "main_share_in"]
FEATURES = [*LINE_FEATURES, *CONTEXT, *(f"prev_{n}" for n in NEIGHBOUR), *(f"next_{n}" for n in NEIGHBOUR),
            *RULES, *TREE]
# Readability's floor: shorter blocks (a caption, a button) do not vote for their container.
MIN_VOTING_CHARS = 25


def line_features_python(line: str, link: float, keep: frozenset[str], title: str, blank_before: bool) -> list[float]:
    # Each split and each script regex runs once: this runs on every line of every page.
    stripped = line.strip()
    split = stripped.split()
    tokens = len(split)
    length, words = length_and_words(stripped, tokens)
    unspaced = words > 2 * tokens  # most of its words are CJK or Thai characters
    # The shares are read off the line's start: on a long paragraph they settle within a few hundred characters.
    if len(stripped) > SAMPLE_CHARS:
        head = stripped[:SAMPLE_CHARS]
        head_split = head.split()
        head_words = max(1, round(words * len(head) / len(stripped)))
    else:
        head, head_split, head_words = stripped, split, max(1, words)
    head_tokens = len(head_split) or 1
    return [
        math.log1p(length), math.log1p(words), link, float(stripped.endswith(_TERMINAL)),
        len(_PUNCT.findall(head)) / head_words, len(_DIGIT.findall(head)) / max(1, len(head)),
        sum(map(_CAPITALS.__contains__, [token[0] for token in head_split])) / head_tokens if tokens else 0.0,
        0.0 if unspaced or not tokens else sum(map((3).__ge__, map(len, head_split))) / head_tokens,
        float(unspaced), float(stripped in keep),
        float(len(stripped) >= 12 and " ".join(split).lower() in title),
        float(stripped.startswith("•")), float(blank_before), float(length >= 200 or words >= 30),
    ]


def features(lines: list[str], links: list[float], keep: frozenset[str], title: str, blanks: list[bool],
             containers: list[int], parents: list[int]) -> np.ndarray:
    """One row of FEATURES per line (the lines are not blank); `containers` and `parents` come from the fences
    (filters/extract_fences.py)."""
    if compiled:
        rows = compiled.line_rows(lines, links, keep, title, blanks, SAMPLE_CHARS, _TERMINAL, _CAPITALS)
    else:
        rows = [line_features_python(line, link, keep, title, blank)
                for line, link, blank in zip(lines, links, blanks, strict=True)]
    own = np.array(rows, dtype=np.float64)
    n = len(lines)
    log_len, link, terminal, heading = own[:, 0], own[:, 2], own[:, 3], own[:, 9]
    length = np.expm1(log_len)
    total = max(1.0, length.sum())
    before = np.cumsum(length) - length
    index = np.arange(n, dtype=np.float64)
    largest = int(np.argmax(length))
    mass = length * own[:, 13]
    long_before = (np.cumsum(mass) - mass) / max(1.0, mass.sum())
    context = np.column_stack([
        before / total, (total - before - length) / total, index / n, (n - 1 - index) / n,
        np.abs(index - largest) / n, (index > largest).astype(np.float64),
        long_before, 1.0 - long_before - mass / max(1.0, mass.sum()),
        window_mean(log_len), window_mean(link), window_mean(terminal),
        np.full(n, math.log1p(n)), np.full(n, math.log1p(total)),
    ])
    mine = np.column_stack([log_len, link, terminal, heading])
    prev = np.vstack([np.zeros((1, 4)), mine[:-1]])
    nxt = np.vstack([mine[1:], np.zeros((1, 4))])
    return np.hstack([own, context, prev, nxt, rule_features(lines, keep, title),
                      tree_features(length, containers, parents)])


def main_container(lengths: np.ndarray, containers: list[int], parents: list[int]) -> int:
    """The container with the most prose: each block of MIN_VOTING_CHARS or more counts its length for its
    container and half of it for the container around that."""
    votes: dict[int, float] = {}
    for container, length in zip(containers, lengths.tolist(), strict=True):
        if container != NO_CONTAINER and length >= MIN_VOTING_CHARS:
            votes[container] = votes.get(container, 0.0) + length
            if (parent := parents[container]) != NO_CONTAINER:
                votes[parent] = votes.get(parent, 0.0) + length / 2
    return max(votes, key=votes.__getitem__) if votes else NO_CONTAINER


def tree_features(lengths: np.ndarray, containers: list[int], parents: list[int]) -> np.ndarray:
    """TREE for each line: inside the main container, inside the one around it, in no known container, the
    log of the steps between them in the tree; and, over the page, the share of text inside."""
    main = main_container(lengths, containers, parents)
    rows = np.zeros((len(containers), 4))
    rows[:, 2] = 1.0
    if main != NO_CONTAINER:
        depth_of = {}  # main's ancestors, by their distance from it
        node, depth = main, 0
        while node != NO_CONTAINER:
            depth_of[node] = depth
            node, depth = parents[node], depth + 1
        seen: dict[int, tuple[float, float, float, float]] = {}
        for i, container in enumerate(containers):
            if container == NO_CONTAINER:
                continue
            if container not in seen:
                node, steps = container, 0
                while node not in depth_of:  # every chain ends at the page, container 0
                    node, steps = parents[node], steps + 1
                up = depth_of[node]
                seen[container] = (float(up == 0), float(up <= 1), 0.0, math.log1p(steps + up))
            rows[i] = seen[container]
    share = float(rows[:, 0] @ lengths) / max(1.0, float(lengths.sum()))
    return np.column_stack([rows, window_mean(rows[:, 0]), np.full(len(containers), share), rows[:, 0] * share])


def rule_features(lines: list[str], keep: frozenset[str], title: str) -> np.ndarray:
    kept = trim_kept(lines, keep=keep, title=title)
    in_trim = np.ones(len(lines))
    if kept is not None:
        in_trim[:] = 0.0
        in_trim[kept] = 1.0
    return np.column_stack([in_trim, np.full(len(lines), float(kept is not None))])


def window_mean(values: np.ndarray, radius: int = 2) -> np.ndarray:
    """The mean of each value and its `radius` neighbours on either side (zeros beyond the ends)."""
    padded = np.concatenate([np.zeros(radius + 1), values, np.zeros(radius)])
    sums = np.cumsum(padded)
    return (sums[2 * radius + 1 :] - sums[: -2 * radius - 1]) / (2 * radius + 1)


@cache
def load_model(path: str = str(MODEL)) -> dict:
    """The model file: feature names, scaling, weights and the two thresholds."""
    model = json.loads(Path(path).read_text())
    if model.get("features") != FEATURES:
        raise ValueError(f"{path}: its features are not this code's; retrain it with bench/train_boundary.py")
    for key in ("mean", "scale", "coef"):
        model[key] = np.array(model[key], dtype=np.float64)
    return model


@cache
def model_digest(path: str = str(MODEL)) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def probabilities(rows: np.ndarray, model: dict) -> np.ndarray:
    z = ((rows - model["mean"]) / model["scale"]) @ model["coef"] + model["intercept"]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def best_span(scores: np.ndarray) -> tuple[int, int]:
    """The run [start, end] with the largest sum of `scores` (Kadane); the best single line if all are negative."""
    best, best_span_ = -math.inf, (0, 0)
    running, start = 0.0, 0
    for i, score in enumerate(scores.tolist()):
        if running <= 0:
            running, start = 0.0, i
        running += score
        if running > best:
            best, best_span_ = running, (start, i)
    return best_span_


def blocks(text_lines: list[Line]) -> tuple[list[str], list[float], list[bool], list[int]]:
    """The non-blank lines of `text_lines`, their link shares, whether a blank line stood before each, and
    their containers."""
    lines, links, blanks, containers = [], [], [], []
    blank = False
    for line, link, container in text_lines:
        if not line.strip():
            blank = True
            continue
        lines.append(line)
        links.append(link)
        blanks.append(blank)
        containers.append(container)
        blank = False
    return lines, links, blanks, containers


def article_lines(text_lines: list[Line], keep: frozenset[str], title: str, parents: list[int],
                  model: dict | None = None) -> str:
    """The article part of `text_lines` (blank lines included), as text; `parents` is each container's."""
    model = model or load_model()
    lines, links, blanks, containers = blocks(text_lines)
    if not lines:
        return ""
    p = probabilities(features(lines, links, keep, title, blanks, containers, parents), model)
    start, end = best_span(p - model["span_threshold"])
    out: list[str] = []
    for i in range(start, end + 1):
        if p[i] >= model["drop_threshold"]:
            if out and blanks[i]:
                out.append("")
            out.append(lines[i])
    return "\n".join(out)
