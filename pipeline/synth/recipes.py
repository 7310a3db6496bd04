"""Recipes: a Jinja template that turns one document into a prompt, and how to read the answer.

Templates live in configs/synth/<name>.j2; a recipe's `template` points at any other file instead.
What a recipe makes is its `output`:

- `pairs`: a JSON list of {question, answer} -> instruction rows (paragraph QA);
- `instruction`: JSON {instruction} whose answer is the passage itself (instruction backtranslation);
- `task`: JSON {instruction, input, output} (self-instruct from seed tasks);
- `text`: plain text -> a rephrased document (the Nemotron-CC families).

Nemotron-CC routed documents by quality: its four "high" prompts (diverse QA, distill, extract
knowledge, knowledge list) ran on the best documents and the Wikipedia-style paraphrase on the worst.
`min_quality`/`max_quality` on a recipe do the same with the `quality_score` column.

A page is untrusted text pasted between the template's own tags (`<document>…</document>`): a page
that holds `</document>` could end the fence and write its own instruction after it. Every tag name
the template closes (and `document`) is defused in the variables before rendering (`<` becomes
`&lt;`), so only the template's own tags open and close, and a page without such tags renders the
same prompt as before (its cached answer still applies).

A template is configuration, but configs get shared: templates render in Jinja's immutable sandbox, so
one can read the variables it is given (`text`, `url`, `language`, `max_pairs`, `seed_tasks`; the judge's
`instruction`, `input`, `output`) and nothing else: no Python attributes, no changing what it is given.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field

from pipeline.synth.jsonrepair import JSONRepairError, parse_json

TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "synth"
OutputKind = Literal["pairs", "instruction", "task", "text"]
BUILTIN: dict[str, OutputKind] = {
    "paragraph_qa": "pairs", "backtranslation": "instruction", "self_instruct": "task",
    "diverse_qa": "text", "distill": "text", "extract_knowledge": "text", "knowledge_list": "text",
    "wikipedia_paraphrase": "text",
}
_CLOSING_TAG = re.compile(r"</\s*([A-Za-z][\w:-]*)\s*>")
_PARAPHRASE_LEAD = re.compile(r"^\s*here is a paraphrased version:?\s*", re.IGNORECASE)


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    template: str | None = None  # a .j2 file; default configs/synth/<name>.j2
    output: OutputKind | None = None  # default: the built-in recipe's
    min_quality: float | None = None  # route by quality_score: only documents within [min, max)
    max_quality: float | None = None
    max_doc_chars: int = Field(4000, ge=100)  # the document is cut to this many characters in the prompt
    max_pairs: int = Field(3, ge=1)
    system: str | None = None  # a system message, for chat endpoints


class InvalidAnswer(ValueError):
    """The answer is not in the shape the recipe asked for; `reason` is the drop reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Recipe:
    def __init__(self, cfg: RecipeConfig, seed_tasks: list[dict[str, str]] | None = None):
        if cfg.output is None and cfg.name not in BUILTIN:
            raise ValueError(f"synth.recipes: {cfg.name!r} is not a built-in recipe ({', '.join(BUILTIN)}); "
                             "give `template` and `output` for your own")
        self.cfg, self.name = cfg, cfg.name
        self.output: OutputKind = cfg.output or BUILTIN[cfg.name]
        path = Path(cfg.template) if cfg.template else TEMPLATES / f"{cfg.name}.j2"
        if not path.exists():
            raise ValueError(f"synth.recipes.{cfg.name}.template: {path} does not exist")
        self.path = path
        self.source = path.read_text()
        self.template = _compile(path, self.source)
        self.fence = fence_pattern(self.source)
        self.seed_tasks = seed_tasks or []
        if cfg.name == "self_instruct" and not self.seed_tasks:
            raise ValueError("synth.seed_tasks: the self_instruct recipe needs seed tasks (a JSONL file)")
        self.render({"id": "check", "text": "A sample passage.", "url": "https://example.org/"})  # fail now, named

    def applies(self, doc: dict[str, Any]) -> bool:
        score = doc.get("quality_score")
        if self.cfg.min_quality is None and self.cfg.max_quality is None:
            return True
        if score is None:
            return False
        return (self.cfg.min_quality is None or score >= self.cfg.min_quality) and \
               (self.cfg.max_quality is None or score < self.cfg.max_quality)

    def passage(self, doc: dict[str, Any]) -> str:
        return (doc.get("text") or "")[: self.cfg.max_doc_chars]

    def render(self, doc: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages for one document (the same document always renders the same prompt)."""
        extra: dict[str, Any] = {}
        if self.seed_tasks:  # a few seed tasks per document, chosen by its id so a rerun picks the same
            rng = random.Random(str(doc.get("id")))
            extra["seed_tasks"] = rng.sample(self.seed_tasks, min(3, len(self.seed_tasks)))
        defuse = self.fence.sub  # the page's text, URL and language are the page's: none may close a fence
        content = _render(self.path, self.template, text=defuse("&lt;", self.passage(doc)),
                          url=defuse("&lt;", doc.get("url") or ""),
                          language=defuse("&lt;", doc.get("language") or "en"), max_pairs=self.cfg.max_pairs, **extra)
        messages = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        return messages + [{"role": "user", "content": content}]

    def parse(self, answer: str, doc: dict[str, Any]) -> tuple[list[dict[str, str]], bool]:
        """Rows {instruction, input, output} (or {text} for `text` recipes) and whether JSON was repaired."""
        if self.output == "text":
            text = _PARAPHRASE_LEAD.sub("", answer).strip()
            return [{"text": text}], False
        try:
            value, repaired = parse_json(answer)
        except JSONRepairError as exc:
            raise InvalidAnswer("synth:json_unparseable", str(exc)) from None
        if self.output == "pairs":
            items = value if isinstance(value, list) else value.get("pairs", value.get("questions", [value]))
            rows = []
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict):
                    continue
                q = item.get("question") or item.get("instruction")
                a = item.get("answer") or item.get("output")
                if isinstance(q, str) and isinstance(a, str):
                    rows.append({"instruction": q.strip(), "input": "", "output": a.strip()})
            if not rows:
                raise InvalidAnswer("synth:json_invalid", f"no question/answer objects in {json.dumps(value)[:80]}")
            return rows[: self.cfg.max_pairs], repaired
        if not isinstance(value, dict) or not isinstance(value.get("instruction"), str):
            raise InvalidAnswer("synth:json_invalid", f"no `instruction` string in {json.dumps(value)[:80]}")
        if self.output == "instruction":
            return [{"instruction": value["instruction"].strip(), "input": "", "output": self.passage(doc)}], repaired
        out = value.get("output")
        if not isinstance(out, str):
            raise InvalidAnswer("synth:json_invalid", f"no `output` string in {json.dumps(value)[:80]}")
        task_input = value.get("input") if isinstance(value.get("input"), str) else ""
        return [{"instruction": value["instruction"].strip(), "input": task_input.strip(), "output": out.strip()}], \
            repaired


def fence_pattern(source: str) -> re.Pattern[str]:
    """The `<` of any opening or closing tag, in a variable, named like a tag the template closes."""
    names = sorted({"document", *(m.group(1).lower() for m in _CLOSING_TAG.finditer(source))})
    return re.compile(r"<(?=\s*/?\s*(?:" + "|".join(map(re.escape, names)) + r")\b)", re.IGNORECASE)


@cache
def _env() -> jinja2.Environment:
    # Prompts are plain text: no HTML escaping; undefined variables are errors, not empty strings. The
    # immutable sandbox: a template reads what it is given and cannot reach Python (see the docstring).
    return ImmutableSandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined,
                                         keep_trailing_newline=False)


def _compile(path: Path, source: str) -> jinja2.Template:
    try:
        return _env().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not a valid Jinja template: {exc.message}") from None


def _render(path: Path, template: jinja2.Template, **variables: Any) -> str:
    try:
        return template.render(**variables).strip()
    except jinja2.exceptions.SecurityError as exc:
        raise ValueError(f"{path}: the template reaches outside what it is given ({exc}); a template may "
                         f"only use its variables: {', '.join(sorted(variables))}") from None
    except jinja2.TemplateError as exc:
        raise ValueError(f"{path}: cannot render the template: {exc}; its variables are "
                         f"{', '.join(sorted(variables))}") from None


@cache
def _judge_template(path: Path, source: str) -> jinja2.Template:  # by source too: an edited file recompiles
    return _compile(path, source)


def judge_prompt(row: dict[str, str], template: str | None = None) -> list[dict[str, str]]:
    path = Path(template) if template else TEMPLATES / "judge.j2"
    content = _render(path, _judge_template(path, path.read_text()), instruction=row["instruction"], input=row["input"],
                      output=row["output"])
    return [{"role": "user", "content": content}]


def parse_judge(answer: str | None) -> float | None:
    """The judge's score (1-10), or None when the answer holds none."""
    if not answer:
        return None
    try:
        value, _ = parse_json(answer)
        score = value.get("score") if isinstance(value, dict) else None
        return float(score) if isinstance(score, int | float) else None
    except JSONRepairError:
        found = re.search(r"score\D{0,5}(\d+(?:\.\d+)?)", answer, re.IGNORECASE)
        return float(found.group(1)) if found else None


def load_seed_tasks(path: str) -> list[dict[str, str]]:
    """Seed tasks from self-instruct's JSONL (`instruction` plus `instances` of input/output) or alpaca rows."""
    import fsspec

    tasks = []
    with fsspec.open(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            instance = (row.get("instances") or [{}])[0]
            tasks.append({"instruction": row.get("instruction", ""),
                          "input": instance.get("input", row.get("input", "")),
                          "output": instance.get("output", row.get("output", ""))})
    return tasks
