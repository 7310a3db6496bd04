"""`winnow quality train`: a fastText quality classifier from labelled text, with a validation report.

Inputs are Parquet or JSONL files with a text column: either two sets (positives and negatives),
or one labelled set with a label column (two classes, or an ordinal 0-5 score such as
FineWeb-Edu's). The split into training and validation is by a hash of the text, so it is
deterministic and the same text never lands on both sides. fastText trains on one thread with a
fixed seed, so the same inputs give the same model bytes.

The report (`<model>.json` next to the model) holds accuracy, ROC AUC, precision and recall at the
threshold, and score percentiles of the validation negatives: the quality step turns
`top_fraction: 0.1` into "at least as good as the best 10% of these negatives", the DCLM way of
picking a cut from a reference pool.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import xxhash
from scipy.stats import rankdata

from filters.quality import class_scores, normalize, score_from


def read_texts(paths: Iterable[str | Path], text_column: str = "text",
               label_column: str | None = None) -> list[tuple[str, Any]]:
    """(text, label or None) from Parquet, JSONL or JSONL.gz files."""
    rows: list[tuple[str, Any]] = []
    for path in map(Path, paths):
        if path.suffix == ".parquet" or path.is_dir():
            columns = [text_column] + ([label_column] if label_column else [])
            table = pq.read_table(path, columns=columns)
            labels = table.column(label_column).to_pylist() if label_column else [None] * table.num_rows
            rows += list(zip(table.column(text_column).to_pylist(), labels, strict=True))
        else:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        rows.append((record[text_column], record.get(label_column) if label_column else None))
    return [(t, lab) for t, lab in rows if t]


def split(rows: list[tuple[str, str]], validation: float,
          groups: list[str] | None = None) -> tuple[list, list]:
    """Deterministic split by a hash of each row's group (its source document), else of its text,
    so passages of one document never sit on both sides."""
    cut = int(validation * 2**32)
    train, valid = [], []
    for i, (text, label) in enumerate(rows):
        key = groups[i] if groups is not None else text
        (valid if xxhash.xxh32_intdigest(key.encode()) < cut else train).append((text, label))
    return train, valid


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))  # tied scores share their average rank
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _fit(fit_args: dict[str, Any], quantize: bool, out: str) -> None:
    """Train and save, in a fresh process. The same fastText call in a process that has already
    trained once gave a different model here; a fresh process gives the same bytes every time."""
    import fasttext

    model = fasttext.train_supervised(**fit_args)
    if quantize:
        model.quantize(input=fit_args["input"], retrain=False, qnorm=True, cutoff=50_000)
    model.save_model(out)


def fit(rows: list[tuple[str, str]], out: str | Path, epoch: int = 20, dim: int = 32, word_ngrams: int = 2,
        bucket: int = 200_000, lr: float = 0.1, seed: int = 0, quantize: bool = True) -> dict[str, Any]:
    """Train fastText on (text, label) rows and save `out`; return the training parameters."""
    out = Path(out)
    # fastText stores its input path in the model: a name derived from `out` keeps the bytes reproducible.
    out.parent.mkdir(parents=True, exist_ok=True)
    train_file = str(out.parent / f".{out.name}.train.txt")
    with open(train_file, "w") as f:
        for text, label in rows:
            f.write(f"__label__{label} {normalize(text)}\n")
    fit_args = {"input": train_file, "epoch": epoch, "dim": dim, "wordNgrams": word_ngrams, "bucket": bucket,
                "lr": lr, "minCount": 2, "thread": 1, "seed": seed, "verbose": 0}
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(_fit, (fit_args, quantize, str(out)))
    finally:
        Path(train_file).unlink()
    return {"epoch": epoch, "dim": dim, "wordNgrams": word_ngrams, "bucket": bucket, "lr": lr, "seed": seed,
            "quantize": quantize}


def train(rows: list[tuple[str, str]], out: str | Path, positive: str = "hq", validation: float = 0.1,
          threshold: float = 0.5, epoch: int = 20, dim: int = 32, word_ngrams: int = 2, bucket: int = 200_000,
          lr: float = 0.1, seed: int = 0, quantize: bool = True, groups: list[str] | None = None) -> dict[str, Any]:
    """Train, validate, save `out` (.bin or .ftz) and `out`.json; return the report."""
    import fasttext

    out = Path(out)
    labels = sorted({str(label) for _, label in rows})
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, got {labels}")
    train_rows, valid_rows = split(rows, validation, groups)
    if not valid_rows:
        raise ValueError(f"validation share {validation} leaves no rows to validate on")
    params = fit(train_rows, out, epoch=epoch, dim=dim, word_ngrams=word_ngrams, bucket=bucket, lr=lr, seed=seed,
                 quantize=quantize)
    model = fasttext.load_model(str(out))

    texts = [t for t, _ in valid_rows]
    truth = np.array([str(lab) for _, lab in valid_rows])
    probs = class_scores(model, texts, labels)
    predicted = np.array(labels)[probs.argmax(axis=1)]
    report: dict[str, Any] = {"labels": labels, "train_rows": len(train_rows), "validation_rows": len(valid_rows),
                              "accuracy": round(float((predicted == truth).mean()), 4),
                              "params": params}
    if len(labels) == 2:
        negative = next(lab for lab in labels if lab != positive)
        scores = score_from(probs, labels, positive)
        is_pos = truth == positive
        chosen = scores >= threshold
        report |= {
            "positive": positive, "negative": negative, "threshold": threshold,
            "auc": round(roc_auc(scores, is_pos), 4),
            "precision": round(float((chosen & is_pos).sum() / max(chosen.sum(), 1)), 4),
            "recall": round(float((chosen & is_pos).sum() / max(is_pos.sum(), 1)), 4),
            # Percentiles 0..100 of the negatives' scores: `top_fraction` thresholds come from these.
            "negative_score_percentiles": [round(float(v), 6) for v in np.percentile(scores[~is_pos],
                                                                                     np.arange(101))]
            if (~is_pos).any() else [],
        }
    else:
        expected = score_from(probs, labels, positive)
        report |= {"mean_abs_error": round(float(np.abs(expected - truth.astype(float)).mean()), 4)}
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(report, indent=1))
    return report
