"""Which of Winnow's own source files a stage runs: the closure of its modules' first-party imports.

Found statically with `ast`, without importing anything, so a rerun with nothing to do stays fast.
Every `import x` and `from x import y` counts, at the top of a module or inside a function (a lazy
import runs too); imports under `if TYPE_CHECKING:` never run and do not count. Relative imports are
resolved against the importing module's package.

A package's `__init__` runs when any module of the package is imported, so its source is hashed, but
an `__init__` that only re-exports names and builds registries (it defines no function or class) is
not followed as a whole: `from filters import STEPS` does not make every map stage depend on every
step. The stage's config picks the registered classes that run, and their modules are the seeds of
its closure (see pipeline.fingerprint). A name imported through such a package is followed to the
module the `__init__` took it from.

First-party packages are the top-level packages of the `winnow` distribution, and in a source
checkout also those its pyproject.toml includes (an editable install made before a package was added
does not list it).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

# What the project always ships, should neither the installed metadata nor pyproject.toml be readable.
BASE_PACKAGES = ("pipeline", "filters", "train")


@cache
def first_party() -> dict[str, Path]:
    """Top-level first-party package name -> its directory."""
    names = set(BASE_PACKAGES)
    try:
        names |= set((distribution("winnow").read_text("top_level.txt") or "").split())
    except PackageNotFoundError:
        pass
    checkout = Path(__file__).resolve().parent.parent
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file():
        found = tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {}).get("packages", {})
        patterns = found.get("find", {}).get("include", []) if isinstance(found, dict) else []
        names |= {d.name for d in checkout.iterdir() if (d / "__init__.py").is_file()
                  and any(fnmatch.fnmatch(d.name, p) for p in patterns)}
    roots = {}
    for name in sorted(names):
        spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
        if spec is not None and spec.submodule_search_locations:
            roots[name] = Path(list(spec.submodule_search_locations)[0])
    return roots


@cache
def module_file(name: str) -> Path | None:
    """The source file of a first-party module or package, or None for anything else."""
    top, *rest = name.split(".")
    root = first_party().get(top)
    if root is None:
        return None
    base = root.joinpath(*rest)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_package(name: str) -> bool:
    path = module_file(name)
    return path is not None and path.name == "__init__.py"


@cache
def _parsed(name: str) -> ast.Module:
    path = module_file(name)
    assert path is not None
    return ast.parse(path.read_bytes(), filename=str(path))


def _runtime_imports(tree: ast.Module) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them but those under `if TYPE_CHECKING:`. Imports are
    statements, so only statement bodies are searched, not expressions."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                stack.extend(getattr(node, field, None) or ())


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@cache
def imports(name: str) -> tuple[tuple[str, str | None], ...]:
    """(module, name or None) for each import in a first-party module: `import a.b` gives ("a.b", None),
    `from a import b` gives ("a", "b")."""
    found: list[tuple[str, str | None]] = []
    for node in _runtime_imports(_parsed(name)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        else:
            source = _absolute(name, node)
            found += [(source, alias.name) for alias in node.names]
    return tuple(found)


@cache
def _registry_only(name: str) -> bool:
    """A package `__init__` that defines no function or class: it re-exports and registers."""
    if not _is_package(name):
        return False
    return not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                   for n in ast.walk(_parsed(name)))


def _reexported_from(package: str, attr: str) -> str | None:
    """The module a registry-only `__init__` took `attr` from, if it imported it by name."""
    for source, imported in imports(package):
        if imported == attr or (imported is None and source.split(".")[0] == attr):
            return source
    return None


class _Walk:
    def __init__(self) -> None:
        self.hashed: set[str] = set()
        self.followed: set[str] = set()

    def touch(self, module: str) -> None:
        """Importing `module` runs the `__init__` of every package above it."""
        parts = module.split(".")
        for i in range(1, len(parts)):
            self.add(".".join(parts[:i]), follow=not _registry_only(".".join(parts[:i])))

    def add(self, module: str, follow: bool = True) -> None:
        if module_file(module) is None:
            return
        self.touch(module)
        self.hashed.add(module)
        if not follow or module in self.followed:
            return
        self.followed.add(module)
        for source, attr in imports(module):
            self.edge(source, attr)

    def edge(self, source: str, attr: str | None) -> None:
        if attr is None or module_file(f"{source}.{attr}") is not None:
            self.add(source if attr is None else f"{source}.{attr}")
            return
        if not _registry_only(source):
            self.add(source)
            return
        self.add(source, follow=False)
        origin = _reexported_from(source, attr)
        if origin is not None:
            self.edge(origin, attr)


@cache
def closure(seeds: tuple[str, ...]) -> tuple[str, ...]:
    """Every first-party module whose source runs when `seeds` are imported and used, sorted."""
    walk = _Walk()
    for seed in seeds:
        if module_file(seed) is None:
            raise ValueError(f"{seed}: not a module of Winnow's own packages ({', '.join(first_party())})")
        walk.add(seed)
    return tuple(sorted(walk.hashed))
