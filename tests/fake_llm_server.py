"""A loopback OpenAI-compatible server with a fixed latency and injected faults, for tests and bench/llm_client.py.

Every answer takes `latency_s` plus `per_token_s` for each completion token, so a client bench measures
the client, not a model. Faults are drawn per try from a hash of the request body and its try number,
so they are the same on every run: `rate_429` answers 429 with `Retry-After` (in seconds for half of the
requests, as an HTTP date for the other half), `rate_500` answers 500, `rate_drop` closes the connection without an
answer. The server counts, per distinct request body, the answers it completed: a request answered
twice is a request the client paid for twice (`GET /stats`).

Answers are deterministic text built from the prompt. A prompt that asks for JSON gets a JSON list of
question/answer pairs about the text between `<document>` tags; `FAKE:<word>` in a prompt forces an
answer for tests (`FAKE:refuse`, `FAKE:fenced`, `FAKE:score=N`, `FAKE:badjson`, `FAKE:400`).

    python tests/fake_llm_server.py --port 8001 --latency-s 0.05 --rate-429 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web

WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")


def _draw(body: bytes, attempt: int) -> float:
    digest = hashlib.sha256(body + f"#{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _prompt_text(payload: dict[str, Any]) -> str:
    if "messages" in payload:
        return "\n".join(str(m.get("content", "")) for m in payload["messages"])
    prompt = payload.get("prompt", "")
    return prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))


def answer_for(prompt: str, max_tokens: int, sample: int = 0) -> str:
    """The deterministic answer to a prompt."""
    forced = re.search(r"FAKE:(\w+)(?:=(\d+))?", prompt)
    doc = re.search(r"<document>\s*(.*?)\s*</document>", prompt, re.DOTALL)
    source = doc.group(1) if doc else prompt
    words = WORD.findall(source)[:400]
    if forced:
        kind, value = forced.group(1), forced.group(2)
        if kind == "refuse":
            return "I'm sorry, but I can't help with that request."
        if kind == "score":
            return f'{{"score": {value}, "reason": "fixed by the test"}}'
        if kind == "badjson":
            return "Here are some questions, but no JSON at all."
        if kind == "fenced":
            return ('Sure! Here is the JSON:\n```json\n[{"question": "What is described in the text?", '
                    '"answer": "It describes its topic in a few careful sentences, with examples."},]\n```\n'
                    'Let me know if you need more.')
    if "judge" in prompt.lower() and "score" in prompt.lower():
        # A judge: longer answers get higher scores, from 1 to 10.
        return json.dumps({"score": min(10, 1 + len(prompt) % 10), "reason": "length"})
    if "json" in prompt.lower():
        pairs = []
        for k in range(0, min(len(words), 120), 40):
            chunk = words[k:k + 40]
            if len(chunk) < 8:
                break
            topic = " ".join(chunk[:3])
            pairs.append({"question": f"What does the passage say about {topic} (sample {sample})?",
                          "answer": "According to the passage, " + " ".join(chunk[3:20]) + ", and in particular "
                                    + " ".join(reversed(chunk[20:34])) + "."})
        return json.dumps(pairs)
    text = "In other words: " + " ".join(words[:60])
    return " ".join(text.split()[:max_tokens])


class FakeLLM:
    def __init__(self, latency_s: float = 0.0, per_token_s: float = 0.0, rate_429: float = 0.0,
                 rate_500: float = 0.0, rate_drop: float = 0.0, retry_after_s: float = 0.05):
        self.latency_s, self.per_token_s = latency_s, per_token_s
        self.rate_429, self.rate_500, self.rate_drop = rate_429, rate_500, rate_drop
        self.retry_after_s = retry_after_s
        self.tries: Counter = Counter()  # per body: tries seen
        self.answered: Counter = Counter()  # per body: 200 answers completed
        self.answered_prompts: Counter = Counter()  # per prompt text: 200 answers completed
        self.faults: Counter = Counter()

    def stats(self) -> dict[str, Any]:
        return {"requests": sum(self.tries.values()), "distinct": len(self.tries),
                "answered": sum(self.answered.values()),
                "answered_twice": sum(1 for v in self.answered.values() if v > 1), "faults": dict(self.faults)}

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        key = hashlib.sha256(body).hexdigest()
        attempt = self.tries[key]
        self.tries[key] += 1
        prompt = _prompt_text(payload)
        if "FAKE:400" in prompt:
            return web.json_response({"error": {"message": "prompt too long"}}, status=400)
        draw = _draw(body, attempt)
        if draw < self.rate_drop:
            self.faults["drop"] += 1
            request.transport.abort()  # the connection dies with no answer
            raise asyncio.CancelledError
        draw -= self.rate_drop
        if draw < self.rate_429:
            self.faults["429"] += 1
            if int(key[:8], 16) % 2 == 0:
                retry_after = f"{self.retry_after_s:g}"
            else:  # an HTTP date one second ahead (the format's resolution)
                self.faults["429_http_date"] += 1
                retry_after = email.utils.formatdate(time.time() + 1, usegmt=True)
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": retry_after})
        draw -= self.rate_429
        if draw < self.rate_500:
            self.faults["500"] += 1
            return web.json_response({"error": {"message": "internal"}}, status=500)
        max_tokens = int(payload.get("max_tokens") or 64)
        text = answer_for(prompt, max_tokens, int(payload.get("seed") or 0))
        completion_tokens = min(max_tokens, max(1, len(text) // 4))
        await asyncio.sleep(self.latency_s + self.per_token_s * completion_tokens)
        chat = request.path.endswith("chat/completions")
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None})
        response = web.json_response({
            "id": f"cmpl-{key[:16]}", "object": "chat.completion" if chat else "text_completion",
            "created": 0, "model": payload.get("model"), "choices": [choice],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": completion_tokens,
                      "total_tokens": len(prompt) // 4 + completion_tokens}})
        # Counted as the answer goes out, not after: a client may read it before this coroutine resumes.
        self.answered[key] += 1
        self.answered_prompts[prompt] += 1
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def stats_view(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats_view)
        return app


class ServerThread:
    """The fake server on its own event loop in a background thread: `with ServerThread(...) as s: s.url`."""

    def __init__(self, **kwargs: Any):
        self.llm = FakeLLM(**kwargs)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.llm.app(), access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stats(self) -> dict[str, Any]:
        return self.llm.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--per-token-s", type=float, default=0.0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-500", type=float, default=0.0)
    parser.add_argument("--rate-drop", type=float, default=0.0)
    args = parser.parse_args()
    llm = FakeLLM(args.latency_s, args.per_token_s, args.rate_429, args.rate_500, args.rate_drop)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # dropped connections are the point
    web.run_app(llm.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
