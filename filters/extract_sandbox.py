"""A child process that extracts pages under a hard time limit: it is killed when a page overruns.

resiliparse spends its time in C code that no signal can interrupt, so a limit inside the worker
process is not hard. Each `extract` step keeps one child (`python filters/extract_methods.py`, which
imports only resiliparse until trafilatura is needed), started with the first risky page, and sends it
those pages one at a time over a pipe;
the round trip costs tens of microseconds against milliseconds of extraction. When a page takes longer
than the limit, or the child dies (a crash in C code), the child is killed, the page is reported,
and the next page starts a fresh child. A child whose parent dies exits at its next read.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("extract_methods.py")
STARTUP_S = 120.0  # a fresh interpreter importing trafilatura on a loaded machine


class PageTimeout(Exception):
    """The page was not extracted within the limit; the child was killed."""


class ChildCrashed(Exception):
    """The child died on the page (or could not start)."""


class Sandbox:
    """One child process; `preload` names modules it imports before it takes pages (not timed)."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self.proc: subprocess.Popen | None = None
        self.send_conn: Connection | None = None
        self.recv_conn: Connection | None = None
        self.starts = 0

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(to_child_r), str(from_child_w), *self.preload],
                                     pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        self.starts += 1
        # The child says it is ready once its imports are done, so that no page's limit pays for them.
        try:
            if not self.recv_conn.poll(STARTUP_S) or self.recv_conn.recv() != "ready":
                raise EOFError
        except (EOFError, OSError) as exc:
            self.close()
            raise ChildCrashed(f"the extraction child did not start within {STARTUP_S:.0f} s") from exc

    def call(self, request: tuple[Any, ...], timeout_s: float) -> Any:
        """Send `request` to the child and return its answer; PageTimeout or ChildCrashed otherwise."""
        if self.proc is None:
            self._start()
        assert self.send_conn is not None and self.recv_conn is not None
        try:
            self.send_conn.send(request)
            if not self.recv_conn.poll(timeout_s):
                self.close()
                raise PageTimeout()
            ok, answer = self.recv_conn.recv()
        except (EOFError, OSError) as exc:
            code = self.proc.poll() if self.proc else None
            self.close()
            raise ChildCrashed(f"the extraction child died (exit code {code})") from exc
        if not ok:
            raise RuntimeError(answer)
        return answer

    def close(self) -> None:
        """Kill the child now; the next call starts another."""
        for conn in (self.send_conn, self.recv_conn):
            if conn is not None:
                conn.close()
        self.send_conn = self.recv_conn = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: nothing left to report to
            pass


def serve(read_fd: int, write_fd: int, handler: Callable[..., Any], preload: list[str]) -> None:
    """The child's loop: answer each request with (True, result) or (False, error text) until EOF."""
    recv_conn, send_conn = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    for module in preload:
        importlib.import_module(module)
    send_conn.send("ready")
    while True:
        try:
            request = recv_conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = (True, handler(*request))
        except Exception as exc:  # noqa: BLE001 - one page's failure is reported, the child lives on
            answer = (False, f"{type(exc).__name__}: {exc}")
        send_conn.send(answer)
