"""A small client for OpenAI-compatible endpoints (vLLM, TGI, llama.cpp, OpenAI, `winnow serve`).

Standard library only. Retries 429 and 5xx answers and dropped connections with exponential
back-off, honours `Retry-After`, and runs many prompts at once on a thread pool, returning the
answers in prompt order. A prompt that still fails after its retries gives `None` and a
warning naming the endpoint and the error, so one bad answer does not end a batch job.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY")

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(payload).encode()
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(f"{self.base_url}{path}", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code != 429 and exc.code < 500:
                    raise LLMError(f"{self.base_url}{path}: HTTP {exc.code}: {detail}") from None
                wait = float(exc.headers.get("Retry-After") or delay)
                error = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                wait, error = delay, repr(exc)
            if attempt == self.max_retries:
                raise LLMError(f"{self.base_url}{path}: gave up after {attempt + 1} tries: {error}")
            time.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def chat(self, messages: list[dict[str, str]], temperature: float = 0.0, max_tokens: int = 512,
             **extra: Any) -> str:
        """One chat completion: the assistant's text."""
        answer = self._post("/chat/completions", {"model": self.model, "messages": messages,
                                                  "temperature": temperature, "max_tokens": max_tokens, **extra})
        return answer["choices"][0]["message"]["content"]

    def complete(self, prompt: str, temperature: float = 0.0, max_tokens: int = 512, **extra: Any) -> str:
        answer = self._post("/completions", {"model": self.model, "prompt": prompt, "temperature": temperature,
                                             "max_tokens": max_tokens, **extra})
        return answer["choices"][0]["text"]

    def chat_many(self, conversations: list[list[dict[str, str]]], **kwargs: Any) -> list[str | None]:
        """Many chats at once, answers in order; `None` where a chat failed for good."""

        def one(messages: list[dict[str, str]]) -> str | None:
            try:
                return self.chat(messages, **kwargs)
            except (LLMError, KeyError, IndexError) as exc:
                log.warning("LLM request failed: %s", exc)
                return None

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, conversations))
