"""`winnow serve` on loopback with a tiny real model: OpenAI clients, a 400 naming the field for every
bad request (sampling parameters by the rules `winnow generate` applies), a 4xx for every malformed
Content-Length, a burst of simultaneous clients all answered, `max_tokens: 0`, `n`/`best_of`, and
`echo` + `logprobs` equal to the model's own log-probs."""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time

import pytest
import torch

from tests.test_generate import BAD_SAMPLING
from tests.tiny_model import build_tiny_checkpoint
from train.checkpoint import load_model
from train.serve import make_server
from train.serve_requests import Limits
from train.tokenizer import load_vocab

LIMITS = Limits(max_prompts=4, max_samples=3, max_logprobs=5, max_body_bytes=4096, read_timeout_s=2.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(model, vocab, port) of a server for a tiny checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on shared cores: threads only wait on each other
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("serve"))
    model, ckpt = load_model(str(folder))
    vocab = load_vocab(ckpt["tokenizer"])
    server = make_server(model, vocab, "tiny", port=0, limits=LIMITS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield model, vocab, server.server_address[1]
    server.shutdown()
    server.server_close()
    torch.set_num_threads(threads)


def post(port: int, path: str, body: bytes | dict | list | str | None, headers: dict | None = None
         ) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", f"/v1/{path}", raw, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    raw = response.read()
    if response.getheader("Content-Type") == "text/event-stream":  # a stream: its events
        payload = {"events": [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]}
    else:
        payload = json.loads(raw)
    connection.close()
    return response.status, payload


BAD_COMPLETIONS = [
    (b"[]", None), (b'"x"', None), (b"null", None), (b"{not json", None), (b"", None), (b"[1, 2]", None),
    ({"prompt": "A", "temperature": -1}, "temperature"), ({"prompt": "A", "temperature": 2.5}, "temperature"),
    ({"prompt": "A", "temperature": "hot"}, "temperature"), ({"prompt": "A", "temperature": True}, "temperature"),
    ({"prompt": "A", "max_tokens": -5}, "max_tokens"), ({"prompt": "A", "max_tokens": "16"}, "max_tokens"),
    ({"prompt": "A", "max_tokens": 1.5}, "max_tokens"), ({"prompt": "A", "top_p": 0}, "top_p"),
    ({"prompt": "A", "top_p": 1.5}, "top_p"), ({"prompt": "A", "top_k": -3}, "top_k"),
    ({"prompt": "A", "top_k": 2.5}, "top_k"), ({"prompt": "A", "min_p": -0.1}, "min_p"),
    ({"prompt": "A", "min_p": []}, "min_p"), ({"prompt": "A", "seed": "x"}, "seed"),
    ({"prompt": "A", "seed": -1}, "seed"), ({"prompt": "A", "seed": 1.5}, "seed"), ({"prompt": "A", "stop": 5}, "stop"),
    ({"prompt": "A", "stop": [""]}, "stop"),
    ({"prompt": "A", "stop": ["a"] * 17}, "stop"), ({"prompt": "A", "n": 0}, "n"), ({"prompt": "A", "n": "2"}, "n"),
    ({"prompt": "A", "best_of": 0}, "best_of"), ({"prompt": "A", "stream": "yes"}, "stream"),
    ({"prompt": "A", "echo": 1}, "echo"), ({"prompt": "A", "logprobs": True}, "logprobs"),
    ({"prompt": "A", "logprobs": -1}, "logprobs"), ({"prompt": "A", "model": 5}, "model"),
    ({"prompt": "A", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "A", "logit_bias": {"1": 5}}, "logit_bias"),
    ({"prompt": "A", "suffix": "x"}, "suffix"), ({"prompt": "A", "max_token": 5}, "max_token"),
    ({}, "prompt"), ({"prompt": None}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"), ({"prompt": [1, "a"]}, "prompt"), ({"prompt": [-1]}, "prompt"),
    ({"prompt": [99999]}, "prompt"), ({"prompt": "A " * 300}, "prompt"),
    ({"prompt": "A " * 300, "max_tokens": 0, "echo": True}, "prompt"),
    # past the caps: 4 prompts, 3 samples, 5 alternatives per token
    ({"prompt": ["a"] * 5}, "prompt"), ({"prompt": "A", "n": 4}, "n"), ({"prompt": "A", "best_of": 4}, "best_of"),
    ({"prompt": "A", "n": 3, "best_of": 2}, "best_of"), ({"prompt": "A", "logprobs": 6}, "logprobs"),
    ({"prompt": "A", "stream": True, "n": 2}, "n"), ({"prompt": "A", "stream": True, "echo": True}, "stream"),
    ({"prompt": ["a", "b"], "stream": True}, "prompt"),
    ({"prompt": "A", "stream": True, "temperature": "hot"}, "temperature"),
]
BAD_CHATS = [
    ({}, "messages"), ({"messages": []}, "messages"), ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"), ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 4}, "n"),
]


@pytest.mark.parametrize("path,body,field", [("completions", *case) for case in BAD_COMPLETIONS]
                         + [("chat/completions", *case) for case in BAD_CHATS])
def test_every_bad_request_gets_a_400_naming_the_field(served, path, body, field):
    status, payload = post(served[2], path, body)
    assert status == 400, payload
    error = payload["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field
    # The message names the field it is about; a body that is not a JSON object has no field to name.
    assert f"`{field}`" in error["message"] if field else "body" in error["message"], error["message"]


FUZZ_VALUES = [None, True, False, -1, 0, 1, 2.5, 10**20, "x", "", [], [1], ["a"], {}, {"a": 1}]


@pytest.mark.parametrize("path,base", [("completions", {"prompt": "A", "max_tokens": 2}),
                                       ("chat/completions", {"messages": [{"role": "user", "content": "A"}],
                                                             "max_tokens": 2})])
def test_any_value_of_any_type_in_any_field_gets_an_answer_or_a_400(served, path, base):
    from train.serve_requests import ChatRequest, CompletionRequest

    fields = (ChatRequest if path.startswith("chat") else CompletionRequest).model_fields
    answered = 0
    for name in fields:
        for value in FUZZ_VALUES:
            body = {**base, name: value}
            if name == "max_tokens" and value == 10**20:
                body["max_tokens"] = 10**6  # capped by the context all the same; keeps the test short
            status, payload = post(served[2], path, body)
            assert status in (200, 400, 404), (name, value, payload)
            if status != 200:
                assert payload["error"]["message"] and payload["error"]["param"] in (name, "model"), (name, value)
            answered += status == 200
    assert answered > len(fields)  # the defaults and every valid value still work


def test_limits_unknown_models_and_routes_are_answered_not_dropped(served):
    port = served[2]
    status, payload = post(port, "completions", {"prompt": "A" * 5000, "max_tokens": 1})
    assert status == 413 and "4,096" in payload["error"]["message"]  # the body cap
    status, payload = post(port, "completions", {"prompt": "A", "model": "gpt-4"})
    assert status == 404 and payload["error"]["param"] == "model" and "tiny" in payload["error"]["message"]
    status, payload = post(port, "embeddings", {"input": "A"})
    assert status == 404
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # no Content-Length
    connection.putrequest("POST", "/v1/completions")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]["message"]
    status, payload = post(port, "completions", {"prompt": "A", "max_tokens": 2, "temperature": 0})
    assert status == 200 and payload["usage"]["completion_tokens"] <= 2  # still serving


def test_max_tokens_zero_generates_nothing_and_echo_returns_the_prompt(served):
    port = served[2]
    status, payload = post(port, "completions", {"prompt": "Anarchism is", "max_tokens": 0})
    assert status == 200
    assert [c["text"] for c in payload["choices"]] == [""] and payload["usage"]["completion_tokens"] == 0
    status, payload = post(port, "completions", {"prompt": ["Anarchism is", "The"], "max_tokens": 0, "echo": True})
    assert [c["text"] for c in payload["choices"]] == ["Anarchism is", "The"]
    status, payload = post(port, "completions", {"prompt": "A", "temperature": 0})  # default: 16, as OpenAI's
    assert status == 200 and 0 < payload["usage"]["completion_tokens"] <= 16


def test_n_and_best_of_give_n_choices_per_prompt(served):
    port = served[2]
    status, payload = post(port, "completions", {"prompt": ["The", "A"], "n": 2, "max_tokens": 4, "seed": 3})
    assert status == 200 and [c["index"] for c in payload["choices"]] == [0, 1, 2, 3]
    status, payload = post(port, "completions", {"prompt": "The", "n": 1, "best_of": 3, "max_tokens": 4, "seed": 3})
    assert status == 200 and len(payload["choices"]) == 1 and payload["usage"]["completion_tokens"] <= 12
    status, payload = post(port, "chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "n": 2,
                                                      "max_tokens": 3, "seed": 1})
    assert status == 200 and [c["index"] for c in payload["choices"]] == [0, 1]


def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log P(ids[i] | ids[:i]) for i >= 1, from one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0]
    return torch.log_softmax(logits[:-1].double(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_echo_logprobs_equal_the_models_own(served):
    model, vocab, port = served
    prompt = "Anarchism is a political philosophy and movement"
    status, payload = post(port, "completions", {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 3})
    assert status == 200
    lp = payload["choices"][0]["logprobs"]
    ids = vocab.encode(prompt)
    assert lp["tokens"] == [vocab.decode([t]) for t in ids] and "".join(lp["tokens"]) == prompt
    own = direct_logprobs(model, [vocab.bos_id, *ids])  # the model reads BOS first; it is not echoed
    assert torch.allclose(torch.tensor(lp["token_logprobs"], dtype=torch.double), own, atol=1e-5)
    assert lp["text_offset"] == [len(vocab.decode(ids[:k])) for k in range(len(ids))]
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert len(top) == 3 and max(top.values()) >= chosen - 1e-9
    # Token ids that start with BOS are taken as sent: the first has nothing before it (null), as OpenAI's.
    sent = [vocab.bos_id, *ids]
    status, payload = post(port, "completions", {"prompt": sent, "max_tokens": 0, "echo": True, "logprobs": 1})
    lp = payload["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and len(lp["tokens"]) == len(sent)
    assert torch.allclose(torch.tensor(lp["token_logprobs"][1:], dtype=torch.double), own, atol=1e-5)
    # lm-evaluation-harness's request: one greedy token after the echo, whose log-prob is the top one.
    body = {"prompt": [ids, ids[:3]], "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1, "seed": 1}
    status, payload = post(port, "completions", body)
    assert status == 200 and len(payload["choices"]) == 2
    for choice, sent in zip(payload["choices"], [ids, ids[:3]], strict=True):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(sent) + 1
        last = lp["token_logprobs"][-1]
        assert last == max(lp["top_logprobs"][-1].values())
        own = direct_logprobs(model, [vocab.bos_id, *sent])
        assert torch.allclose(torch.tensor(lp["token_logprobs"][:-1], dtype=torch.double), own, atol=1e-5)
    # Without echo, only the completion's tokens, offset after the prompt.
    status, payload = post(port, "completions", {"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 0})
    lp = payload["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == payload["usage"]["completion_tokens"] and lp["text_offset"][0] == len(prompt)
    assert "".join(lp["tokens"]) == payload["choices"][0]["text"]


def test_openai_clients_work_on_loopback(served):
    from openai import OpenAI

    from llmclient import LLMClient

    model, _, port = served
    base = f"http://127.0.0.1:{port}/v1"
    client = OpenAI(base_url=base, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=8, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == reply.choices[0].message.content and chunks[-1].choices[0].finish_reason
    text = client.completions.create(model="tiny", prompt="Anarchism is", max_tokens=6, temperature=0)
    assert text.choices[0].text and text.choices[0].finish_reason in ("stop", "length")
    scored = client.completions.create(model="tiny", prompt="Anarchism is", max_tokens=0, echo=True, logprobs=2)
    assert scored.choices[0].logprobs.tokens and scored.choices[0].text == "Anarchism is"
    own = LLMClient(base_url=base, model="tiny", api_key=None)  # Winnow's synthetic-data client
    assert own.chat_many([[{"role": "user", "content": "Hi"}]], max_tokens=4, temperature=0)[0] is not None
    long = client.completions.create(model="tiny", prompt="A", max_tokens=10**9, temperature=0)
    assert long.usage.completion_tokens <= model.cfg.max_seq_len  # capped by the context, not allocated


@pytest.mark.parametrize("field,value", [(f, v) for f, v in BAD_SAMPLING if math.isfinite(v)])  # JSON has no NaN
def test_the_server_refuses_the_sampling_values_winnow_generate_refuses(served, field, value):
    field = {"max_new_tokens": "max_tokens"}.get(field, field)
    status, payload = post(served[2], "completions", {"prompt": "A", "max_tokens": 2, field: value})
    assert status == 400 and payload["error"]["param"] == field, payload


def test_a_denormal_temperature_or_top_p_answers_the_greedy_text(served):
    port = served[2]
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "seed": 5}
    for path, base in (("completions", {"prompt": "The", "max_tokens": 6, "seed": 5}), ("chat/completions", chat)):
        key = "text" if path == "completions" else "message"
        status, payload = post(port, path, {**base, "temperature": 0})
        assert status == 200
        greedy = payload["choices"][0][key]
        for extreme in ({"temperature": 5e-324}, {"temperature": 1.0, "top_p": 1e-320},
                        {"temperature": 2.0, "top_p": 5e-324, "min_p": 1e-320}):
            status, payload = post(port, path, {**base, **extreme})
            assert status == 200 and payload["choices"][0][key] == greedy, (path, extreme, payload)
    status, payload = post(port, "completions", {"prompt": "The", "max_tokens": 6, "temperature": 0, "stream": True})
    streamed = [json.loads(e) for e in payload["events"][:-1]]
    status, payload = post(port, "completions", {"prompt": "The", "max_tokens": 6, "temperature": 5e-324,
                                                 "stream": True})
    assert status == 200 and [json.loads(e) for e in payload["events"][:-1]][-1]["choices"][0]["finish_reason"]
    assert "".join(json.loads(e)["choices"][0]["text"] for e in payload["events"][:-1]) == \
        "".join(e["choices"][0]["text"] for e in streamed)


def raw_post(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, dict, float]:
    """Sends the request line, `head` as header lines and `body` as given, then reads the answer until
    the server closes: (status, JSON body, seconds waited)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + head + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2]), time.monotonic() - start


BODY = json.dumps({"prompt": "A", "max_tokens": 1, "temperature": 0}).encode()


@pytest.mark.parametrize("length", [
    "\u00b3".encode("latin-1"),  # superscript three: str.isdigit() says yes, int() refuses it
    "\u0663".encode(), b"\xd9\xa3",  # Arabic-Indic three, which int() takes, as UTF-8 bytes
    b"+5", b"-5", b"5_0", b"0x5", b"5.0", b"5e1", b"\x0b5", b"5\x0c", b"", b"9" * 5000,
])
def test_a_content_length_that_is_not_ascii_digits_gets_a_4xx_json_error(served, length):
    status, payload, waited = raw_post(served[2], b"Content-Length: " + length + b"\r\n", BODY)
    assert status in (400, 413), payload
    message = payload["error"]["message"]
    assert "Content-Length" in message or "the body has a 5000-digit number of bytes" in message, message
    assert waited < 1.5  # answered at once, not after waiting for a body


def test_content_length_framing_two_lengths_chunked_and_a_short_body(served):
    port = served[2]
    status, payload, _ = raw_post(port, f"Content-Length: {len(BODY)}\r\n".encode() * 2, BODY)
    assert status == 200  # the same length twice is the same framing
    status, payload, _ = raw_post(port, f"Content-Length: {len(BODY)}\r\nContent-Length: 3\r\n".encode(), BODY)
    assert status == 400 and "one Content-Length" in payload["error"]["message"]
    status, payload, _ = raw_post(port, f"Content-Length: {len(BODY)}\r\nTransfer-Encoding: chunked\r\n".encode(),
                                  BODY)
    assert status == 400 and "Transfer-Encoding" in payload["error"]["message"]
    status, payload, _ = raw_post(port, f"Content-Length: {len(BODY)} \t\r\n".encode(), BODY)
    assert status == 200  # spaces after the value are not part of it (RFC 9110)
    # A body shorter than its Content-Length: a 408 once the client has been silent for read_timeout_s.
    status, payload, waited = raw_post(port, f"Content-Length: {len(BODY) + 10}\r\n".encode(), BODY)
    assert status == 408 and LIMITS.read_timeout_s <= waited < LIMITS.read_timeout_s + 5
    assert post(port, "completions", json.loads(BODY))[0] == 200  # still serving


def test_a_burst_of_128_simultaneous_clients_is_answered_without_a_reset(served):
    """Every connection opens at once: past the listen backlog the kernel would reset them."""
    port, clients = served[2], 128
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(clients)]
    ready, answers = threading.Barrier(clients), [None] * clients

    def client(k: int) -> None:
        ready.wait()
        try:
            connections[k].request("POST", "/v1/completions", BODY, {"Content-Type": "application/json"})
            response = connections[k].getresponse()
            answers[k] = (response.status, json.loads(response.read())["choices"][0]["text"])
        except OSError as exc:  # ConnectionResetError, ...
            answers[k] = (type(exc).__name__, None)
        finally:
            connections[k].close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200] * clients, sorted(map(str, answers))[:5]
    assert len({text for _, text in answers}) == 1  # greedy: one answer, whatever the interleaving
