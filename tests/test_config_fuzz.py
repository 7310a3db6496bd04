"""Every config key, given values of the right and the wrong type: a config is either valid or a
ConfigError that names the key, never a traceback; invalid values fail before any work starts."""

from __future__ import annotations

import copy
import math
import random
import socket
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from filters import STEPS
from pipeline.cli import main
from pipeline.config import STAGE_MODELS, ConfigError, RunConfig, validate
from pipeline.kinds import KINDS
from tests.conftest import ROOT, SAMPLE

QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
VALUES: list[Any] = [None, -1, 0, 1, 3, 0.5, -2.5, 10**12, math.nan, "", "x", "bogus", "1", True, False, [], ["x"],
                     [1, 2], {}, {"a": 1}]


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def key_paths() -> list[tuple[Any, ...]]:
    """Every key of the quickstart config and of the models behind it, as paths into the raw dict."""
    paths: list[tuple[Any, ...]] = [(k,) for k in _fields(RunConfig)] + [("ray", k) for k in ("address", "num_cpus")]
    for i, stage in enumerate(QUICKSTART["stages"]):
        # Every key any kind takes, on every stage: one its kind does not use must be an error naming it.
        paths += [("stages", i, k) for k in dict.fromkeys(k for m in STAGE_MODELS.values() for k in _fields(m))]
        paths += [("stages", i, "resources", k) for k in ("num_cpus", "num_gpus", "memory_mb")]
        paths += [("stages", i, "writer", k) for k in ("target_shard_mb", "row_group_mb", "compression",
                                                       "compression_level")]
        if i == 0:
            from filters.warc import WarcReaderParams

            paths += [("stages", 0, "reader", k) for k in _fields(WarcReaderParams)]
        if stage.get("kind") == "dedup":
            from pipeline.dedup.params import DedupParams

            paths += [("stages", i, "dedup", k) for k in _fields(DedupParams)]
        for j, step in enumerate(stage.get("steps", [])):
            paths += [("stages", i, "steps", j, k) for k in _fields(STEPS[step["type"]].Params)]
    return paths


def with_value(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(QUICKSTART)
    node = raw
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]
    node[path[-1]] = value
    return raw


def check(raw: dict[str, Any], path: tuple[Any, ...]) -> RunConfig | None:
    """A valid config, or None after checking that the ConfigError names the key."""
    try:
        return validate(raw)
    except ConfigError as exc:
        message = str(exc)
        assert "Traceback" not in message and message.strip()
        named = {str(p) for p in path if not isinstance(p, int)}
        stage = QUICKSTART["stages"][path[1]]["name"] if path[0] == "stages" and len(path) > 1 else None
        assert any(n in message for n in named) or (stage and stage in message), (path, message)
        return None


def build_steps(cfg: RunConfig) -> None:
    """What a worker does with a valid config: build every step (models load here)."""
    for stage in cfg.stages:
        KINDS[stage.kind]
        for step in getattr(stage, "steps", []):
            STEPS[step["type"]](STEPS[step["type"]].Params(**step))


def unused_by_its_kind(path: tuple[Any, ...]) -> bool:
    """A stage key that the stage's kind does not use (any value of it is a config error)."""
    if path[0] != "stages" or len(path) < 3:
        return False
    model = STAGE_MODELS[QUICKSTART["stages"][path[1]].get("kind", "map")]
    if path[2] not in model.model_fields:
        return True
    section = model.model_fields[path[2]].annotation
    return len(path) > 3 and isinstance(section, type) and issubclass(section, BaseModel) \
        and path[3] not in section.model_fields


@pytest.mark.parametrize("path", key_paths(), ids=lambda p: ".".join(map(str, p)))
def test_every_key_with_values_of_every_type(path):
    built = set()
    for value in VALUES:
        cfg = check(with_value(path, value), path)
        assert cfg is None or not unused_by_its_kind(path), f"{path}={value!r}: a key its kind does not use"
        if cfg is not None:
            fingerprint = cfg.model_dump_json()
            if fingerprint not in built and path[0] == "stages" and "steps" in path:
                build_steps(cfg)
                built.add(fingerprint)


def test_random_combinations_of_keys():
    rng = random.Random(7)
    paths = key_paths()
    for _ in range(300):
        raw = copy.deepcopy(QUICKSTART)
        chosen = rng.sample(paths, 3)
        for path in chosen:
            raw = _set(raw, path, rng.choice(VALUES))
        try:
            validate(raw)
        except ConfigError as exc:
            assert str(exc).strip()


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """Set the key if an earlier mutation left the way to it intact."""
    node: Any = raw
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return raw
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize("override,expected", [
    ("batch_size=0", None),
    ("stages.0.batch_size=0", "batch_size"),
    ("stages.0.batch_size=-1", "batch_size"),
    ("input=[]", "no input files given"),
    ("input=/nonexistent/*.warc.gz", "matches no file"),
    ("ray.num_cpus=0", "num_cpus"),
    ("stages.0.resources.num_cpus=-1", "num_cpus"),
    ("stages.0.writer.compression=bogus", "compression"),
    ("stages.0.writer.compression_level=99", "compression_level"),
    ("stages.0.name=../escape", "name"),
    ("stages.0.reader.mime_types=[]", "mime_types"),
    ("stages.extract.steps.langid.languages=[xx]", "languages"),
    ("stages.extract.steps.langid.model_path=/nonexistent/lid.bin", "model_path"),
])
def test_invalid_values_fail_before_any_work(tmp_path, capsys, override, expected):
    config = tmp_path / "c.yaml"
    raw = copy.deepcopy(QUICKSTART)
    raw.update(input=[str(SAMPLE / "cc-2014-35-npm.warc")], output_dir=str(tmp_path / "run"))
    config.write_text(yaml.safe_dump(raw))
    code = main(["run", str(config), "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "config error" in err and (expected is None or expected in err), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_and_unschedulable_resources_fail_fast(ray_local, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    raw = copy.deepcopy(QUICKSTART)
    raw.update(input=[str(SAMPLE / "cc-2014-35-npm.warc")], output_dir=str(tmp_path / "run"))
    config.write_text(yaml.safe_dump(raw))
    address = f"127.0.0.1:{_free_port()}"
    import ray

    ray.shutdown()  # the address given must be the one joined
    try:
        assert main(["run", str(config), "--ray-address", address]) == 2
        err = capsys.readouterr().err
        assert f"ray.address {address!r}: cannot reach a Ray head there" in err and "Traceback" not in err
    finally:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    assert main(["run", str(config), "--set", "stages.0.resources.memory_mb=20000000"]) == 2
    err = capsys.readouterr().err
    assert "stage 'extract': no node of the Ray cluster can run its tasks: resources.memory_mb=20000000" in err
    assert main(["run", str(config), "--set", "stages.1.resources.num_gpus=1"]) == 2
    assert "resources.num_gpus=1 but the largest node has 0" in capsys.readouterr().err
