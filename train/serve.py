"""`winnow serve CKPT`: an OpenAI-compatible HTTP server for a Winnow checkpoint.

`/v1/completions` and `/v1/chat/completions`, each with `stream: true` (server-sent events, as
OpenAI sends them), and `/v1/models`. Any OpenAI client works against it, Winnow's own LLM client
for synthetic data included. One model serves one request at a time (a lock); the HTTP side is
threaded, so a slow client never blocks the others' connections.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from train.generate import SamplingParams, generate, stream
from train.model import GPT
from train.sft import alpaca_prompt, chat_prompt
from train.tokenizer import Vocab


class ModelServer:
    def __init__(self, model: GPT, vocab: Vocab, name: str, device: str = "cpu"):
        self.model, self.vocab, self.name, self.device = model, vocab, name, device
        self.lock = threading.Lock()

    def prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        if not chat:
            return [self.vocab.bos_id, *self.vocab.encode(body["prompt"])]
        messages = body["messages"]
        if {"user", "assistant"} <= set(self.vocab.role_ids):
            return chat_prompt(messages, self.vocab)
        turns = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
        return [self.vocab.bos_id, *self.vocab.encode(alpaca_prompt(turns))]

    @staticmethod
    def params(body: dict[str, Any]) -> SamplingParams:
        stop = body.get("stop") or []
        return SamplingParams(max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
                              temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                              top_k=int(body.get("top_k", 0)), min_p=float(body.get("min_p", 0.0)),
                              stop=[stop] if isinstance(stop, str) else list(stop), seed=body.get("seed"),
                              best_of=int(body.get("best_of", 1)))

    def complete(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        params = self.params(body)
        prompts = body["prompt"] if not chat and isinstance(body.get("prompt"), list) else None
        ids = [self.prompt_ids({"prompt": p}, False) for p in prompts] if prompts else [self.prompt_ids(body, chat)]
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

    def stream_chunks(self, body: dict[str, Any], chat: bool) -> Iterator[dict[str, Any]]:
        """Chunks as the text grows: held back while it might be the start of a stop string or
        while the last token ends inside a multi-byte character."""
        params = self.params(body)
        ids = self.prompt_ids(body, chat)
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
            for step_ids, _ in stream(self.model, [ids], params, stop_ids, self.device):
                token = int(step_ids[0])
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
                self.send_stream(body, chat)
            else:
                self.send_json(200, self.backend.complete(body, chat))
        except (ValueError, KeyError, TypeError) as exc:
            self.error(400, f"bad request: {exc}")

    def send_stream(self, body: dict[str, Any], chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in self.backend.stream_chunks(body, chat):
            self.wfile.write(f"data: {json.dumps(piece)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def make_server(model: GPT, vocab: Vocab, name: str, host: str = "127.0.0.1", port: int = 8000,
                device: str = "cpu") -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"backend": ModelServer(model, vocab, name, device)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


@torch.no_grad()
def serve(checkpoint_path: str, host: str, port: int, name: str | None, device: str) -> None:
    from pathlib import Path

    from train.checkpoint import load_model
    from train.tokenizer import load_vocab

    model, ckpt = load_model(checkpoint_path, device)
    vocab = load_vocab(ckpt["tokenizer"])
    server = make_server(model, vocab, name or Path(checkpoint_path).name, host, port, device)
    print(f"serving {checkpoint_path} on http://{host}:{server.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
