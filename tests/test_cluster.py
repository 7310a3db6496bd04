"""The pipeline on a real two-node Ray cluster on loopback, joined by address."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.runner import Runner
from tests.conftest import OUTPUT_EXTRAS, ROOT, SAMPLE


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.parametrize("lost_during", ["extraction", pytest.param("dedup", marks=pytest.mark.slow)])
def test_a_cluster_run_spreads_shards_and_survives_losing_a_node(two_node_cluster, tmp_path, lost_during):
    inputs = [str(SAMPLE / "wget-2024-dolma-000*.warc.gz"), str(SAMPLE / "cc-2020-34-resiliparse.warc.gz")]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [f"output_dir={tmp_path}", f"input={json.dumps(inputs)}"])
    manifest = Runner(cfg, ray_address=two_node_cluster.address).run()
    assert manifest["status"] == "done"
    # extract, heuristics, dedup (across both nodes), line filters, quality, pii, synth. A stage's shards are
    # its upstream stage's non-empty outputs.
    stages = manifest["stages"]
    assert len(stages) == 7 and stages[0]["shards"]["done"] == 3
    for upstream, stage in zip(stages, stages[1:], strict=False):
        written = len(list((tmp_path / upstream["dir"]).glob("part-*.parquet")))
        assert stage["shards"]["done"] == stage["shards"]["total"] == written > 0
    nodes = {n.node_id for n in two_node_cluster.list_all_nodes()}
    assert len(nodes) == 2
    records = [json.loads(p.read_text()) for p in tmp_path.glob("stages/*/_done/*.json")]
    assert len(records) == sum(s["shards"]["done"] for s in stages) and {r["node"] for r in records} <= nodes
    # One CPU per node and three shards at once in every stage: both nodes must have run some.
    assert {r["node"] for r in records} == nodes
    output = pq.read_table(tmp_path / "output", ignore_prefixes=OUTPUT_EXTRAS)
    assert output.num_rows == manifest["stages"][-1]["rows_out"] > 0

    # The same run again, and the worker node is lost once the first extraction shard is done (its own
    # shard, or the next one it took, dies with it), or once dedup has begun (its shuffled tables in the
    # node's object store die with it). Ray retries the lost tasks, and rebuilds lost tables from their
    # lineage, on the head node; the output is the undisturbed run's, byte for byte.
    disturbed = tmp_path / "disturbed"
    signal_file = {"extraction": "stages/00_extract/_done/*.json", "dedup": "stages/02_dedup/_stage.json"}[lost_during]
    worker = next(n for n in two_node_cluster.list_all_nodes() if n is not two_node_cluster.head_node)
    removed = threading.Event()

    def remove_worker_mid_stage() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not list(disturbed.glob(signal_file)):
            time.sleep(0.02)
        two_node_cluster.remove_node(worker, allow_graceful=False)
        removed.set()

    killer = threading.Thread(target=remove_worker_mid_stage, daemon=True)
    killer.start()
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [f"output_dir={disturbed}", f"input={json.dumps(inputs)}"])
    again = Runner(cfg, ray_address=two_node_cluster.address).run()
    killer.join(timeout=130)
    assert removed.is_set() and again["status"] == "done"
    assert file_digests(disturbed / "output") == file_digests(tmp_path / "output")
    later = [json.loads(p.read_text()) for p in disturbed.glob("stages/0[1-6]_*/_done/*.json")
             if lost_during == "extraction" or p.parent.parent.name >= "02"]
    assert later and {r["node"] for r in later} == {two_node_cluster.head_node.node_id}


def file_digests(root) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("part-*.parquet"))}


@pytest.mark.slow
def test_a_local_run_does_not_join_a_cluster_running_on_the_same_machine(two_node_cluster, tmp_path):
    import ray

    ray.shutdown()  # the fixture's cluster keeps running; this driver is not connected to it
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [f"output_dir={tmp_path}", f"input={SAMPLE / 'cc-2014-35-npm.warc'}", "ray.num_cpus=1"])
    manifest = Runner(cfg).run()
    assert manifest["status"] == "done"
    record = json.loads(next((tmp_path / "stages" / "00_extract" / "_done").glob("*.json")).read_text())
    assert record["node"] not in {n.node_id for n in two_node_cluster.list_all_nodes()}
