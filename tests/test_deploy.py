"""The compose file describes a Ray head, workers and a driver built from the project's image, and
Compose itself accepts it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def test_compose_file_describes_the_cluster():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "winnow"} <= set(services)
    assert "--head" in services["ray-head"]["command"]
    assert "ray-head:6379" in services["ray-worker"]["command"]
    assert services["s3"]["profiles"] == ["s3"]  # optional object store, off unless asked for
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Every node can run any task, the trainer's (tokenize) included, with a CPU torch by default.
    assert "-e '.[train]'" in dockerfile and "whl/cpu" in dockerfile
    # The image holds every first-party package the installed `winnow` imports.
    for package in ("pipeline", "filters", "train", "llmclient"):
        assert f"COPY {package} {package}" in dockerfile, package


def compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) where it works, else Debian's `docker-compose`."""
    for tool in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(tool[0]) and subprocess.run([*tool, "version"], capture_output=True).returncode == 0:
            return tool
    return None


def test_compose_accepts_the_file_and_rejects_a_broken_one(tmp_path):
    tool = compose_command()
    if tool is None:
        if os.environ.get("WINNOW_REQUIRE_COMPOSE"):
            pytest.fail("Compose is required (WINNOW_REQUIRE_COMPOSE) but not installed: "
                        "apt-get install docker-compose")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    # `config` parses and validates without a Docker daemon.
    result = subprocess.run([*tool, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # The same check fails on a file with a misspelt service key, so a pass above means something.
    text = (ROOT / "docker-compose.yml").read_text()
    text = text.replace("    command: ray start --head", "    comand: ray start --head")
    (tmp_path / "docker-compose.yml").write_text(text)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    broken = subprocess.run([*tool, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "comand" in broken.stdout + broken.stderr
