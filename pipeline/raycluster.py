"""Starting or joining Ray, and refusing work that no node of the cluster could ever schedule.

Ray waits forever for resources it does not have and for a head it cannot reach; a batch job
should instead fail at once and say which key to change.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from pipeline.config import ConfigError, StageConfig

log = logging.getLogger("winnow.run")

# Set in every Ray worker before it imports pyarrow (see parquet_io._use_a_returning_memory_pool).
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
CONNECT_TIMEOUT_S = 5.0


class RayConnection:
    def __init__(self, address: str | None, num_cpus: int | None):
        self.address, self.num_cpus = address, num_cpus
        self.started = False
        self.asked = False  # whether any stage needed Ray (a rerun with nothing to do never does)

    def ensure(self) -> None:
        import ray

        self.asked = True
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.address:
            check_reachable(self.address)
            try:
                ray.init(address=self.address, runtime_env={"env_vars": WORKER_ENV}, **kwargs)
            except (ConnectionError, RuntimeError) as exc:
                raise ConfigError(f"ray.address {self.address!r}: cannot join the cluster: {exc}") from None
        else:
            for key, value in WORKER_ENV.items():  # a local Ray's workers inherit the driver's environment
                os.environ.setdefault(key, value)
            # "local" starts a private Ray even when another one runs on this machine.
            ray.init(address="local", num_cpus=self.num_cpus, **kwargs)
        self.started = True

    def cpus(self) -> float:
        """The CPUs of the cluster's alive nodes (it may grow or shrink while a run goes on)."""
        import ray

        return float(ray.cluster_resources().get("CPU", 0.0))

    def check_schedulable(self, stage: StageConfig) -> None:
        """Fail now when no alive node could run one task of this stage."""
        import ray

        wanted = {"CPU": stage.resources.num_cpus, "GPU": stage.resources.num_gpus,
                  "memory": (stage.resources.memory_mb or 0) << 20}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
            return
        keys = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_mb"}
        short = []
        for key, need in wanted.items():
            have = max((node.get(key, 0) for node in nodes), default=0)
            if need and have < need:
                if key == "memory":
                    short.append(f"resources.memory_mb={need >> 20} but the largest node offers {int(have) >> 20} MB")
                else:
                    short.append(f"resources.{keys[key]}={need:g} but the largest node has {have:g}")
        raise ConfigError(f"stage {stage.name!r}: no node of the Ray cluster can run its tasks: {'; '.join(short)}. "
                          "Lower the request or add nodes that have it")

    def shutdown(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def check_reachable(address: str) -> None:
    """A quick TCP connect to host:port, since ray.init retries an unreachable head for minutes."""
    if address == "auto" or address.startswith(("ray://", "local")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address {address!r}: expected host:port, 'auto' or ray://host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(f"ray.address {address!r}: cannot reach a Ray head there ({exc.strerror or exc}); "
                          "start the cluster first or fix the address") from None
