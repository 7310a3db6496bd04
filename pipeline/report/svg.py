"""Small inline SVG charts: no plotting library, no script, nothing fetched, and they print sharply.

Every label is escaped; a domain or a language code from a crawl is data, never markup.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

COLORS = ("#3b6ea8", "#c9733a")  # run A, run B
LABEL_CHARS = 28


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _svg(width: int, height: int, body: list[str], title: str) -> Markup:
    return Markup(f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                  f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}</svg>')


def hbars(series: list[list[dict[str, Any]]], title: str, width: int = 560) -> Markup:
    """Horizontal bars, one row per label; several series (runs) side by side in each row."""
    labels = list(dict.fromkeys(item["label"] for items in series for item in items))
    values = [{item["label"]: item["count"] for item in items} for items in series]
    peak = max([v for vs in values for v in vs.values()] + [1])
    bar_h, gap, left, right = 12, 6, 200, 60
    row_h = bar_h * len(series) + gap
    plot_w = width - left - right
    body = []
    for i, label in enumerate(labels):
        y = i * row_h + gap / 2
        body.append(f'<text x="{left - 6}" y="{y + row_h / 2}" text-anchor="end" dominant-baseline="middle">'
                    f'{escape(_label(str(label)))}</text>')
        for k, counts in enumerate(values):
            n = counts.get(label, 0)
            w = plot_w * n / peak
            yk = y + k * bar_h
            body.append(f'<rect x="{left}" y="{yk}" width="{w:.1f}" height="{bar_h - 2}" fill="{COLORS[k % 2]}">'
                        f'<title>{escape(str(label))}: {n:,}</title></rect>')
            body.append(f'<text x="{left + w + 4:.1f}" y="{yk + bar_h / 2}" dominant-baseline="middle">{n:,}</text>')
    return _svg(width, max(row_h * len(labels), row_h), body, title)


def columns(series: list[list[dict[str, Any]]], title: str, width: int = 560, height: int = 200) -> Markup:
    """Vertical bars over ordered bins (a histogram); several series side by side in each bin."""
    labels = list(dict.fromkeys(item["label"] for items in series for item in items))
    values = [[{item["label"]: item["count"] for item in items}.get(label, 0) for label in labels] for items in series]
    peak = max([v for vs in values for v in vs] + [1])
    bottom, top, left = 56, 14, 8
    plot_h = height - bottom - top
    slot = (width - 2 * left) / max(len(labels), 1)
    bar_w = max(2.0, (slot - 4) / max(len(series), 1))
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" y2="{top + plot_h}" stroke="#888"/>']
    for i, label in enumerate(labels):
        x0 = left + i * slot + 2
        for k, vs in enumerate(values):
            n = vs[i]
            h = plot_h * n / peak
            x = x0 + k * bar_w
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                        f'fill="{COLORS[k % 2]}"><title>{escape(str(label))}: {n:,}</title></rect>')
            if n and len(series) == 1:
                body.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" '
                            f'text-anchor="middle" class="small">{n:,}</text>')
        cx, cy = x0 + slot / 2, top + plot_h + 10
        body.append(f'<text x="{cx:.1f}" y="{cy}" text-anchor="end" class="small" '
                    f'transform="rotate(-40 {cx:.1f} {cy})">{escape(str(label))}</text>')
    return _svg(width, height, body, title)
