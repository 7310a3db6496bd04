"""Choosing the next token for a batch whose rows each have their own sampling parameters.

Every row carries its temperature, top-k, top-p, min-p and random generator, as tensors of shape (B,),
so one batch can mix greedy rows with sampled ones at different settings. Sampling uses the
exponential race (argmax of p / E, E ~ Exp(1)), which draws exactly from p, with each row's noise
taken from that row's own generator: a row draws the same tokens whatever else shares its batch.

`SamplingRules` is the one statement of which parameters are valid. `winnow serve`'s request
bodies inherit its fields, and every `SamplingParams` is checked against it when made (`winnow
generate`, `winnow bestofn`, the synth stage's local generator), so every entry point accepts and
refuses the same values. Two rules keep extreme but valid values well defined, whatever float
precision the logits have:
- a temperature below `GREEDY_BELOW` is greedy (as vLLM does): dividing logits by a smaller one
  overflows, or rounds to 0 in float32, and the distribution is an argmax long before that;
- top-p always keeps the most likely token, so a tiny top-p (even one that rounds to 0 in float32)
  means "only the top token", never "no token at all".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

GREEDY_BELOW = 1e-5


class SamplingRules(BaseModel):
    """The sampling parameters every entry point takes, with their valid ranges (OpenAI's, plus
    top-k and min-p as vLLM defines them). Strict: a string or a bool is not a number."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    temperature: float = Field(1.0, ge=0, le=2)  # below GREEDY_BELOW: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # 0 or -1 (vLLM's spelling): off
    min_p: float = Field(0.0, ge=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)


class SamplingError(ValueError):
    """A sampling parameter outside its rules: which one (`field`) and what is wrong (`problem`)."""

    OPTIONS = {"max_new_tokens": "--max-tokens"}  # where a command-line option is not the field's name

    def __init__(self, field: str, problem: str):
        super().__init__(f"`{field}` {problem}")
        self.field, self.problem = field, problem

    @property
    def option(self) -> str:
        """The command-line option that sets this field (`winnow generate`, `winnow bestofn`)."""
        return self.OPTIONS.get(self.field, "--" + self.field.replace("_", "-"))


def check_sampling(values: dict) -> None:
    """Raise `SamplingError` for the first value in `values` that `SamplingRules` refuses."""
    try:
        SamplingRules.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        problem = error["msg"].removeprefix("Input ")
        raise SamplingError(str(error["loc"][0]), f"{problem} (got {error['input']!r:.40})") from None


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 (or below GREEDY_BELOW): greedy
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    best_of: int = 1

    def __post_init__(self) -> None:
        check_sampling({name: getattr(self, name) for name in SamplingRules.model_fields})
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 0:
            raise SamplingError("max_new_tokens", f"should be an integer >= 0 (got {self.max_new_tokens!r})")
        if isinstance(self.best_of, bool) or not isinstance(self.best_of, int) or self.best_of < 1:
            raise SamplingError("best_of", f"should be an integer >= 1 (got {self.best_of!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


class RowParams:
    """The sampling parameters of the rows still decoding, as (B,) tensors on the model's device."""

    def __init__(self, params: list[SamplingParams], seeds: list[int], device: torch.device):
        self.greedy = torch.tensor([p.greedy for p in params], device=device)
        self.temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=device)
        self.top_k = torch.tensor([min(p.top_k, 1 << 31) for p in params], device=device)  # past the vocabulary: off
        self.top_p = torch.tensor([p.top_p for p in params], device=device)
        self.min_p = torch.tensor([p.min_p for p in params], device=device)
        self.all_greedy = all(p.greedy for p in params)
        self.any_top_k = any(p.top_k > 0 for p in params)
        self.any_top_p = any(p.top_p < 1.0 for p in params)
        self.any_min_p = any(p.min_p > 0 for p in params)
        self.generators = [None if p.greedy else torch.Generator(device=device).manual_seed(s % (1 << 63))
                           for p, s in zip(params, seeds, strict=True)]

    def keep(self, rows: torch.Tensor, kept: list[int]) -> None:
        """Keep only the rows at `rows` (the others finished)."""
        for name in ("greedy", "temperature", "top_k", "top_p", "min_p"):
            setattr(self, name, getattr(self, name)[rows])
        self.generators = [self.generators[i] for i in kept]


def filter_logits(logits: torch.Tensor, rp: RowParams) -> torch.Tensor:
    """Temperature, then top-k, min-p and top-p per row, as masks on the logits (-inf where cut)."""
    logits = logits.float() / rp.temperature[:, None]
    if rp.any_top_k:
        k = rp.top_k.clamp(max=logits.size(-1))
        top = torch.topk(logits, int(k.max()), dim=-1).values
        kth = top.gather(-1, (k - 1).clamp(min=0)[:, None])
        kth = torch.where(k[:, None] > 0, kth, torch.full_like(kth, float("-inf")))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if rp.any_min_p:
        probs = torch.softmax(logits, dim=-1)
        floor = rp.min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    if rp.any_top_p:
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        cut_sorted = (before >= rp.top_p[:, None]) & (rp.top_p[:, None] < 1.0)
        cut_sorted[:, 0] = False  # the most likely token stays, however small top-p is
        cut = torch.zeros_like(cut_sorted).scatter(-1, order, cut_sorted)
        logits = logits.masked_fill(cut, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, rp: RowParams, want_logprobs: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token ids (B,) and, when asked, their log-probabilities (under each row's filtered
    distribution; a greedy row's under its plain softmax)."""
    if rp.all_greedy:  # the common data-writing case: one argmax, no softmax over the vocabulary
        ids = logits.argmax(-1)
        if not want_logprobs:
            return ids, None
        chosen = logits.gather(-1, ids[:, None])[:, 0].float()
        return ids, chosen - torch.logsumexp(logits.float(), -1)
    filtered = filter_logits(logits, rp)
    probs = torch.softmax(filtered, dim=-1)
    race = torch.empty_like(probs)
    for row, generator in enumerate(rp.generators):
        if generator is None:
            race[row].fill_(1.0)
        else:
            race[row].exponential_(generator=generator)
    ids = torch.where(rp.greedy, logits.argmax(-1), (probs / race).argmax(-1))
    if not want_logprobs:
        return ids, None
    plain = torch.log_softmax(logits.float(), -1)
    logprobs = torch.where(rp.greedy[:, None], plain, torch.log_softmax(filtered, -1))
    return ids, logprobs.gather(-1, ids[:, None])[:, 0]
