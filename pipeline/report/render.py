"""HTML pages and the dataset card from collected run data, through Jinja2 templates.

Autoescaping is on for every HTML template, so crawled text, URLs and domains are always escaped.
The page also carries a Content-Security-Policy that lets only its own inline script run (by
hash): if some text ever slipped through unescaped, a `<script>` in it would still stay inert.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from pipeline.report import svg
from pipeline.report.budget import CHARS_PER_TOKEN, TOKENS_PER_PARAMETER
from pipeline.report.hub import header_configs, size_category
from pipeline.report.profile import chart_items

# Printing shows every collapsed sample; the screen keeps them folded.
PRINT_SCRIPT = ("addEventListener('beforeprint',()=>document.querySelectorAll('details').forEach(d=>"
                "{d.dataset.wasOpen=d.open;d.open=true}));addEventListener('afterprint',()=>document"
                ".querySelectorAll('details').forEach(d=>{d.open=d.dataset.wasOpen==='true'}));")


def num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else (f"{value:,.0f}" if isinstance(value, float) else str(value))


def si(value: float) -> str:
    """1234567 -> 1.23M; plain below a thousand."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def usd(value: float) -> str:
    return f"${value:,.2f}" if value < 100 else f"${value:,.0f}"


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("pipeline.report", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(["html", "html.j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=num, si=si, usd=usd, md=markdown_text, code=markdown_code)
    return env


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~-])")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def markdown_text(value: Any) -> str:
    """Crawled strings (hostnames, labels) as literal Markdown text: no links, markup or HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _CONTROL.sub("\ufffd", str(value)))


def markdown_code(value: Any) -> str:
    """A string for inside `inline code`: backticks and control characters cannot end or break it."""
    return _CONTROL.sub("\ufffd", str(value)).replace("`", "'")


def json_for_html(data: Any) -> Markup:
    """JSON that cannot close the <script> element it sits in."""
    text = json.dumps(data, default=str, sort_keys=True)
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def page_context() -> dict[str, Any]:
    digest = base64.b64encode(hashlib.sha256(PRINT_SCRIPT.encode()).digest()).decode()
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    return {"css": Markup(css), "script": Markup(PRINT_SCRIPT), "script_hash": f"sha256-{digest}",
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "chars_per_token": CHARS_PER_TOKEN, "tokens_per_parameter": TOKENS_PER_PARAMETER}


def distribution_charts(dists: list[dict[str, Any]]) -> dict[str, Markup]:
    """Charts for one run, or for two runs side by side (each run keeps its colour and its place)."""
    bars = {"language": "Documents by language", "domain": "Documents by domain", "tld": "Documents by TLD",
            "pii": "PII found by type"}
    hists = {"length": "Documents by length", "quality_score": "Documents by quality_score",
             "language_score": "Documents by language_score", "dup_cluster_sizes": "Clusters by size"}
    if len(dists) == 1:
        charts = {key: svg.hbars([dists[0][key]], title) for key, title in bars.items()}
    else:  # the union of the runs' top labels, each counted in every run
        charts = {}
        for key, title in bars.items():
            labels = list(dict.fromkeys(x["label"] for d in dists for x in d[key] if not x["label"].startswith("(")))
            charts[key] = svg.hbars([[{"label": label, "count": d["counts"][key].get(label, 0)} for label in labels]
                                     for d in dists], title)
    for key, title in hists.items():
        series = [[x for x in d.get(key) or [] if not (key == "dup_cluster_sizes" and x["label"] == "1")]
                  for d in dists]  # documents without duplicates would dwarf the clusters
        labels = list(dict.fromkeys(x["label"] for s in series for x in s))
        if key == "dup_cluster_sizes":
            labels.sort(key=int)
        aligned = [[{"label": label, "count": {x["label"]: x["count"] for x in s}.get(label, 0)} for label in labels]
                   for s in series]
        charts[key] = svg.columns(aligned, title) if labels else Markup("")
    return charts


def render_report(data: dict[str, Any]) -> str:
    context = {**page_context(), **data, "dist": data["distributions"], "a": data["assumptions"],
               "charts": distribution_charts([data["distributions"]]), "data_json": json_for_html(data)}
    context["charts"]["profile"] = svg.hbars([chart_items(data["profile"])],
                                             "CPU milliseconds per 1,000 documents in, by step")
    return environment().get_template("report.html.j2").render(**context)


def render_compare(comparison: dict[str, Any]) -> str:
    a, b = comparison["a"], comparison["b"]
    context = {**page_context(), **comparison,
               "charts": distribution_charts([a["distributions"], b["distributions"]]),
               "data_json": json_for_html(comparison)}
    return environment().get_template("compare.html.j2").render(**context)


def stage_description(stage: dict[str, Any]) -> str:
    """One line per stage for the card: what it did, with the parameters the config set."""
    from pipeline.kinds import KINDS

    return KINDS[stage.get("kind", "map")].describe(stage)


def render_card(data: dict[str, Any], configs: list[dict[str, Any]] | None = None, run_level: bool = False) -> str:
    """The dataset card, Markdown with a Hugging Face YAML header (not HTML: no escaping applies).

    `configs` (pipeline.report.hub.hub_configs) name the published folders; the card in `output/`
    (`run_level` False) can name only the documents, the one at the run directory's root names them all."""
    dist = data["distributions"]
    languages = [x["label"] for x in dist["language"] if x["label"] != "unknown" and not x["label"].startswith("(")]
    if configs is None:  # no folder was read: the documents alone, without features
        configs = [{"name": "default", "folder": "output", "rows": data["output"]["docs"],
                    "size": size_category(data["output"]["docs"]), "features": None}]
    shown = configs if run_level else [c for c in configs if c["name"] == "default"]
    size = size_category(max([c["rows"] for c in shown], default=0))
    processing = [(s["name"], stage_description(s)) for s in data["run"]["config"].get("stages", [])]
    # The header is YAML written by a YAML library: a language code such as "no" stays a string, and a
    # run name with quotes stays valid.
    header = {"pretty_name": f"{data['run']['name']} (Winnow)", **({"language": languages} if languages else {}),
              "license": "other", "task_categories": ["text-generation"], "size_categories": [size],
              "tags": ["winnow", "web-crawl"], **header_configs(configs, prefix=run_level)}
    return environment().get_template("card.md.j2").render(
        **data, dist=dist, header=yaml.safe_dump(header, sort_keys=False, allow_unicode=True), processing=processing,
        has_pii=any(s["stage"] == "pii" or any(st["name"] == "pii" for st in s["steps"]) for s in data["funnel"]),
        chars_per_token=CHARS_PER_TOKEN, configs=shown, run_level=run_level)
