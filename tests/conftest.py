"""Shared test fixtures: real data from ../shared/data, and one local Ray for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WINNOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
WARC = SHARED / "warc"
SAMPLE = ROOT / "data" / "sample"
# output/ holds the dataset card (README.md) and a marker next to the shards; readers skip them.
OUTPUT_EXTRAS = ["README", "_", "."]

# Steps cache derived files (the blocklist index) here; keep tests off the user's home.
os.environ.setdefault("WINNOW_CACHE", str(ROOT / ".pytest_cache" / "winnow"))


def pytest_collection_modifyitems(config, items):
    if not SHARED.exists() and os.environ.get("WINNOW_REQUIRE_SHARED_DATA"):
        raise pytest.UsageError(f"real test data not found at {SHARED}, and WINNOW_REQUIRE_SHARED_DATA is set")
    if not SHARED.exists():
        skip = pytest.mark.skip(reason=f"real test data not found at {SHARED}")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session: the runner joins it instead of starting its own."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
