"""`winnow serve CKPT`: an OpenAI-compatible HTTP server for a Winnow checkpoint.

`/v1/completions` and `/v1/chat/completions`, each with `stream: true` (server-sent events, as
OpenAI sends them), and `/v1/models`. Any OpenAI client works against it, Winnow's own LLM client
for synthetic data included. Chat requests are put in the template the model was fine-tuned with
(recorded in its checkpoint). Connections are handled on threads, but the model generates for one
request at a time (a lock): a long generation, streamed or not, makes the next request wait.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from train.generate import SamplingParams, generate, stream, token_budget
from train.model import GPT
from train.sft import prompt_ids
from train.tokenizer import Vocab


class ModelServer:
    def __init__(self, model: GPT, vocab: Vocab, name: str, device: str = "cpu", template: str | None = None):
        self.model, self.vocab, self.name, self.device = model, vocab, name, device
        self.template = template
        self.lock = threading.Lock()

    def prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            return prompt_ids(self.vocab, self.template, messages=body["messages"])
        return prompt_ids(self.vocab, None, text=body["prompt"])

    def params(self, body: dict[str, Any], prompts: list[list[int]]) -> SamplingParams:
        """Sampling parameters from a request; `max_tokens` is capped by what the context leaves."""
        stop = body.get("stop") or []
        wanted = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        return SamplingParams(max_new_tokens=token_budget(self.model, prompts, wanted),
                              temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                              top_k=int(body.get("top_k", 0)), min_p=float(body.get("min_p", 0.0)),
                              stop=[stop] if isinstance(stop, str) else list(stop), seed=body.get("seed"),
                              best_of=int(body.get("best_of", 1)))

    def request(self, body: dict[str, Any], chat: bool) -> tuple[list[list[int]], SamplingParams]:
        """Prompts and parameters, checked before any answer starts (a bad stream request gets a 400)."""
        texts = body.get("prompt")
        if body.get("stream") and int(body.get("best_of", 1)) > 1:
            raise ValueError("best_of cannot be streamed")
        if not chat and isinstance(texts, list):
            if body.get("stream") and len(texts) != 1:
                raise ValueError("streaming takes one prompt")
            prompts = [self.prompt_ids({"prompt": t}, False) for t in texts]
        else:
            prompts = [self.prompt_ids(body, chat)]
        return prompts, self.params(body, prompts)

    def complete(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        ids, params = self.request(body, chat)
        with self.lock:
            outs = generate(self.model, self.vocab, ids, params, self.device)
        usage = {"prompt_tokens": sum(map(len, ids)), "completion_tokens": sum(len(o.tokens) for o in outs)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat:
            choices = [{"index": 0, "message": {"role": "assistant", "content": outs[0].text},
                        "finish_reason": outs[0].finish_reason}]
        else:
            choices = [{"index": k, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                       for k, o in enumerate(outs)]
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices, "usage": usage}

    def stream_chunks(self, ids: list[int], params: SamplingParams, chat: bool) -> Iterator[dict[str, Any]]:
        """Chunks as the text grows: held back while it might be the start of a stop string or
        while the last token ends inside a multi-byte character."""
        stop_ids = {self.vocab.eos_id, self.vocab.end_of_turn_id}
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
            for step_ids, _ in stream(self.model, [ids], params, self.device):
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

    def error(self, status: int, message: str) -> None:
        self.send_json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": self.backend.name, "object": "model",
                                                             "created": 0, "owned_by": "winnow"}]})
        else:
            self.error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        if self.path not in routes:
            self.error(404, f"no route {self.path}")
            return
        chat = routes[self.path]
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if (chat and not body.get("messages")) or (not chat and body.get("prompt") is None):
                raise ValueError("`messages` is required" if chat else "`prompt` is required")
            if body.get("stream"):
                prompts, params = self.backend.request(body, chat)
            else:
                reply = self.backend.complete(body, chat)
        except (ValueError, KeyError, TypeError) as exc:
            self.error(400, f"bad request: {exc}")
            return
        except RuntimeError as exc:  # e.g. out of memory: an answer, not a dropped connection
            self.send_json(500, {"error": {"message": str(exc)[:500], "type": "server_error", "code": None}})
            return
        if body.get("stream"):
            self.send_stream(self.backend.stream_chunks(prompts[0], params, chat))
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


def make_server(model: GPT, vocab: Vocab, name: str, host: str = "127.0.0.1", port: int = 8000,
                device: str = "cpu", template: str | None = None) -> ThreadingHTTPServer:
    backend = ModelServer(model, vocab, name, device, template)
    handler = type("BoundHandler", (Handler,), {"backend": backend})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(checkpoint_path: str, host: str, port: int, name: str | None, device: str) -> None:
    from pathlib import Path

    from train.checkpoint import load_model, prompt_template
    from train.tokenizer import load_vocab

    model, ckpt = load_model(checkpoint_path, device)
    vocab = load_vocab(ckpt["tokenizer"])
    server = make_server(model, vocab, name or Path(checkpoint_path).name, host, port, device, prompt_template(ckpt))
    print(f"serving {checkpoint_path} on http://{host}:{server.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
