"""A sampling profile of a whole run by py-spy: the driver and every process under it (the local Ray
cluster's workers and the extract step's child process among them).

py-spy reads stacks from outside the process, so the run's code carries no profiler and its timings barely
move (`--nonblocking`: the sampled processes are not paused). It writes collapsed stacks,
RUN_DIR/profile/pyspy.txt, one line per distinct stack with its sample count, which flamegraph.pl,
speedscope and inferno read as they are; `summarize` turns them into the functions and files that hold
the most samples, for the report. A run that joins a remote cluster samples only its driver: profile the
workers on their own nodes with `py-spy record --pid`.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("winnow.profile")
RATE_HZ = 20  # each sample reads every process of the tree: on a small machine 50 Hz cost a third of a core
_COUNT = re.compile(r"\) \d+$|\" \d+$")  # a frame's ")" or a process frame's closing quote, then the count
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def pyspy_binary() -> str | None:
    """py-spy from this environment's bin folder first (it is installed beside winnow), else from PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class SamplingProfiler:
    """`start()` attaches py-spy to this process and its descendants; `stop()` ends it and returns the
    summary (None when py-spy is missing or could not attach: the run goes on without a profile)."""

    def __init__(self, out_dir: Path, pid: int, rate_hz: int = RATE_HZ) -> None:
        self.out_dir, self.pid, self.rate_hz = out_dir, pid, rate_hz
        self.stacks = out_dir / "pyspy.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        binary = pyspy_binary()
        if binary is None:
            log.warning("profile: py-spy is not installed (pip install py-spy); the run goes on without a "
                        "sampling profile, its per-step costs are in the manifest as always")
            return False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stacks.unlink(missing_ok=True)
        cmd = [binary, "record", "--pid", str(self.pid), "--subprocesses", "--nonblocking", "--full-filenames",
               "--rate", str(self.rate_hz), "--format", "raw", "--output", str(self.stacks)]
        self.log_path = self.out_dir / "pyspy.log"
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        log.info("profile: py-spy samples this run at %d Hz into %s", self.rate_hz, self.stacks)
        return True

    def cpu_s(self) -> float:
        """What py-spy itself has spent: it runs under the driver, whose process tree the run's costs read."""
        if self.proc is None:
            return 0.0
        from pipeline.cputime import descendants_cpu_s

        return descendants_cpu_s().get(self.proc.pid, 0.0)

    def stop(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.stacks.exists() or not self.stacks.stat().st_size:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            log.warning("profile: py-spy wrote no samples (it may lack ptrace permission: run as the same "
                        "user, or with CAP_SYS_PTRACE in a container): %s", " / ".join(tail))
            return None
        return summarize(self.stacks.read_text(errors="replace"))


def _frame(text: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame, 'spin (/path/mod.py:3)'."""
    m = _FRAME.match(text.strip())
    return (m["func"], m["file"]) if m else (text.strip(), "")


def _short(path: str) -> str:
    """A file as a package-relative path: .../site-packages/x/y.py -> x/y.py, .../repo/pipeline/a.py ->
    pipeline/a.py, the standard library's .../lib/python3.11/json/a.py -> json/a.py."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python3" in path:
        return path.rsplit("/lib/python3", 1)[1].split("/", 1)[-1]
    for root in ("pipeline/", "filters/", "train/", "llmclient/"):
        if f"/{root}" in path:
            return root + path.rsplit(f"/{root}", 1)[1]
    return path


def summarize(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Sample counts by leaf function (self time), by file, and by process, from py-spy's collapsed stacks."""
    by_function: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_process: Counter[str] = Counter()
    total = 0
    for line in _records(collapsed):
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # A child's stacks hang under its ancestors' process frames: driver;raylet;worker;calls...
        roots = 0
        while roots < len(frames) and frames[roots].startswith("process "):
            roots += 1
        process, calls = (frames[roots - 1] if roots else ""), frames[roots:]
        if not calls:
            continue
        func, file = _frame(calls[-1])
        by_function[f"{func} ({_short(file)})"] += n
        by_file[_short(file)] += n
        by_process[_process_name(process)] += n
        total += n

    def table(counts: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": name, "samples": n, "share": n / total} for name, n in counts.most_common(top)]

    return {"samples": total, "functions": table(by_function), "files": table(by_file),
            "processes": table(by_process)}


ROLES = (("default_worker.py", "Ray worker"), ("raylet", "raylet"), ("gcs_server", "Ray GCS"),
         ("dashboard", "Ray dashboard"), ("runtime_env", "Ray runtime env agent"), ("log_monitor", "Ray log monitor"),
         ("extract_sandbox", "extract sandbox"))


def _records(collapsed: str) -> list[str]:
    """One string per stack. A process frame holds its command line as it is, so a `python -c` program
    spreads one stack over several lines; a stack ends where a line ends in its sample count."""
    records, pending = [], []
    for line in collapsed.split("\n"):
        pending.append(line)
        if _COUNT.search(line):
            records.append("\n".join(pending))
            pending = []
    return records


def _process_name(root: str) -> str:
    """What a sampled process is, from py-spy's 'process PID:"command line"' root frame."""
    command = root.split(":", 1)[1] if ":" in root else root
    for needle, role in ROLES:
        if needle in command:
            return role
    return "driver" if "winnow" in command or "pytest" in command else command.strip('"').split(" ")[0]
