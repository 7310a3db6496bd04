"""Winnow's LLM client against datatrove's InferenceRunner (server type `endpoint`) and distilabel's
OpenAILLM: same loopback server, same prompts, same concurrency, same machine.

The server is tests/fake_llm_server.py in its own process, answering every request after a fixed
`latency_s` plus `per_token_s` per completion token, so what differs between runs is the client.
Each tool runs in a fresh subprocess (`--worker`), three ways:

- throughput: N requests, no faults. requests/s, and overhead per request = the time a concurrency
  slot is busy beyond the server's own latency: run * concurrency / N - latency, where `run` is timed
  inside the worker around the requests (imports and setup left out);
- faults: 5% 429 (Retry-After in seconds or as an HTTP date), 2% 500, 1% dropped connections. Counted
  at the server: distinct prompts answered, prompts answered more than once; and what the tool returned;
- kill and resume: the job is SIGKILLed once the server has answered half of it, then run again to the
  end with the same state directory; the server counts prompts answered twice (paid twice).

    python bench/llm_client.py [--n 2000] [--concurrency 64] [--tools winnow,datatrove,distilabel]

First, with no server latency, the client time of one sequential request on httpx's async client and on
aiohttp (why Winnow's client is built on aiohttp). Writes bench/results/llm_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable

from bench.paths import results_dir  # noqa: E402

TEXT = ("Common Crawl is a non-profit organization that crawls the web and freely provides its archives and "
        "datasets to the public. Summarize this passage in one sentence.")


def prompt(i: int) -> str:
    return f"Item {i}. {TEXT}"


# -- workers (each in its own process) ---------------------------------------------------------

def work_winnow(url: str, n: int, concurrency: int, state: str) -> dict:
    from llmclient.cache import RequestCache
    from llmclient.client import AsyncLLMClient, Request, run_sync

    client = AsyncLLMClient(url, "fake", concurrency=concurrency, cache=RequestCache(state, "bench"),
                            backoff_s=0.5, backoff_max_s=10)
    requests = [Request([{"role": "user", "content": prompt(i)}], {"max_tokens": 16, "temperature": 0.0})
                for i in range(n)]
    start = time.perf_counter()
    results = run_sync(client.run(requests))
    run_s = time.perf_counter() - start
    return {"ok": sum(r.status == "ok" for r in results), "run_s": run_s, "stats": client.stats.as_dict()}


def work_datatrove(url: str, n: int, concurrency: int, state: str) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter

    async def rollout(document, generate):
        result = await generate({"messages": [{"role": "user", "content": document.text}], "max_tokens": 16,
                                 "temperature": 0.0})
        return result.text

    config = InferenceConfig(server_type="endpoint", model_name_or_path="fake", endpoint_url=url.removesuffix("/v1"),
                             max_concurrent_generations=concurrency, use_chat=True, metric_interval=10**6,
                             request_timeout=120)
    writer = JsonlWriter(f"{state}/out", output_filename="${rank}_${chunk_index}.jsonl", compression=None)
    runner = InferenceRunner(rollout, config, writer, checkpoints_local_dir=f"{state}/ckpt", skip_bad_requests=True)
    start = time.perf_counter()
    runner.run([Document(text=prompt(i), id=str(i)) for i in range(n)], rank=0, world_size=1)
    run_s = time.perf_counter() - start
    ok = 0
    for path in Path(f"{state}/out").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            ok += bool(json.loads(line)["metadata"].get("rollout_results"))
    return {"ok": ok, "run_s": run_s}


def work_distilabel(url: str, n: int, concurrency: int, state: str) -> dict:
    from distilabel.models.llms import OpenAILLM

    llm = OpenAILLM(model="fake", base_url=url, api_key="unused", max_retries=6, timeout=120)
    llm.load()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with gate:
            try:
                out = await llm.agenerate(input=[{"role": "user", "content": prompt(i)}], max_new_tokens=16,
                                          temperature=0.0)
                return bool(out["generations"][0])
            except Exception:  # noqa: BLE001 - counted as not answered
                return False

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    start = time.perf_counter()
    ok = sum(asyncio.run(main()))
    return {"ok": ok, "run_s": time.perf_counter() - start}


WORKERS = {"winnow": work_winnow, "datatrove": work_datatrove, "distilabel": work_distilabel}


def transport_check(url: str, n: int = 200) -> dict:
    """Client time per sequential request, httpx's async client against aiohttp's, on one connection."""
    import aiohttp
    import httpx

    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": prompt(0)}], "max_tokens": 16})
    headers = {"Content-Type": "application/json"}

    async def with_httpx() -> float:
        async with httpx.AsyncClient() as client:
            start = time.perf_counter()
            for _ in range(n):
                (await client.post(f"{url}/chat/completions", content=body, headers=headers)).read()
            return (time.perf_counter() - start) / n

    async def with_aiohttp() -> float:
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            for _ in range(n):
                async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
                    await response.read()
            return (time.perf_counter() - start) / n

    return {"httpx_ms_per_request": round(asyncio.run(with_httpx()) * 1000, 2),
            "aiohttp_ms_per_request": round(asyncio.run(with_aiohttp()) * 1000, 2), "requests": n}


# -- the driver ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, latency_s: float, per_token_s: float, faults: bool):
        self.port = free_port()
        args = [PYTHON, str(ROOT / "tests" / "fake_llm_server.py"), "--port", str(self.port),
                "--latency-s", str(latency_s), "--per-token-s", str(per_token_s)]
        if faults:
            args += ["--rate-429", "0.05", "--rate-500", "0.02", "--rate-drop", "0.01"]
        self.proc = subprocess.Popen(args)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake server did not start")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run_worker(tool: str, url: str, n: int, concurrency: int, state: str, kill_at: int | None = None,
               server: Server | None = None, timeout: float = 900) -> dict:
    cmd = [PYTHON, __file__, "--worker", tool, "--url", url, "--n", str(n), "--concurrency", str(concurrency),
           "--state", state]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if kill_at is not None:
        while proc.poll() is None and server.stats()["answered"] < kill_at:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return {"killed_after_answers": server.stats()["answered"]}
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    wall = time.perf_counter() - start
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": f"exit {proc.returncode}", "ok": None}
    result["wall_s"] = round(wall, 3)
    return result


def against_winnow_serve(args: argparse.Namespace) -> None:
    """The same prompts through each client to `winnow serve` with a real (tiny) checkpoint: the server's
    generation dominates here, so the figure is what a user sees, not the client's own overhead."""
    server = subprocess.Popen([str(Path(PYTHON).parent / "winnow"), "serve", args.serve, "--port", "0",
                               "--name", "fake", "--max-prompts", "64"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"(http://[\d.:]+/v1)", server.stdout.readline()).group(1)
        results: dict = {"checkpoint": args.serve, "n": args.n, "concurrency": args.concurrency, "tools": {}}
        for tool in args.tools.split(","):
            state = tempfile.mkdtemp(prefix=f"bench-{tool}-")
            try:
                r = run_worker(tool, url, args.n, args.concurrency, state)
            finally:
                shutil.rmtree(state, ignore_errors=True)
            results["tools"][tool] = {"returned_ok": r.get("ok"), "error": r.get("error"),
                                      "requests_per_s": round(args.n / r["run_s"], 2) if r.get("run_s") else None}
            print(tool, json.dumps(results["tools"][tool]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    Path(args.out).with_name("llm_client_serve.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--url")
    parser.add_argument("--state")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-s", type=float, default=0.05)
    parser.add_argument("--per-token-s", type=float, default=0.001)
    parser.add_argument("--tools", default="winnow,datatrove,distilabel")
    parser.add_argument("--out", default=str(results_dir() / "llm_client.json"))
    parser.add_argument("--serve", metavar="CKPT",
                        help="instead: each tool's throughput against `winnow serve CKPT` (a real model on CPU)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.url, args.n, args.concurrency, args.state)), flush=True)
        return
    if args.serve:
        against_winnow_serve(args)
        return
    # 16 completion tokens an answer: the server's latency per request.
    server_latency = args.latency_s + 16 * args.per_token_s
    check_server = Server(0.0, 0.0, faults=False)  # no latency: what remains is client and loopback time
    try:
        transports = transport_check(check_server.url)
    finally:
        check_server.close()
    print("transport", json.dumps(transports), flush=True)
    results: dict = {"transport_check": transports}
    results["setup"] = {"n": args.n, "concurrency": args.concurrency, "latency_s": args.latency_s,
                        "per_token_s": args.per_token_s, "server_latency_per_request_s": server_latency,
                        "cpus": os.cpu_count(), "python": platform.python_version()}
    results["tools"] = {}
    for tool in args.tools.split(","):
        row: dict = {}
        for mode in ("throughput", "faults", "kill_resume"):
            server = Server(args.latency_s, args.per_token_s, faults=mode == "faults")
            state = tempfile.mkdtemp(prefix=f"bench-{tool}-")
            try:
                if mode == "kill_resume":
                    killed = run_worker(tool, server.url, args.n, args.concurrency, state, kill_at=args.n // 2,
                                        server=server)
                    resumed = run_worker(tool, server.url, args.n, args.concurrency, state)
                    s = server.stats()
                    row[mode] = {**killed, "answered_total": s["answered"], "answered_twice": s["answered_twice"],
                                 "resumed_ok": resumed.get("ok"), "resume_wall_s": resumed.get("wall_s")}
                else:
                    r = run_worker(tool, server.url, args.n, args.concurrency, state)
                    s = server.stats()
                    entry = {"run_s": round(r["run_s"], 3) if "run_s" in r else None, "process_wall_s": r.get("wall_s"),
                             "returned_ok": r.get("ok"), "error": r.get("error"), "server": s}
                    if mode == "throughput" and "run_s" in r:  # timed inside the worker: no imports, no setup
                        entry["requests_per_s"] = round(args.n / r["run_s"], 1)
                        entry["overhead_ms_per_request"] = round(
                            (r["run_s"] * args.concurrency / args.n - server_latency) * 1000, 2)
                    row[mode] = entry
            finally:
                server.close()
                shutil.rmtree(state, ignore_errors=True)
            print(tool, mode, json.dumps(row[mode]), flush=True)
        results["tools"][tool] = row
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
