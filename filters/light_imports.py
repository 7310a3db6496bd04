"""spaCy and presidio without the deep-learning stacks they import but these steps never run.

Importing spaCy imports thinc, which imports torch when it is installed (about 2.5 CPU-seconds); importing
presidio_analyzer also imports its Hugging Face NLP engine and with it transformers' pipelines (about 3
more). Winnow installs both for its trainer, so every Ray worker that ran a heuristics or PII step paid
5-6 CPU-seconds for libraries these steps never call: they use spaCy's rule-based tokenizers, presidio's
pattern recognizers and, for names, spaCy's CNN pipelines, which run on numpy.

While spaCy and presidio load for the first time in a process, torch and transformers read as not
installed; afterwards either imports as usual for any code that wants it. A spaCy pipeline built on
transformers (`*_trf`) needs torch through thinc, so `keep_torch=True` leaves it visible.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

HIDDEN = ("transformers", "torch")


@contextmanager
def without_deep_learning(keep_torch: bool = False) -> Iterator[None]:
    hidden = [m for m in HIDDEN if m not in sys.modules and not (keep_torch and m == "torch")]
    if "thinc" in sys.modules and "presidio_analyzer" in sys.modules:
        hidden = []  # both already loaded: nothing left to save
    for module in hidden:
        sys.modules[module] = None  # type: ignore[assignment] - import machinery: None means "not installed"
    try:
        yield
    finally:
        for module in hidden:
            if sys.modules.get(module, "") is None:
                del sys.modules[module]
