"""The `local` generator: a Winnow checkpoint (trained here or imported with `winnow import`)
sampling in process with the trainer's batched engine (train/generate.py).

The model loads once per process (per checkpoint and device) and stays loaded for every shard the
process runs; requests go through the same request cache as the `llm` generator, keyed the same way,
so switching between `winnow serve` and in-process generation of the same checkpoint reuses answers.
Requests the cache lacks are sorted by prompt length and generated `batch_size` at a time, each row
with its own sampling parameters and seed, so an answer is the same whatever batch it lands in; the
answers of a batch are cached as soon as it is done, so a killed shard keeps them.
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


def sampling_params(sampling: dict[str, Any]) -> Any:
    from train.generate import SamplingParams

    return SamplingParams(max_new_tokens=int(sampling.get("max_tokens", 128)),
                          temperature=float(sampling.get("temperature", 1.0)), top_p=float(sampling.get("top_p", 1.0)),
                          top_k=int(sampling.get("top_k", 0)), min_p=float(sampling.get("min_p", 0.0)),
                          stop=list(sampling.get("stop") or []), seed=sampling.get("seed"))


class LocalGenerator:
    def __init__(self, checkpoint: str, model_name: str, device: str = "cpu", cache: RequestCache | None = None,
                 batch_size: int = 16):
        self.checkpoint, self.model, self.device, self.cache = checkpoint, model_name, device, cache
        self.batch_size = batch_size
        self.stats = ClientStats()

    def _prompt(self, request: Request) -> list[int]:
        from train.sft import prompt_ids

        _, vocab, template = _load(self.checkpoint, self.device)
        if isinstance(request.prompt, str):
            return prompt_ids(vocab, None, text=request.prompt)
        return prompt_ids(vocab, template, messages=request.prompt)

    def _generate(self, requests: list[Request]) -> list[Result]:
        """Answers for requests the cache lacks, in their order: batched, shortest prompts together."""
        from train.generate import generate

        model, vocab, _ = _load(self.checkpoint, self.device)
        results: list[Result | None] = [None] * len(requests)
        ready: list[tuple[int, list[int]]] = []
        params: dict[int, Any] = {}
        for k, request in enumerate(requests):
            try:
                params[k] = sampling_params(request.sampling)  # winnow serve's rules: what it would refuse
                ids = self._prompt(request)
            except ValueError as exc:  # sampling outside the rules, or a chat template that cannot render these
                results[k] = Result(None, "bad_request", error=f"{self.checkpoint}: {exc}")
                continue
            if len(ids) >= model.cfg.max_seq_len:  # this request's own fault, as a 400 would be
                results[k] = Result(None, "bad_request", error=f"{self.checkpoint}: a prompt of {len(ids)} tokens "
                                    f"leaves no room in the model's context of {model.cfg.max_seq_len}")
                continue
            ready.append((k, ids))
        ready.sort(key=lambda item: len(item[1]))
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start:start + self.batch_size]
            outs = generate(model, vocab, [ids for _, ids in chunk], [params[k] for k, _ in chunk], self.device,
                            want_scores=False)
            for (k, ids), out in zip(chunk, outs, strict=True):
                results[k] = Result(out.text, "ok", len(ids), len(out.tokens), out.finish_reason)
                self._remember(requests[k], results[k])
        for request, result in zip(requests, results, strict=True):
            if result.status != "ok":
                self._remember(request, result)
        return results  # type: ignore[return-value]

    def _remember(self, request: Request, result: Result) -> None:
        if self.cache is not None:
            self.cache.put(request.key(self.model), {
                "status": result.status, "text": result.text, "error": result.error,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason})

    async def run(self, requests: list[Request]) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        missing = []
        for k, request in enumerate(requests):
            hit = self.cache.get(request.key(self.model)) if self.cache is not None else None
            if hit is None:
                missing.append(k)
                continue
            self.stats.cache_hits += 1
            results[k] = Result(hit.get("text"), hit["status"], hit.get("prompt_tokens", 0),
                                hit.get("completion_tokens", 0), hit.get("finish_reason"), True, hit.get("error"))
        if missing:
            fresh = await asyncio.to_thread(self._generate, [requests[k] for k in missing])
            for k, result in zip(missing, fresh, strict=True):
                results[k] = result
                self.stats.requests += 1
                if result.status == "ok":
                    self.stats.completed += 1
                    self.stats.prompt_tokens += result.prompt_tokens
                    self.stats.completion_tokens += result.completion_tokens
                else:
                    self.stats.bad_requests += 1
        return results  # type: ignore[return-value]
