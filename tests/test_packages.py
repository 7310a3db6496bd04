"""The first-party packages depend one way: pipeline -> filters, train, llmclient; train -> llmclient.

`train` is usable without the pipeline (a trainer on someone else's shards), and `llmclient` without
either. Nothing installed imports the checkout-only folders (bench/, tools/, tests/), and the tests
import nothing from bench/. Two checks: every import statement in a package's files, lazy ones
inside functions included, and what importing every module of train and llmclient really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_ONLY = {"bench", "tools", "tests"}
FORBIDDEN = {
    "pipeline": CHECKOUT_ONLY,
    "filters": {"pipeline", "train", "llmclient"} | CHECKOUT_ONLY,
    "train": {"pipeline", "filters"} | CHECKOUT_ONLY,
    "llmclient": {"pipeline", "filters", "train"} | CHECKOUT_ONLY,
    "tools": {"bench", "tests"},
    "tests": {"bench"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _modules(package: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_points_back(package):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for path in sorted((ROOT / package).rglob("*.py"))
           for line, name in _imports(path) if name.split(".")[0] in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["llmclient", "train"])
def test_importing_every_module_loads_nothing_upstream(package):
    if package == "train":
        pytest.importorskip("torch")
    modules = _modules(package)
    assert len(modules) > 3, modules  # the walk found the package
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.splitlines()[-1])
    assert not [m for m in loaded if m.split(".")[0] in FORBIDDEN[package]]
