"""A run's costs: per-part CPU with child processes counted, py-spy's sampling profile read back, and
spaCy and presidio loading without the deep-learning stacks they never use here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.cputime import Costs
from pipeline.pyspy import SamplingProfiler, pyspy_binary, summarize

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


MEASURE_CHILDREN = """
import json, subprocess, sys, time
from pipeline.cputime import Costs, tree_cpu_s
BURN = {burn!r}
# A long-lived child does the work (as the extract step's sandbox does) and stays alive afterwards.
child = subprocess.Popen([sys.executable, "-c", "import sys, time\\nsys.stdin.readline()\\n"
                          + BURN.format(s=0.4) + "print('done', flush=True)\\nsys.stdin.readline()\\n"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
costs = Costs()
own0 = time.process_time()
with costs.measure("sandbox"):
    child.stdin.write("go\\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "done"
own = time.process_time() - own0
with costs.measure("exited"):
    subprocess.run([sys.executable, "-c", BURN.format(s=0.3)], check=True)
child.stdin.write("end\\n")
child.stdin.flush()
child.wait(timeout=10)
print(json.dumps({{"own": own, "tree": tree_cpu_s(), **costs.record()}}))
"""


def test_costs_count_a_live_child_process_and_an_exited_one():
    # In a process of its own, as in a Ray worker: the test process's own children (a session's Ray) come
    # and go under other parents, which is not what this measures.
    out = subprocess.run([sys.executable, "-c", MEASURE_CHILDREN.format(burn=BURN)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout)
    assert record["own"] < 0.2  # the measuring process itself only waited
    assert record["sandbox"]["cpu_s"] >= 0.35
    assert record["exited"]["cpu_s"] >= 0.25
    assert record["tree"] >= record["sandbox"]["cpu_s"] + record["exited"]["cpu_s"]


def test_costs_of_a_lazy_reader_count_only_producing_its_items():
    costs = Costs()

    def slow_items():
        for i in range(3):
            t = time.process_time()
            while time.process_time() - t < 0.05:
                pass
            yield i

    seen = []
    for item in costs.iterate("read", slow_items()):
        t = time.process_time()
        while time.process_time() - t < 0.05:  # the consumer's own work is not the reader's
            pass
        seen.append(item)
    assert seen == [0, 1, 2]
    assert 0.13 <= costs.record()["read"]["cpu_s"] < 0.25


@pytest.mark.skipif(pyspy_binary() is None, reason="py-spy is installed with the dev extra")
def test_pyspy_samples_a_process_tree_and_names_its_hottest_functions(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys, time
        CHILD = '''
        import time
        def burn_cpu_in_child():
            t = time.time()
            while time.time() - t < 3.0:
                pass
        burn_cpu_in_child()
        '''
        child = subprocess.Popen([sys.executable, "-c", CHILD])
        def spin_in_parent():
            t = time.time()
            while time.time() - t < 3.0:
                pass
        print("ready", flush=True)
        spin_in_parent()
        child.wait()
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"
    profiler = SamplingProfiler(tmp_path / "profile", parent.pid, rate_hz=100)
    assert profiler.start()
    time.sleep(2.0)
    summary = profiler.stop()
    parent.wait(timeout=10)
    assert summary is not None and summary["samples"] > 50
    hottest = {f["name"].split(" ")[0]: f["share"] for f in summary["functions"][:2]}
    assert set(hottest) == {"burn_cpu_in_child", "spin_in_parent"} and min(hottest.values()) > 0.3
    assert len(summary["processes"]) == 2  # the child's stacks are told apart from the parent's
    assert (tmp_path / "profile" / "pyspy.txt").read_text().count("burn_cpu_in_child") >= 1


def test_summarize_reads_nested_process_frames():
    collapsed = "\n".join([
        'process 1:"python winnow run x.yaml";process 2:"raylet --x";process 3:"python default_worker.py";'
        "main_loop (/v/site-packages/ray/_private/worker.py:10);find (/repo/filters/pii.py:5) 30",
        'process 1:"python winnow run x.yaml";main (/repo/pipeline/cli.py:3);'
        "wait (/usr/lib/python3.11/threading.py:1) 10",
        "garbage line",
    ])
    summary = summarize(collapsed)
    assert summary["samples"] == 40
    assert summary["functions"][0] == {"name": "find (filters/pii.py)", "samples": 30, "share": 0.75}
    assert {p["name"] for p in summary["processes"]} == {"Ray worker", "driver"}
    assert {f["name"] for f in summary["files"]} == {"filters/pii.py", "threading.py"}


def test_heuristics_and_pii_load_without_torch_or_transformers_and_still_find_pii():
    code = textwrap.dedent("""
        import sys
        from filters.heuristics import spacy_tokenizer
        from filters.pii import Pii, PiiParams
        assert [t.text for t in spacy_tokenizer("en")("Hello, world.")] == ["Hello", ",", "world", "."]
        doc = {"id": "1", "text": "Write to jane.doe@example.org or call +1 415-555-0100 today."}
        Pii(PiiParams())([doc])
        assert "jane.doe@example.org" not in doc["text"], doc
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        import torch  # still importable afterwards, for whatever code wants it
        print(torch.tensor([1.0]).sum().item())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "1.0"]
