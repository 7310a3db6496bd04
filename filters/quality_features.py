"""Document features for the quality score, and the small logistic model that combines them.

A bag of words learns topic (encyclopedic against commercial) more than form. Human judgements of
web pages also reward form: enough text, lines that are sentences, ordinary function words, no
repeated boilerplate, few symbols and bullets. These are the heuristic filters' own signals, kept as
numbers instead of pass/fail, plus the fastText classifier's log-odds. The combiner is a logistic
model over the standardized features, stored as a few numbers in JSON beside the fastText model, so
the score is P(good) under the training mix and the same JSON gives the same scores everywhere.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = [
    "fasttext_logit",  # log-odds of the fastText model's positive class
    "log_words",  # log(1 + words): informative pages have something to say
    "punct_lines",  # share of non-empty lines that end like a sentence (C4's rule, as a fraction)
    "log_line_words",  # log(1 + mean words per non-empty line): paragraphs rather than menus
    "short_lines",  # share of non-empty lines under 30 characters (FineWeb's short-line signal)
    "word_len",  # mean word length, clipped to [2, 12]
    "stop_ratio",  # share of words that are common English function words (Gopher's stop-word rule)
    "alpha_ratio",  # share of words with a letter (Gopher)
    "symbol_ratio",  # '#', '...', '|', '>' and bullets per word (Gopher)
    "dup_lines",  # share of characters in lines that occur more than once (Gopher repetition)
    "bullet_lines",  # share of lines that start with a bullet (Gopher)
    "upper_ratio",  # share of words in capitals
    "digit_ratio",  # share of characters that are digits
    "unique_words",  # distinct words / words, over the first 1,000 words
]

_STOP = frozenset("""
the be to of and a in that have i it for not on with he as you do at this but his by from they we say her
she or an will my one all would there their what so up out if about who get which go me when make can like
time no just him know take people into year your good some could them see other than then now look only come
its over think also back after use two how our work first well way even new want because any these give day
most us is are was were been has had did does said its it's don't i'm
""".split())
_WORD = re.compile(r"\w+(?:['\u2019]\w+)?")
_TERMINAL = ('.', '!', '?', '"', "'", '\u201d', '\u2019', ')', ':', '\u3002')
_BULLETS = ('\u2022', '\u25cf', '\u25aa', '\u2023', '\u2043', '- ', '* ', '\u00b7', '>')
_DIGIT = re.compile(r"\d")
_SYMBOLS = re.compile(r"#|\.\.\.|\u2026|\||\u2022|\u25cf|>|\u00bb|\u00ab")


def features(text: str, sample_chars: int = 20_000) -> list[float]:
    """The form features of FEATURES[1:] for one document (the fastText log-odds comes separately).
    Length is counted on the whole text; the ratios on its first `sample_chars` characters."""
    n_words = len(text.split())
    head = text[:sample_chars]
    lines = [line for line in map(str.strip, head.split("\n")) if line]
    n_lines = max(len(lines), 1)
    words = _WORD.findall(head)
    n = max(len(words), 1)
    lower = list(map(str.lower, words))
    line_counts = Counter(lines)
    dup_chars = sum(len(line) * k for line, k in line_counts.items() if k > 1)
    line_chars = max(sum(map(len, lines)), 1)
    return [
        math.log1p(n_words),
        sum(line.endswith(_TERMINAL) for line in lines) / n_lines,
        math.log1p(len(words) / n_lines),
        sum(len(line) < 30 for line in lines) / n_lines,
        min(max(sum(map(len, words)) / n, 2.0), 12.0),
        sum(map(_STOP.__contains__, lower)) / n,
        sum(not w.isdigit() for w in words) / n,
        min(len(_SYMBOLS.findall(head)) / n, 1.0),
        dup_chars / line_chars,
        sum(line.startswith(_BULLETS) for line in lines) / n_lines,
        sum(map(str.isupper, words)) / n,
        len(_DIGIT.findall(head)) / max(len(head), 1),
        len(set(lower[:1000])) / max(min(len(lower), 1000), 1),
    ]


def feature_matrix(texts: list[str], fasttext_prob: np.ndarray) -> np.ndarray:
    """One row per text, columns in FEATURES order."""
    p = np.clip(np.asarray(fasttext_prob, dtype=float), 1e-4, 1 - 1e-4)
    form = np.array([features(t) for t in texts], dtype=float).reshape(len(texts), len(FEATURES) - 1)
    return np.column_stack([np.log(p / (1 - p)), form])


class Combiner:
    """A standardized logistic regression over FEATURES: P(good) = sigmoid(w . (x - mean) / scale + b)."""

    def __init__(self, spec: dict[str, Any]):
        if spec.get("features") != FEATURES:
            raise ValueError(f"combiner features {spec.get('features')} do not match this Winnow's {FEATURES}")
        self.spec = spec
        self.mean = np.array(spec["mean"])
        self.scale = np.array(spec["scale"])
        self.weights = np.array(spec["weights"])
        self.bias = float(spec["bias"])

    @classmethod
    def load(cls, path: Path) -> Combiner:
        try:
            return cls(json.loads(path.read_text()))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not a quality combiner ({exc})") from None

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-self.logits(x)))


# The direction each signal pushes the score: the heuristics' papers' direction (0: not used by the
# unit-weight combiner, free in a fitted one).
SIGNS = {"fasttext_logit": 1, "log_words": 1, "punct_lines": 1, "log_line_words": 1, "short_lines": -1,
         "word_len": 0, "stop_ratio": 1, "alpha_ratio": 1, "symbol_ratio": -1, "dup_lines": -1,
         "bullet_lines": -1, "upper_ratio": -1, "digit_ratio": -1, "unique_words": 0}


def fit_combiner(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, mode: str = "unit",
                 l2: float = 1.0) -> dict[str, Any]:
    """The combiner for features `x` and labels `y` (deterministic for the same inputs).

    `unit` (the default): every standardized feature counts with weight +1 or -1, its sign in SIGNS,
    and only a slope and an intercept are fitted, which calibrates the sum into P(good). Labels by
    source carry their sources' quirks (C4 kept only lines ending in punctuation; instruction answers
    are short), and weights fitted on a few sources learn those quirks: on sources left out of training
    they rank worse than unit weights (bench/quality.py). `fitted`: a weighted, L2-regularized logistic
    regression over all features, each weight bounded to its sign.
    """
    weight = np.ones(len(y)) if weight is None else weight / weight.mean()
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    signs = np.array([SIGNS[f] for f in FEATURES], dtype=float)
    if mode == "unit":
        slope, bias = _logistic(z @ signs[:, None], y, weight, l2, [(0, None)])
        weights = slope * signs
    elif mode == "fitted":
        bounds = [(0, None) if s > 0 else (None, 0) if s < 0 else (None, None) for s in signs]
        weights, bias = _logistic(z, y, weight, l2, bounds)
    else:
        raise ValueError(f"combiner mode {mode!r}: use 'unit' or 'fitted'")
    return {"features": FEATURES, "mode": mode, "mean": _r(mean), "scale": _r(scale), "weights": _r(weights),
            "bias": round(float(bias), 6)}


def _logistic(z: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float,
              bounds: list[tuple[float | None, float | None]]) -> tuple[np.ndarray, float]:
    """Weighted logistic regression with an L2 penalty on the weights, by L-BFGS-B within `bounds`."""
    from scipy.optimize import minimize

    y = y.astype(float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        t = z @ w + b
        # log(1 + e^t) - y t, stably; its gradient is sigmoid(t) - y.
        nll = weight * (np.logaddexp(0, t) - y * t)
        g = weight * (1 / (1 + np.exp(-t)) - y)
        grad = np.append(z.T @ g, g.sum()) / len(y)
        grad[:-1] += l2 * w / len(y)
        return float(nll.mean() + 0.5 * l2 * (w @ w) / len(y)), grad

    result = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds + [(None, None)])
    return result.x[:-1], float(result.x[-1])


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]
