"""Request bodies of `winnow serve`, checked before any work starts.

Every field has its type checked strictly (a string is not a number, a float is not an integer,
`true` is not 1), its range checked, and unknown fields are refused: a misspelt `max_token` would
otherwise be ignored and the answer would silently use the default. The sampling parameters and
their ranges are `train/sampling.SamplingRules`, the rules `winnow generate` and `winnow bestofn`
apply too. Fields OpenAI defines but the server does not implement (penalties, `logit_bias`,
`suffix`) are refused unless they ask for the default. Whatever fails becomes one 400 answer
naming the field.

`max_tokens: 0` is valid for completions and generates nothing: with `echo: true` and `logprobs`
it scores the prompt, as OpenAI's legacy API and lm-evaluation-harness use it. Chat needs at least 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from train.sampling import SamplingRules

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
NonEmpty = Annotated[str, Field(min_length=1)]


@dataclass
class Limits:
    """What one request may ask for; past these a request gets a 400 that names the limit."""

    max_prompts: int = 32  # prompts in one completions request
    max_samples: int = 8  # `n` and `best_of`
    max_logprobs: int = 20  # alternatives per position
    max_body_bytes: int = 8 << 20
    read_timeout_s: float = 60.0  # a client silent this long (a body shorter than its Content-Length) is dropped


class Common(SamplingRules):
    """The fields of both endpoints: the sampling parameters (`SamplingRules`: the rules `winnow
    generate` and `winnow bestofn` apply too) and OpenAI's other common fields."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    model: str | None = None
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=16)] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    # Accepted so that clients that always send them work; they change nothing in the answer.
    user: str | None = None
    stream_options: dict[str, Any] | None = None
    # OpenAI's, not implemented here: only the value that means "off" is accepted.
    presence_penalty: float = Field(0.0, ge=0, le=0)
    frequency_penalty: float = Field(0.0, ge=0, le=0)
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Common):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: int | None = Field(16, ge=0)  # None: OpenAI's default, 16
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string, or token ids as given."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]  # one prompt of token ids
        return list(p)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # e.g. `name`: no effect on a Winnow template
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)  # None: what the context leaves, as OpenAI does
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None
    top_logprobs: None = None

    @field_validator("messages")
    @classmethod
    def ends_with_a_question(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role == "assistant":
            raise ValueError("the last message must be from the user or the system, not the assistant")
        return messages


class BadRequest(ValueError):
    """A request the server will not run: a message for the client and the field it is about."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# How a field's type reads in an error message, where pydantic would list every branch of a union.
SHAPES = {"prompt": "a string, a list of strings, a list of token ids, or a list of lists of token ids",
          "stop": "a non-empty string or a list of at most 16 non-empty strings",
          "messages": "a non-empty list of {role: system|user|assistant, content: string}"}


UNSUPPORTED = {"presence_penalty", "frequency_penalty", "logit_bias", "suffix", "top_logprobs"}


def describe(error: ValidationError, chat: bool = False) -> BadRequest:
    """One readable message for all of a request's problems, naming each field."""
    problems: dict[str, str] = {}
    for e in error.errors():
        loc = [str(part) for part in e["loc"]]
        if e["type"] == "json_invalid":
            return BadRequest(f"the body is not valid JSON: {e['msg'].removeprefix('Invalid JSON: ')}")
        if not loc:
            return BadRequest("the body must be a JSON object")
        field = loc[0]
        msg = e["msg"].removeprefix("Input ").removeprefix("Value error, ")
        got = "" if isinstance(e.get("input"), dict | list) else f" (got {e.get('input')!r:.40})"
        if e["type"] == "extra_forbidden" and len(loc) == 1:
            problems.setdefault(field, "is not a field this server knows")
        elif e["type"] == "missing" and len(loc) == 1:
            problems.setdefault(field, "is required")
        elif field in UNSUPPORTED or (chat and field == "logprobs"):
            problems.setdefault(field, "is not supported by this server; leave it out")
        elif field in SHAPES and (len(loc) > 1 and not loc[1].isdigit() or field in problems):
            problems[field] = f"must be {SHAPES[field]}"
        elif len(loc) == 1:
            problems.setdefault(field, f"{msg}{got}")
        else:
            problems.setdefault(field, f"at {'.'.join(loc[1:])}: {msg}{got}")
    first = next(iter(problems))
    return BadRequest("; ".join(f"`{field}` {text}" for field, text in problems.items()), first)


def parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise describe(exc, model is ChatRequest) from None


def check_limits(request: CompletionRequest | ChatRequest, limits: Limits) -> None:
    """The caps on work per request, and the combinations the server cannot answer."""
    best_of = getattr(request, "best_of", None)
    if request.n > limits.max_samples:
        raise BadRequest(f"`n` is {request.n}; this server allows at most {limits.max_samples} "
                         "(winnow serve --max-samples)", "n")
    if best_of is not None and best_of > limits.max_samples:
        raise BadRequest(f"`best_of` is {best_of}; this server allows at most {limits.max_samples} "
                         "(winnow serve --max-samples)", "best_of")
    if best_of is not None and best_of < request.n:
        raise BadRequest(f"`best_of` ({best_of}) must be at least `n` ({request.n})", "best_of")
    if isinstance(request, CompletionRequest):
        count = len(request.prompts())
        if count > limits.max_prompts:
            raise BadRequest(f"`prompt` holds {count} prompts; this server allows at most {limits.max_prompts} "
                             "(winnow serve --max-prompts)", "prompt")
        if request.logprobs is not None and request.logprobs > limits.max_logprobs:
            raise BadRequest(f"`logprobs` is {request.logprobs}; at most {limits.max_logprobs}", "logprobs")
        if request.stream and (request.echo or request.logprobs is not None):
            raise BadRequest("`echo` and `logprobs` are not available with `stream`", "stream")
        if request.stream and count != 1:
            raise BadRequest("`stream` takes one `prompt`, not a list", "prompt")
    if request.stream and (request.n > 1 or (best_of or 1) > 1):
        raise BadRequest("`n` and `best_of` above 1 cannot be streamed", "n" if request.n > 1 else "best_of")
