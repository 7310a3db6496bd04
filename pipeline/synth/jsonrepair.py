"""Lenient JSON for LLM answers: take the JSON out of what models wrap around it, and close what they cut.

Models answer `Here you go: ```json {...}``` Hope this helps!`, stop mid-object when they hit the token
limit, or leave a trailing comma. `parse_json` tries the answer as it is, then the inside of a code fence,
then the span from the first `{` or `[` with the usual breakage repaired: trailing text after the value
closes, trailing commas, an unclosed string, unclosed brackets and braces. It never guesses content: a
value cut in half stays cut (the QC length bounds judge it), a key without a value is dropped.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


class JSONRepairError(ValueError):
    """No JSON value could be recovered from the text."""


def _scan(text: str) -> tuple[int, list[str], bool]:
    """Where the first complete top-level value ends (or -1), the brackets still open, and whether a
    string is open, for `text` starting at a `{` or `[`."""
    stack: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack and stack[-1] == ch:
                stack.pop()
            if not stack:
                return i + 1, [], False
    return -1, stack, in_string


def _close(text: str) -> str:
    """Close a value cut short: end an open string, drop a dangling key or comma, close the brackets."""
    end, stack, in_string = _scan(text)
    if end >= 0:
        return text[:end]
    if in_string:
        text = text[:-1] if text.endswith("\\") else text
        text += '"'
    while True:
        stripped = text.rstrip()
        # A dangling `"key":`, `"key"` inside an object, or a trailing comma cannot be completed honestly.
        cut = re.sub(r'(,\s*)?"(?:[^"\\]|\\.)*"\s*:\s*$', "", stripped) if stack and stack[-1] == "}" else stripped
        cut = re.sub(r',\s*"(?:[^"\\]|\\.)*"\s*$', "", cut) if stack and stack[-1] == "}" else cut
        cut = cut.rstrip().rstrip(",")
        if cut == text:
            break
        text = cut
    _, stack, _ = _scan(text)
    return text + "".join(reversed(stack))


def _attempts(text: str) -> list[str]:
    out = [text.strip()]
    out += [m.group(1).strip() for m in _FENCE.finditer(text)]
    # The outermost value starts at whichever bracket comes first.
    starts = sorted(i for i in (text.find("{"), text.find("[")) if i >= 0)
    out += [_close(text[i:]) for i in starts]
    return out


def parse_json(text: str) -> tuple[Any, bool]:
    """The JSON value in an LLM answer, and whether it had to be repaired. Raises JSONRepairError."""
    if text is None:
        raise JSONRepairError("no answer")
    for k, candidate in enumerate(_attempts(text)):
        for variant in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                value = json.loads(variant)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(value, dict | list):
                return value, k > 0 or variant != candidate
        # A fenced or sliced candidate may itself be cut short: repair it too.
        if k > 0 and candidate[:1] in "{[":
            try:
                return json.loads(_TRAILING_COMMA.sub(r"\1", _close(candidate))), True
            except (json.JSONDecodeError, RecursionError):
                pass
    raise JSONRepairError(f"no JSON object or array in {text[:80]!r}")
