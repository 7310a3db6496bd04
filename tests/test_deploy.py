"""The compose file describes a Ray head, workers and a driver built from the project's image."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.conftest import ROOT


def test_compose_file_is_valid():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "winnow"} <= set(services)
    assert "--head" in services["ray-head"]["command"]
    assert "ray-head:6379" in services["ray-worker"]["command"]
    assert services["s3"]["profiles"] == ["s3"]  # optional object store, off unless asked for
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Every node can run any task, the trainer's (tokenize) included, with a CPU torch by default.
    assert "-e '.[train]'" in dockerfile and "whl/cpu" in dockerfile
    for tool in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(tool[0]) and subprocess.run([*tool, "version"], capture_output=True).returncode == 0:
            result = subprocess.run([*tool, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            break
