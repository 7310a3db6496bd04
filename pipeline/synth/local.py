"""The `local` generator: a Winnow checkpoint sampling in process with the trainer's sampler.

The model loads once per process (per checkpoint and device) and stays loaded for every shard the
process runs; requests go through the same request cache as the `llm` generator, keyed the same way,
so switching between `winnow serve` and in-process generation of the same checkpoint reuses answers.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from llmclient.cache import RequestCache
from llmclient.client import ClientStats, Request, Result


@cache
def _load(checkpoint: str, device: str) -> tuple[Any, Any, str | None]:
    from train.checkpoint import load_model, prompt_template
    from train.tokenizer import load_vocab

    model, ckpt = load_model(checkpoint, device)
    return model, load_vocab(ckpt["tokenizer"]), prompt_template(ckpt)


class LocalGenerator:
    def __init__(self, checkpoint: str, model_name: str, device: str = "cpu", cache: RequestCache | None = None):
        self.checkpoint, self.model, self.device, self.cache = checkpoint, model_name, device, cache
        self.stats = ClientStats()

    def _generate(self, request: Request) -> Result:
        from train.generate import SamplingParams, generate, token_budget
        from train.sft import prompt_ids

        model, vocab, template = _load(self.checkpoint, self.device)
        chat = not isinstance(request.prompt, str)
        ids = prompt_ids(vocab, template, messages=request.prompt) if chat else prompt_ids(vocab, None,
                                                                                            text=request.prompt)
        s = request.sampling
        try:
            params = SamplingParams(max_new_tokens=token_budget(model, [ids], int(s.get("max_tokens", 128))),
                                    temperature=float(s.get("temperature", 1.0)), top_p=float(s.get("top_p", 1.0)),
                                    stop=list(s.get("stop") or []), seed=s.get("seed"))
        except ValueError as exc:  # the prompt leaves no room in the context: this request's own fault
            return Result(None, "bad_request", error=f"{self.checkpoint}: {exc}")
        out = generate(model, vocab, [ids], params, self.device)[0]
        return Result(out.text, "ok", len(ids), len(out.tokens), out.finish_reason)

    async def run(self, requests: list[Request]) -> list[Result]:
        results = []
        for request in requests:
            key = request.key(self.model)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.stats.cache_hits += 1
                results.append(Result(hit.get("text"), hit["status"], hit.get("prompt_tokens", 0),
                                      hit.get("completion_tokens", 0), hit.get("finish_reason"), True,
                                      hit.get("error")))
                continue
            self.stats.requests += 1
            result = await asyncio.to_thread(self._generate, request)
            if result.status == "ok":
                self.stats.completed += 1
                self.stats.prompt_tokens += result.prompt_tokens
                self.stats.completion_tokens += result.completion_tokens
            else:
                self.stats.bad_requests += 1
            if self.cache is not None:
                self.cache.put(key, {"status": result.status, "text": result.text, "error": result.error,
                                     "prompt_tokens": result.prompt_tokens,
                                     "completion_tokens": result.completion_tokens,
                                     "finish_reason": result.finish_reason})
            results.append(result)
        return results
