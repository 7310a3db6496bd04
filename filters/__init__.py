"""Document steps, one small module each. `STEPS` maps a config `type` to its class."""

from filters.base import Doc, Filter, Step, StepParams
from filters.decont import Decont
from filters.extract import Extract
from filters.heuristics import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from filters.langid import LangId
from filters.pii import Pii
from filters.quality import Quality
from filters.url import UrlFilter

STEPS: dict[str, type[Step]] = {
    cls.type_name: cls
    for cls in (UrlFilter, Extract, LangId, GopherRepetition, GopherQuality, C4Quality, FineWebQuality, Pii,
                Quality, Decont)
}

__all__ = ["STEPS", "Doc", "Filter", "Step", "StepParams"]
