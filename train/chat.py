"""A model's own chat template: rendering it safely, and encoding examples with it.

Published models ship their prompt format as a Jinja template (`chat_template` in
`tokenizer_config.json`). It is rendered in Jinja's sandbox, with the helpers Hugging Face templates
call (`raise_exception`, `strftime_now`), so a template can format text but not reach Python.

For training, the loss mask comes from rendering twice: the conversation up to an assistant turn
(with the generation prompt) and the conversation through that turn. The first must be a token
prefix of the second; the tokens after it are the answer. A template that drops or rewrites
earlier turns (some strip reasoning from past answers) breaks that, and is reported, not guessed at.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from train.tokenizer import TOKENIZER_CONFIG, Vocab


class TemplateError(ValueError):
    pass


@lru_cache(maxsize=8)
def compile_template(template: str) -> Any:
    from jinja2 import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except JinjaError as exc:
        raise TemplateError(f"does not parse: {exc}") from exc


def resolve_template(vocab: Vocab, template: str | None) -> str | None:
    """`auto`: the model's own chat template when its tokenizer has one, else `chat` when it has role
    tokens, else `alpaca`. `model` insists on the model's own."""
    if template == "auto":
        return "model" if vocab.chat_template else "chat" if {"user", "assistant"} <= set(vocab.role_ids) else "alpaca"
    if template == "model" and not vocab.chat_template:
        raise TemplateError(f"{template_file(vocab)}: no chat_template, so `template: model` has nothing to use; "
                            "use alpaca or chat, or a model imported with its chat template")
    return template


def template_file(vocab: Vocab) -> str:
    """Where the template lives: `tokenizer_config.json` beside the tokenizer (or the GGUF file)."""
    return str(Path(vocab.path).with_name(TOKENIZER_CONFIG)) if vocab.path.endswith(".json") else vocab.path


def render(vocab: Vocab, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The conversation as the model's chat template writes it."""
    if not vocab.chat_template:
        raise TemplateError(f"{template_file(vocab)}: no chat_template; this model has no chat format")
    try:
        template = compile_template(vocab.chat_template)
    except TemplateError as exc:
        raise TemplateError(f"{template_file(vocab)}: chat_template: {exc}") from exc
    names = {"bos_token": vocab.tokenizer.id_to_token(vocab.bos_id),
             "eos_token": vocab.tokenizer.id_to_token(vocab.eos_id),
             "pad_token": vocab.tokenizer.id_to_token(vocab.pad_id)}
    try:
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **names)
    except TemplateError as exc:  # the template's own raise_exception
        raise TemplateError(f"{template_file(vocab)}: chat_template refused the conversation: {exc}") from exc
    except Exception as exc:  # a template is code: any failure in it is the template's
        raise TemplateError(f"{template_file(vocab)}: chat_template failed to render: "
                            f"{type(exc).__name__}: {exc}") from exc


def prompt_tokens(vocab: Vocab, messages: list[dict[str, str]]) -> list[int]:
    """What the model sees before it answers: the conversation and the assistant's opening."""
    return vocab.encode(render(vocab, messages, add_generation_prompt=True))


def encode_conversation(vocab: Vocab, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Tokens of a whole conversation and a mask that is 1 on each assistant turn's tokens (what the
    template writes after the generation prompt, its end-of-turn token included)."""
    if not any(m["role"] == "assistant" for m in messages):
        raise TemplateError("a training conversation needs at least one assistant turn")
    tokens: list[int] = []
    mask: list[int] = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        prefix = prompt_tokens(vocab, messages[:k])
        full = vocab.encode(render(vocab, messages[:k + 1], add_generation_prompt=False))
        if full[:len(prefix)] != prefix or full[:len(tokens)] != tokens or len(prefix) < len(tokens):
            raise TemplateError(f"{template_file(vocab)}: chat_template does not render turn {k} after the earlier "
                                "ones (the prompt is not a token prefix of the conversation); use template: chat "
                                "or alpaca")
        mask += [0] * (len(prefix) - len(tokens)) + [1] * (len(full) - len(prefix))
        tokens = full
    return tokens, mask
