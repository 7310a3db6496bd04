"""`winnow serve CKPT`: an OpenAI-compatible HTTP server for a Winnow checkpoint.

`/v1/completions` and `/v1/chat/completions`, each with `stream: true` (server-sent events, as
OpenAI sends them), and `/v1/models`. Any OpenAI client works against it, Winnow's own LLM client
for synthetic data included. Chat requests are put in the template the model was fine-tuned with
(recorded in its checkpoint). Connections are handled on threads, but the model generates for one
request at a time (a lock): a long generation, streamed or not, makes the next request wait.

Completions take `logprobs` and `echo` in OpenAI's legacy shape, so a served model can be scored
(`lm_eval --model local-completions`): `max_tokens: 0`, `echo: true`, `logprobs: 1` returns the
log-probability of every prompt token. Prompts are text or token ids. The model always reads a BOS
first, as every training document began; when the prompt does not start with one it is added and
not echoed, so the first echoed token has a log-probability (it is null only after a sent BOS).
Every request is checked first (`train/serve_requests.py`); a bad one gets a 400 naming the field.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from train.generate import Completion, SamplingParams, generate, stream, token_budget
from train.model import GPT
from train.sampling import SamplingError
from train.score import Scored, score
from train.serve_requests import BadRequest, ChatRequest, CompletionRequest, Limits, check_limits, parse
from train.sft import prompt_ids
from train.tokenizer import Vocab

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


@dataclass
class Prompt:
    """What the client sent (`shown`, echoed back) and what the model reads (`ids`: a BOS, then `shown`)."""

    shown: list[int]
    ids: list[int]
    text: str

    @property
    def hidden(self) -> int:
        return len(self.ids) - len(self.shown)


class ModelServer:
    def __init__(self, model: GPT, vocab: Vocab, name: str, device: str = "cpu", template: str | None = None,
                 limits: Limits | None = None):
        self.model, self.vocab, self.name, self.device = model, vocab, name, device
        self.template = template
        self.limits = limits or Limits()
        self.lock = threading.Lock()

    # --- checking a request -------------------------------------------------------------------------
    def parse(self, raw: bytes, chat: bool) -> CompletionRequest | ChatRequest:
        request = parse(ChatRequest if chat else CompletionRequest, raw)
        if request.model is not None and request.model != self.name:
            raise LookupError(f"the model `{request.model}` is not served here; this server serves `{self.name}`")
        check_limits(request, self.limits)
        return request

    def prompt(self, given: str | list[int]) -> Prompt:
        if isinstance(given, str):
            shown = self.vocab.encode(given)
            return Prompt(shown, [self.vocab.bos_id, *shown], given)
        bad = [t for t in given if t >= self.vocab.size]
        if bad:
            raise BadRequest(f"`prompt`: token id {bad[0]} is outside the vocabulary (0..{self.vocab.size - 1})",
                             "prompt")
        ids = given if given[0] == self.vocab.bos_id else [self.vocab.bos_id, *given]
        return Prompt(list(given), ids, self.vocab.decode(given))

    def chat_prompt(self, request: ChatRequest) -> Prompt:
        messages = [{"role": m.role, "content": m.text} for m in request.messages]
        try:
            ids = prompt_ids(self.vocab, self.template, messages=messages)
        except ValueError as exc:
            raise BadRequest(f"`messages`: {exc}", "messages") from None
        return Prompt(ids, ids, self.vocab.decode(ids))

    def budget(self, prompts: list[Prompt], wanted: int | None) -> int:
        """New tokens per prompt: what was asked, capped by what the context leaves."""
        longest = max(len(p.ids) for p in prompts)
        if wanted == 0:
            if longest > self.model.cfg.max_seq_len:
                raise BadRequest(f"`prompt`: a prompt of {longest} tokens is longer than the model's context of "
                                 f"{self.model.cfg.max_seq_len}", "prompt")
            return 0
        try:
            return token_budget(self.model, [p.ids for p in prompts], wanted or self.model.cfg.max_seq_len)
        except ValueError as exc:
            raise BadRequest(f"`prompt`: {exc}", "prompt") from None

    def params(self, request: CompletionRequest | ChatRequest, max_new: int) -> SamplingParams:
        try:  # the request passed the same rules already; a 400, never a 500, if they ever disagree
            return SamplingParams(max_new_tokens=max_new, temperature=request.temperature, top_p=request.top_p,
                                  top_k=request.top_k, min_p=request.min_p, stop=request.stops, seed=request.seed)
        except SamplingError as exc:
            raise BadRequest(str(exc), exc.field) from None

    # --- answering ----------------------------------------------------------------------------------
    def sample(self, prompts: list[Prompt], params: SamplingParams, n: int, best_of: int) -> list[list[Completion]]:
        """`n` completions per prompt: the `n` best (by mean log-prob) of `best_of` samples when it is larger."""
        if params.max_new_tokens == 0:
            return [[Completion("", [], 0.0, "length") for _ in range(n)] for _ in prompts]
        expanded = [p.ids for p in prompts for _ in range(best_of)]
        with self.lock:
            outs = generate(self.model, self.vocab, expanded, params, self.device)
        groups = [outs[k * best_of:(k + 1) * best_of] for k in range(len(prompts))]
        if best_of > n:
            groups = [sorted(g, key=lambda c: -c.score)[:n] for g in groups]
        return groups

    def logprobs(self, prompt: Prompt, out: Completion, scored: Scored, echo: bool, top: int) -> dict[str, Any]:
        """OpenAI's legacy `logprobs` object for the echoed prompt (with `echo`) and the completion."""
        sequence = prompt.ids + out.tokens
        logprobs: list[float | None] = [None, *scored.logprobs]
        tops: list[list[tuple[int, float]] | None] = [None, *scored.top] if top else [None] + [[]] * len(sequence)
        start = prompt.hidden if echo else len(prompt.ids)
        text_end = len(prompt.text) + len(out.text)
        result: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for pos in range(start, len(sequence)):
            offset = len(self.vocab.decode(sequence[prompt.hidden:pos]))
            if pos >= len(prompt.ids) and offset >= text_end:
                break  # the tokens after a stop string were cut from the text
            result["tokens"].append(self.vocab.decode([sequence[pos]]))
            result["token_logprobs"].append(logprobs[pos])
            alternatives = tops[pos]
            result["top_logprobs"].append(None if alternatives is None else
                                          {self.vocab.decode([i]): v for i, v in alternatives})
            result["text_offset"].append(offset)
        return result

    def complete(self, request: CompletionRequest) -> dict[str, Any]:
        prompts = [self.prompt(p) for p in request.prompts()]
        best_of = request.best_of or request.n
        wanted = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
        params = self.params(request, self.budget(prompts, wanted))
        groups = self.sample(prompts, params, request.n, best_of)
        pairs = [(prompt, out) for prompt, group in zip(prompts, groups, strict=True) for out in group]
        if request.logprobs is not None:  # one batched forward pass over every prompt and its completion
            with self.lock:
                scored = score(self.model, [p.ids + out.tokens for p, out in pairs], self.device, top=request.logprobs)
        choices = []
        for k, (prompt, out) in enumerate(pairs):
            choice = {"index": k, "text": (prompt.text if request.echo else "") + out.text, "logprobs": None,
                      "finish_reason": out.finish_reason}
            if request.logprobs is not None:
                choice["logprobs"] = self.logprobs(prompt, out, scored[k], request.echo, request.logprobs)
            choices.append(choice)
        completion = sum(len(out.tokens) for group in groups for out in group)
        return self.reply(False, choices, sum(len(p.ids) for p in prompts), completion)

    def chat(self, request: ChatRequest) -> dict[str, Any]:
        prompt = self.chat_prompt(request)
        wanted = request.max_completion_tokens or request.max_tokens
        params = self.params(request, self.budget([prompt], wanted))
        group = self.sample([prompt], params, request.n, request.n)[0]
        choices = [{"index": k, "message": {"role": "assistant", "content": out.text}, "logprobs": None,
                    "finish_reason": out.finish_reason} for k, out in enumerate(group)]
        return self.reply(True, choices, len(prompt.ids), sum(len(out.tokens) for out in group))

    def reply(self, chat: bool, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int
              ) -> dict[str, Any]:
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def stream_request(self, request: CompletionRequest | ChatRequest) -> Iterator[dict[str, Any]]:
        """Checks a streamed request completely (a bad one gets a 400 before any chunk), then its chunks."""
        chat = isinstance(request, ChatRequest)
        if chat:
            prompt, wanted = self.chat_prompt(request), request.max_completion_tokens or request.max_tokens
        else:
            prompt = self.prompt(request.prompts()[0])
            wanted = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
        params = self.params(request, self.budget([prompt], wanted))
        return self.stream_chunks(prompt.ids, params, chat)

    def stream_chunks(self, ids: list[int], params: SamplingParams, chat: bool) -> Iterator[dict[str, Any]]:
        """Chunks as the text grows: held back while it might be the start of a stop string or
        while the last token ends inside a multi-byte character."""
        stop_ids = {self.vocab.eos_id, self.vocab.end_of_turn_id, *self.vocab.stop_ids}
        meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": self.name, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, str] = {"role": "assistant"} if first else {}
                if text:
                    delta["content"] = text
                return {**meta, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return {**meta, "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        if chat:
            yield chunk(None, None, first=True)
        tokens: list[int] = []
        sent, finish, final = 0, "length", None
        hold = max((len(s) for s in params.stop), default=1) - 1
        with self.lock:
            steps = stream(self.model, [ids], params, self.device) if params.max_new_tokens else iter(())
            for step_ids, _ in steps:
                token = step_ids[0]
                if token in stop_ids:
                    finish = "stop"
                    break
                tokens.append(token)
                text = self.vocab.decode(tokens)
                cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                if cut >= 0:
                    final, finish = text[:cut], "stop"
                    break
                ready = len(text) - hold
                if ready > sent and not text.endswith("\ufffd"):
                    yield chunk(text[sent:ready], None)
                    sent = ready
        final = self.vocab.decode(tokens) if final is None else final
        if len(final) > sent:
            yield chunk(final[sent:], None)
        yield chunk(None, finish)


class Handler(BaseHTTPRequestHandler):
    server_version = "winnow-serve"
    protocol_version = "HTTP/1.1"
    backend: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise here
        pass

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": self.backend.name, "object": "model",
                                                             "created": 0, "owned_by": "winnow"}]})
        else:
            self.error(404, f"no route {self.path}")

    def read_body(self) -> bytes:
        """The request body, framed by exactly one Content-Length of plain ASCII digits (RFC 9110).
        `int()` alone would take '+5', '5_0' or Arabic-Indic digits and then read a body of the
        wrong length; a body framed any other way (chunked) is refused the same way. Either way
        the body's end is unknown, so the connection cannot be reused."""
        lengths = {v.rstrip(" \t") for v in self.headers.get_all("Content-Length") or []}  # trailing spaces: OWS
        if len(lengths) != 1 or self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise BadRequest("a JSON body with one Content-Length header (and no Transfer-Encoding) is required")
        length = lengths.pop()
        if not length.isascii() or not length.isdigit():
            self.close_connection = True
            raise BadRequest(f"Content-Length must be a number of bytes in ASCII digits (got {length!r:.40})")
        digits = length.lstrip("0") or "0"
        limit = self.backend.limits.max_body_bytes
        if len(digits) > len(str(limit)) or int(digits) > limit:  # length first: int() refuses 4,300+ digits
            self.close_connection = True
            size = f"{int(digits):,}" if len(digits) <= 30 else f"a {len(digits)}-digit number of"
            raise OverflowError(f"the body has {size} bytes; this server takes at most {limit:,}")
        body = self.rfile.read(int(digits))  # a client that stops sending: TimeoutError after Limits.read_timeout_s
        if len(body) < int(digits):
            self.close_connection = True
            raise BadRequest(f"the body ended after {len(body):,} of the {int(digits):,} bytes of its Content-Length")
        return body

    def do_POST(self) -> None:
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        if self.path not in routes:
            self.close_connection = True
            self.error(404, f"no route {self.path}")
            return
        chat = routes[self.path]
        try:
            request = self.backend.parse(self.read_body(), chat)
            if request.stream:
                chunks = self.backend.stream_request(request)
            else:
                reply = self.backend.complete(request) if not chat else self.backend.chat(request)
        except BadRequest as exc:
            self.error(400, str(exc), exc.param)
            return
        except OverflowError as exc:
            self.error(413, str(exc))
            return
        except TimeoutError:
            self.close_connection = True
            self.error(408, f"no byte of the body came for {self.timeout:g} s; the Content-Length may be too large")
            return
        except LookupError as exc:
            self.error(404, str(exc), "model", "model_not_found")
            return
        except Exception as exc:  # e.g. out of memory: an answer, never a dropped connection
            self.error(500, f"{type(exc).__name__}: {str(exc)[:500]}", kind="server_error")
            return
        if request.stream:
            self.send_stream(chunks)
        else:
            self.send_json(200, reply)

    def send_stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for piece in chunks:
                self.wfile.write(f"data: {json.dumps(piece)}\n\n".encode())
                self.wfile.flush()
        except RuntimeError as exc:  # the headers are out: report the failure in the stream
            error = {"error": {"message": str(exc)[:500], "type": "server_error", "code": None}}
            self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


class Server(ThreadingHTTPServer):
    """A thread per connection, and a listen backlog for bursts: the stdlib's is 5, so when a
    client pool opens dozens of connections at once (a synth stage, an evaluation harness) the
    kernel resets those past the fifth that arrive before the accept loop takes them. The kernel
    caps the backlog at net.core.somaxconn. The threads only parse and answer; the model runs for
    one request at a time (`ModelServer.lock`)."""

    request_queue_size = 1024
    daemon_threads = True


def make_server(model: GPT, vocab: Vocab, name: str, host: str = "127.0.0.1", port: int = 8000,
                device: str = "cpu", template: str | None = None, limits: Limits | None = None) -> Server:
    backend = ModelServer(model, vocab, name, device, template, limits)
    handler = type("BoundHandler", (Handler,), {"backend": backend, "timeout": backend.limits.read_timeout_s})
    return Server((host, port), handler)


def serve(checkpoint_path: str, host: str, port: int, name: str | None, device: str,
          limits: Limits | None = None) -> None:
    from pathlib import Path

    from train.checkpoint import load_model, prompt_template
    from train.tokenizer import load_vocab

    model, ckpt = load_model(checkpoint_path, device)
    vocab = load_vocab(ckpt["tokenizer"])
    folder = Path(checkpoint_path) if Path(checkpoint_path).is_dir() else Path(checkpoint_path).parent
    server = make_server(model, vocab, name or folder.name, host, port, device, prompt_template(ckpt), limits)
    print(f"serving {checkpoint_path} on http://{host}:{server.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
