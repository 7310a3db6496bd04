"""A client for OpenAI-compatible endpoints, shared by the pipeline and the trainer.

`client` is the async engine (bounded concurrency, retries, `Retry-After`), `cache` the durable
request cache, `ratelimit` the per-endpoint budget, and `sync` the blocking face that scripts,
the quality annotator and the best-of-n judge call. It imports neither `pipeline` nor `train`.
"""

from llmclient.sync import LLMClient, LLMError

__all__ = ["LLMClient", "LLMError"]
