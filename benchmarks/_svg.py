"""Two small plots as plain SVG (no plotting library): horizontal bars, and lines."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

__all__ = ["bars", "lines"]

_FONT = 'font-family="sans-serif" font-size="12"'
_TITLE = 'font-family="sans-serif" font-size="14" font-weight="bold"'
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _svg(width: int, height: int, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(top))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= top:
            return m * step
    return 10 * step


def bars(path: Path, title: str, items: list[tuple[str, float]], marker: tuple[str, float]) -> None:
    """One horizontal bar per ``(label, value)``, with a vertical line at ``marker``."""
    left, bar, gap, width = 420, 18, 8, 900
    plot = width - left - 90
    top = _nice(max([v for _, v in items] + [marker[1]]))
    height = 50 + len(items) * (bar + gap) + 40
    body = [f'<text x="10" y="22" {_TITLE}>{escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = 40 + i * (bar + gap)
        w = plot * value / top
        body += [
            f'<text x="{left - 6}" y="{y + 13}" {_FONT} text-anchor="end">{escape(label)}</text>',
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{_COLORS[0]}"/>',
            f'<text x="{left + w + 4:.1f}" y="{y + 13}" {_FONT}>{value:,.0f}</text>',
        ]
    x = left + plot * marker[1] / top
    bottom = 40 + len(items) * (bar + gap)
    body += [
        f'<line x1="{x:.1f}" y1="34" x2="{x:.1f}" y2="{bottom}" stroke="{_COLORS[1]}" '
        'stroke-dasharray="4 3"/>',
        f'<text x="{x:.1f}" y="{bottom + 16}" {_FONT} fill="{_COLORS[1]}" text-anchor="middle">'
        f"{escape(marker[0])}</text>",
        f'<text x="{left}" y="{bottom + 32}" {_FONT}>rows/s (axis 0 to {top:,.0f})</text>',
    ]
    path.write_text(_svg(width, height, body))


def lines(path: Path, title: str, xs: list[int], series: list[tuple[str, list[float]]]) -> None:
    """One line per ``(name, ys)`` over ``xs``, drawn on a logarithmic x axis."""
    width, height, left, right, top_px, bottom_px = 720, 420, 80, 140, 40, 60
    pw, ph = width - left - right, height - top_px - bottom_px
    ymax = _nice(max(max(ys) for _, ys in series))
    lo, hi = math.log10(xs[0]), math.log10(xs[-1])

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + pw * (math.log10(x) - lo) / (hi - lo), top_px + ph * (1 - y / ymax))

    body = [f'<text x="10" y="22" {_TITLE}>{escape(title)}</text>']
    body.append(
        f'<rect x="{left}" y="{top_px}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
    )
    for k in range(5):
        y = ymax * k / 4
        _, py = px(xs[0], y)
        body.append(
            f'<text x="{left - 6}" y="{py + 4:.1f}" {_FONT} text-anchor="end">{y:,.0f}</text>'
        )
    for x in xs:
        qx, _ = px(x, 0)
        body.append(
            f'<text x="{qx:.1f}" y="{top_px + ph + 18}" {_FONT} text-anchor="middle">{x:,}</text>'
        )
    body.append(
        f'<text x="{left + pw / 2}" y="{height - 18}" {_FONT} text-anchor="middle">max_batch '
        "(records per write)</text>"
    )
    for i, (name, ys) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        points = " ".join(
            f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in zip(xs, ys, strict=True))
        )
        body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.append(
            f'<text x="{left + pw + 8}" y="{top_px + 16 + 18 * i}" {_FONT} fill="{color}">'
            f"{escape(name)}</text>"
        )
    body.append(f'<text x="14" y="{top_px - 8}" {_FONT}>rows/s</text>')
    path.write_text(_svg(width, height, body))
