"""YAML configs with `--set key=value` overrides, and validation errors phrased for the user.

`winnow run` (pipeline/config.py) and `winnow train` (train/config.py) apply `--set` with the same
code, so both parse overrides and word their errors the same way. `describe` words a validation
error (unknown keys with the nearest valid name); the pipeline's own adds stage names on top of the
same `fields_at` and `suggest`. Only PyYAML and pydantic: importing this pulls in neither the
pipeline nor torch.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config problem, phrased for the user: which key, what is wrong, what to do."""


def read_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """The YAML mapping at `path` with each `a.b.c=value` override applied; problems raise `error`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise error(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise error(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping of keys")
    for assignment in overrides:
        apply_override(raw, assignment, error)
    return raw


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`line L, column C: what is wrong`, on one line. PyYAML's own text spans several lines and
    places the problem "in <unicode string>", not in the file."""
    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if problem is None:  # a ReaderError: a character YAML does not allow, at a character offset
        position = getattr(exc, "position", None)
        return str(exc).splitlines()[0] + (f" (character {position + 1})" if position is not None else "")
    where = f"{at(mark)}: " if mark is not None else ""
    opened = f" ({context} at {at(context_mark)})" if context and context_mark is not None else \
        (f" ({context})" if context else "")
    return f"{where}{problem}{opened}"


def apply_override(raw: dict[str, Any], assignment: str, error: type[ValueError] = ConfigError) -> None:
    """Apply one `a.b.c=value`. List items are addressed by index or by their name/type."""
    if "=" not in assignment:
        raise error(f"--set {assignment!r}: expected key=value")
    key, value = assignment.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError as exc:
        raise error(f"--set {key}: the value is not valid YAML: {yaml_problem(exc)}") from None
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, where, error)
            if last:
                node[index] = parsed
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = parsed
            else:
                if node.get(part) is None:  # absent, or `section:` left empty in the YAML
                    node[part] = {}
                node = node[part]
        else:
            raise error(f"--set {key}: {'.'.join(parts[:depth])!r} is a value, not a section")


def _list_index(items: list[Any], part: str, where: str, error: type[ValueError]) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise error(f"--set {where}: index out of range (the list has {len(items)} items)")
        return index
    names = [it.get("name") or it.get("type") if isinstance(it, dict) else None for it in items]
    if part in names:
        return names.index(part)
    raise error(f"--set {where}: no item named {part!r}{suggest(part, [n for n in names if n])}")


def suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(options))}"


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid field names of the section at `loc` inside `model`."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current else None
        current = model_in(field.annotation) if field else None
    return list(current.model_fields) if current else []


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """Each error of `exc` as `key.path: what is wrong`, unknown keys with the nearest valid name."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = fields_at(model, loc[:-1])
            lines.append(f"unknown key {path!r}{suggest(str(loc[-1]), valid) if valid else ''}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if loc and msg.startswith(f"{loc[-1]}."):  # the step validator already names its key
                lines.append(".".join(str(p) for p in loc[:-1]) + "." + msg)
            else:
                lines.append(f"{path}: {msg}" if path else msg)
    return "; ".join(lines)
