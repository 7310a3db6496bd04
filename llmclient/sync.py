"""A synchronous client for OpenAI-compatible endpoints, for scripts, the quality annotator and the judge.

It is a thin face over the async client the synthetic-data stage uses (llmclient/client.py): the same
bounded concurrency, retries with back-off and jitter on 429, 5xx and dropped connections,
`Retry-After` in seconds or as an HTTP date, and optional request cache and rate limit.
`chat` raises LLMError naming the endpoint when a request cannot be answered; `chat_many` answers
many prompts at once, in order, with `None` (and a warning) where one failed, so a batch goes on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from llmclient.cache import RequestCache
from llmclient.client import AsyncLLMClient, Request, Result, run_sync
from llmclient.ratelimit import Limiter

log = logging.getLogger("winnow.llm")


class LLMError(RuntimeError):
    """The endpoint answered with an error that retrying will not fix, or kept failing."""


@dataclass
class LLMClient:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None  # default: $OPENAI_API_KEY
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    concurrency: int = 8
    limiter: Limiter | None = None
    cache: RequestCache | None = None

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY")
        self.stats: dict[str, Any] = {}

    def _client(self) -> AsyncLLMClient:
        return AsyncLLMClient(self.base_url, self.model, self.api_key, concurrency=self.concurrency,
                              timeout_s=self.timeout_s, max_retries=self.max_retries, backoff_s=self.backoff_s,
                              limiter=self.limiter, cache=self.cache)

    def run(self, requests: list[Request]) -> list[Result]:
        client = self._client()
        results = run_sync(client.run(requests))
        self.stats = client.stats.as_dict()
        return results

    def _one(self, prompt: list[dict[str, str]] | str, temperature: float, max_tokens: int, extra: Any) -> str:
        result = self.run([Request(prompt, {"temperature": temperature, "max_tokens": max_tokens, **extra})])[0]
        if result.status != "ok":
            raise LLMError(result.error or "no answer")
        return result.text or ""

    def chat(self, messages: list[dict[str, str]], temperature: float = 0.0, max_tokens: int = 512,
             **extra: Any) -> str:
        """One chat completion: the assistant's text."""
        return self._one(messages, temperature, max_tokens, extra)

    def complete(self, prompt: str, temperature: float = 0.0, max_tokens: int = 512, **extra: Any) -> str:
        return self._one(prompt, temperature, max_tokens, extra)

    def chat_many(self, conversations: list[list[dict[str, str]]], temperature: float = 0.0, max_tokens: int = 512,
                  **extra: Any) -> list[str | None]:
        """Many chats at once, answers in order; `None` where a chat failed for good."""
        sampling = {"temperature": temperature, "max_tokens": max_tokens, **extra}
        results = self.run([Request(c, sampling) for c in conversations])
        for result in results:
            if result.status != "ok":
                log.warning("LLM request failed: %s", result.error)
        return [r.text if r.status == "ok" else None for r in results]
