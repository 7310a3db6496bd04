"""Rate limits for an LLM endpoint: requests per second and tokens per minute, shared by a cluster.

An endpoint's limit holds for all of Winnow's workers together, so on Ray the budget lives in one
named actor (`winnow-llm-ratelimit`, one per endpoint): a worker reserves a request and its token
estimate there and is told how long to wait. The actor keeps two token buckets and lets them go into
debt, so a reservation is one quick call that never blocks the actor, and waits come out in order.
Without Ray (a test, a notebook, one process) the same limits run in process on aiolimiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger("winnow.llm.ratelimit")

ACTOR_PREFIX = "winnow-llm-ratelimit"


class Limiter(Protocol):
    async def acquire(self, tokens: int) -> None: ...


class Bucket:
    """A token bucket that can go into debt: `reserve` takes `amount` now and says how long to wait."""

    def __init__(self, rate_per_s: float, capacity: float):
        self.rate, self.capacity = rate_per_s, capacity
        self.level, self.t = capacity, time.monotonic()

    def reserve(self, amount: float, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        self.level -= min(amount, self.capacity)  # one request larger than the bucket still gets through
        return max(0.0, -self.level / self.rate)


class BucketPair:
    """Requests per second and tokens per minute; either may be None (no limit)."""

    def __init__(self, requests_per_s: float | None, tokens_per_min: float | None):
        # Bursts of at most one second of requests and one minute's tokens.
        self.requests = Bucket(requests_per_s, max(1.0, requests_per_s)) if requests_per_s else None
        self.tokens = Bucket(tokens_per_min / 60.0, tokens_per_min) if tokens_per_min else None

    def reserve(self, tokens: int) -> float:
        now = time.monotonic()
        waits = [b.reserve(amount, now) for b, amount in ((self.requests, 1), (self.tokens, tokens)) if b]
        return max(waits, default=0.0)


class RateLimitActor:
    """The cluster-wide budget (wrapped with ray.remote on first use)."""

    def __init__(self, requests_per_s: float | None, tokens_per_min: float | None):
        self.buckets = BucketPair(requests_per_s, tokens_per_min)
        self.reservations = 0

    def reserve(self, tokens: int) -> float:
        self.reservations += 1
        return self.buckets.reserve(tokens)

    def count(self) -> int:
        return self.reservations


class RayLimiter:
    """Reserves at the named actor, then sleeps the wait it was given."""

    def __init__(self, name: str, requests_per_s: float | None, tokens_per_min: float | None):
        import ray

        actor_cls = ray.remote(num_cpus=0)(RateLimitActor)
        self.actor = actor_cls.options(name=name, get_if_exists=True, lifetime=None).remote(
            requests_per_s, tokens_per_min)
        self.name = name

    async def acquire(self, tokens: int) -> None:
        wait = await self.actor.reserve.remote(tokens)
        if wait > 0:
            await asyncio.sleep(wait)


class LocalLimiter:
    """The same limits within one process (aiolimiter's leaky buckets)."""

    def __init__(self, requests_per_s: float | None, tokens_per_min: float | None):
        from aiolimiter import AsyncLimiter

        self.requests = AsyncLimiter(max(1.0, requests_per_s), max(1.0, requests_per_s) / requests_per_s) \
            if requests_per_s else None
        self.tokens = AsyncLimiter(tokens_per_min, 60.0) if tokens_per_min else None
        self.tokens_per_min = tokens_per_min

    async def acquire(self, tokens: int) -> None:
        if self.requests is not None:
            await self.requests.acquire()
        if self.tokens is not None:
            await self.tokens.acquire(min(tokens, self.tokens_per_min))


class NoLimit:
    async def acquire(self, tokens: int) -> None:
        return None


def make_limiter(endpoint: str, requests_per_s: float | None, tokens_per_min: float | None,
                 mode: str = "auto") -> Limiter:
    """The limiter for an endpoint: the cluster's actor when Ray is up (or `mode="ray"`), else in process."""
    if not requests_per_s and not tokens_per_min:
        return NoLimit()
    use_ray = mode == "ray"
    if mode == "auto":
        try:
            import ray

            use_ray = ray.is_initialized()
        except ImportError:
            use_ray = False
    if use_ray:
        return RayLimiter(f"{ACTOR_PREFIX}:{endpoint}", requests_per_s, tokens_per_min)
    return LocalLimiter(requests_per_s, tokens_per_min)
