"""An async client for OpenAI-compatible endpoints (vLLM, SGLang, llama.cpp, OpenAI, `winnow serve`).

aiohttp sends, tenacity retries, and the request cache makes every completed answer permanent:

- at most `concurrency` requests in flight, and the endpoint's rate limit (ratelimit.py) before each try;
- 429, 408, 5xx, timeouts and dropped connections are retried with exponential back-off and full
  jitter, or after the server's `Retry-After` (seconds or an HTTP date), up to `max_retries` times;
- any other 4xx is the request's own fault: it is recorded (and cached, so a rerun does not pay for it
  again) and the job goes on; 401, 403 and 404 are not cached, as they are the endpoint's setup;
- an HTTP 200 is an answer only when it holds a choice with text: an `error` body under a 200 (proxies
  and some servers answer an overload that way) is retried when it looks transient and otherwise
  recorded as a bad request, but never cached, so a rerun asks again;
- an answer is cached before anything else is read from it: a malformed `usage` is counted
  (`bad_usage`) and its tokens estimated, never a failure;
- a cache hit sends nothing;
- with an `owner` (a callable that raises once the job the requests are for has ended), `owner` is
  called every `owner_check_s` while requests are in flight; when it raises, every request still in
  flight or waiting is cancelled and its error propagates (the answers already received stay cached).

`run` returns one Result per request, in request order, never raising for a request's failure.

aiohttp rather than httpx: on the project's 2-core test machine httpx's async client spent 19 ms of
client time per sequential loopback request against aiohttp's 4.5 ms, and fell further behind with
many requests in flight (bench/llm_client.py measures the client against its peers).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from llmclient.cache import RequestCache, request_key
from llmclient.ratelimit import Limiter, NoLimit

log = logging.getLogger("winnow.llm.client")
T = TypeVar("T")

RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx
UNCACHED_STATUS = {401, 403, 404}  # the endpoint's configuration, not the request: a rerun should ask again
# Words in an error body under HTTP 200 that say "try again later" rather than "this request is wrong".
TRANSIENT = re.compile(r"overload|rate.?limit|too many|timeout|timed out|unavailable|capacity|busy|try again|"
                       r"temporar|server.?error|internal|503|502|504|529|429", re.IGNORECASE)


@dataclass
class Request:
    """One prompt: chat messages (a list) or raw text (a string), its sampling parameters, and which
    sample of that prompt it is (best-of-N and n>1 send one request per sample)."""

    prompt: list[dict[str, str]] | str
    sampling: dict[str, Any] = field(default_factory=dict)
    sample: int = 0

    def key(self, model: str) -> str:
        return request_key(model, self.prompt, self.sampling, self.sample)


@dataclass
class Result:
    text: str | None
    status: str  # "ok", "bad_request" (a 4xx, skipped) or "failed" (retries exhausted)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached: bool = False
    error: str | None = None


@dataclass
class ClientStats:
    requests: int = 0  # HTTP requests sent, every try counted
    completed: int = 0  # answers received in this run
    cache_hits: int = 0
    retries: int = 0
    bad_requests: int = 0
    failed: int = 0
    bad_usage: int = 0  # answers whose `usage` could not be read: their tokens are estimated
    prompt_tokens: int = 0  # tokens of the answers received in this run (what was paid for)
    completion_tokens: int = 0
    retry_causes: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "retry_causes"}
        out["retry_causes"] = dict(sorted(self.retry_causes.items()))
        return out


class Retryable(Exception):
    def __init__(self, cause: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.cause, self.retry_after = cause, retry_after


class BadRequest(Exception):
    """The request's own fault; `cacheable` when a rerun would get the same refusal (a real 4xx)."""

    def __init__(self, status: int, message: str, cacheable: bool | None = None):
        super().__init__(message)
        self.status = status
        self.cacheable = status not in UNCACHED_STATUS if cacheable is None else cacheable


def answer_text(body: Any) -> str | None:
    """The text of the first choice of an HTTP 200 body (chat or completions), or None when it holds none."""
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _not_an_answer(url: str, body: Any) -> Exception:
    """What a 200 without an answer means: a transient-looking `error` (or no body at all) is retried;
    any other error is the request's fault, recorded but not cached (it was never an answer)."""
    error = body.get("error") if isinstance(body, dict) else None
    detail = orjson.dumps(error if error is not None else body)[:300].decode(errors="replace")
    message = f"{url}: HTTP 200 without an answer: {detail}"
    if error is None or TRANSIENT.search(detail):
        return Retryable("200_error", message)
    return BadRequest(200, message, cacheable=False)


def _count(value: Any) -> int | None:
    """A token count from `usage`, or None when it is not a plain non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
        return None
    return int(value)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date; None when absent
    or unreadable (the caller then backs off on its own)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Wait:
    """Full-jitter exponential back-off, or the server's Retry-After (plus a little jitter) when given."""

    def __init__(self, base_s: float, max_s: float, retry_after_max_s: float):
        self.base_s, self.max_s, self.retry_after_max_s = base_s, max_s, retry_after_max_s

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry_after_max_s) + random.uniform(0, self.base_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** (state.attempt_number - 1)))


def estimate_tokens(request: Request) -> int:
    """Prompt plus completion tokens, before sending: about four characters a token."""
    text = request.prompt if isinstance(request.prompt, str) else "".join(m.get("content", "") for m in request.prompt)
    return len(text) // 4 + _max_tokens(request)


def _max_tokens(request: Request) -> int:
    return _count(request.sampling.get("max_tokens", 256)) or 0


class AsyncLLMClient:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, concurrency: int = 16,
                 timeout_s: float = 120.0, connect_timeout_s: float = 10.0, max_retries: int = 6,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0, retry_after_max_s: float = 300.0,
                 limiter: Limiter | None = None, cache: RequestCache | None = None,
                 owner: Callable[[], None] | None = None, owner_check_s: float = 2.0):
        self.base_url, self.model, self.api_key = base_url.rstrip("/"), model, api_key
        self.concurrency, self.max_retries = concurrency, max_retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self.wait = _Wait(backoff_s, backoff_max_s, retry_after_max_s)
        self.limiter = limiter or NoLimit()
        self.cache = cache
        self.owner, self.owner_check_s = owner, owner_check_s
        self.stats = ClientStats()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def _send_once(self, http: aiohttp.ClientSession, request: Request) -> dict[str, Any]:
        chat = not isinstance(request.prompt, str)
        url = f"{self.base_url}/{'chat/completions' if chat else 'completions'}"
        payload = {"model": self.model, ("messages" if chat else "prompt"): request.prompt, **request.sampling}
        await self.limiter.acquire(estimate_tokens(request))
        self.stats.requests += 1
        try:
            async with http.post(url, data=orjson.dumps(payload), headers=self._headers()) as response:
                status, body, retry_after = response.status, await response.read(), response.headers.get("Retry-After")
        except TimeoutError:
            raise Retryable("timeout", f"{url}: no answer within {self.timeout.total} s") from None
        except aiohttp.ClientError as exc:  # refused, reset, dropped mid-answer, a malformed answer
            raise Retryable("connection", f"{url}: {type(exc).__name__}: {exc}") from None
        if status == 200:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise Retryable("bad_body", f"{url}: HTTP 200 with a body that is not JSON") from None
            if answer_text(parsed) is None:
                raise _not_an_answer(url, parsed)
            return parsed
        detail = body[:300].decode(errors="replace")
        if status in RETRY_STATUS or status >= 500:
            raise Retryable(str(status), f"{url}: HTTP {status}: {detail}", parse_retry_after(retry_after))
        raise BadRequest(status, f"{url}: HTTP {status}: {detail}")

    async def _send(self, http: aiohttp.ClientSession, request: Request) -> dict[str, Any]:
        def count(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.stats.retries += 1
            self.stats.retry_causes[getattr(exc, "cause", type(exc).__name__)] += 1

        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=self.wait,
                                           retry=retry_if_exception_type(Retryable), before_sleep=count,
                                           reraise=True):
            with attempt:
                return await self._send_once(http, request)
        raise AssertionError("unreachable")

    async def _one(self, http: aiohttp.ClientSession, gate: asyncio.Semaphore, request: Request) -> Result:
        key = request.key(self.model)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self.stats.cache_hits += 1
            return Result(hit.get("text"), hit["status"], hit.get("prompt_tokens", 0),
                          hit.get("completion_tokens", 0), hit.get("finish_reason"), True, hit.get("error"))
        async with gate:
            try:
                body = await self._send(http, request)
            except BadRequest as exc:
                self.stats.bad_requests += 1
                log.warning("skipped a bad request (key %s): %s", key[:12], exc)
                if self.cache is not None and exc.cacheable:
                    self.cache.put(key, {"status": "bad_request", "error": str(exc), "http_status": exc.status})
                return Result(None, "bad_request", error=str(exc))
            except Retryable as exc:
                self.stats.failed += 1
                log.warning("gave up after %d tries (key %s): %s", self.max_retries + 1, key[:12], exc)
                return Result(None, "failed", error=str(exc))
        text = answer_text(body) or ""  # _send_once returns only bodies that hold an answer
        try:
            result = self._accounted(body, text, request)
        except Exception:  # noqa: BLE001 - accounting must never lose an answer that was paid for
            self.stats.bad_usage += 1
            result = Result(text, "ok", estimate_tokens(request) - _max_tokens(request), len(text) // 4)
        if self.cache is not None:
            self.cache.put(key, {"status": "ok", "text": text, "prompt_tokens": result.prompt_tokens,
                                 "completion_tokens": result.completion_tokens,
                                 "finish_reason": result.finish_reason})
        self.stats.completed += 1
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        return result

    def _accounted(self, body: dict[str, Any], text: str, request: Request) -> Result:
        """The answer with its token counts: from `usage`, estimated where the server gave none, and
        estimated and counted (`bad_usage`) where what it gave is not a count."""
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else ({} if usage is None else None)
        if usage is None:
            self.stats.bad_usage += 1
            usage = {}
        counts = []
        for name, estimate in (("prompt_tokens", estimate_tokens(request) - _max_tokens(request)),
                               ("completion_tokens", len(text) // 4)):
            raw = usage.get(name)
            value = _count(raw)
            if raw is not None and value is None:
                self.stats.bad_usage += 1
            counts.append(estimate if value is None else value)  # no usage: estimate, so cost is not zero
        finish = body["choices"][0].get("finish_reason")
        return Result(text, "ok", counts[0], counts[1], finish if isinstance(finish, str) else None)

    async def run(self, requests: list[Request]) -> list[Result]:
        """Answers in request order; failures are Results with a status, never exceptions."""
        gate = asyncio.Semaphore(self.concurrency)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=self.timeout) as http:
            answers = asyncio.gather(*(self._one(http, gate, r) for r in requests))
            if self.owner is None:
                return await answers
            return await self._while_owned(answers)

    async def _while_owned(self, answers: asyncio.Future) -> list[Result]:
        """`answers`, cancelled as soon as `owner` raises: a job whose owner has ended stops sending within
        `owner_check_s`, not at the end of its requests."""
        try:
            while True:
                done, _ = await asyncio.wait({answers}, timeout=self.owner_check_s)
                if done:
                    return answers.result()
                await asyncio.to_thread(self.owner)  # a file read or a GET: off the event loop
        finally:
            if not answers.done():
                answers.cancel()
                try:
                    await answers
                except asyncio.CancelledError:
                    pass


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when the caller is inside an event
    loop already (a notebook): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
