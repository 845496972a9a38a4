"""Server-rendered SVG charts: no script, no external asset, text escaped, colours by attribute
(the portal's CSP forbids inline styles and scripts)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

PALETTE = ("#2f6fb0", "#c0392b", "#27ae60", "#8e44ad", "#d68910", "#16a085", "#7f8c8d", "#b03a2e")
W, H, PAD_L, PAD_B, PAD_T = 640, 220, 48, 42, 28


def _frame(title: str, body: list[str], legend: list[tuple[str, str]], height: int = H) -> Markup:
    """The chart with its legend, four keys a row (rows above the plot grow the picture)."""
    rows = (len(legend) + 3) // 4
    shift = max(0, rows - 1) * 14
    keys = "".join(f'<rect x="{PAD_L + (i % 4) * 150}" y="{6 + (i // 4) * 14}" width="10" height="10" fill="{c}"/>'
                   f'<text x="{PAD_L + 14 + (i % 4) * 150}" y="{15 + (i // 4) * 14}" font-size="11">{escape(k)}</text>'
                   for i, (k, c) in enumerate(legend))
    body = [f'<g transform="translate(0 {shift})">{"".join(body)}</g>'] if shift else body
    height += shift
    return Markup(f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {height}" '
                  f'width="100%" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
                  f'{keys}{"".join(body)}</svg>')


def _axis(top: float, height: int = H) -> list[str]:
    base = height - PAD_B
    return [f'<line x1="{PAD_L}" y1="{base}" x2="{W - 8}" y2="{base}" stroke="#555"/>',
            f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{base}" stroke="#555"/>',
            f'<text x="{PAD_L - 6}" y="{PAD_T + 4}" font-size="10" text-anchor="end">{_num(top)}</text>',
            f'<text x="{PAD_L - 6}" y="{base}" font-size="10" text-anchor="end">0</text>']


def _short(label: str) -> str:
    """Days as MM-DD; other labels as they are."""
    return label[5:] if len(label) == 10 and label[4] == "-" else label


def _num(v: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:g}"


def stacked_bars(title: str, labels: list[str], series: dict[str, list[float]]) -> Markup:
    """One bar per label, its parts stacked in series order (e.g. allowed / denied per day)."""
    names = list(series)
    totals = [sum(series[n][i] for n in names) for i in range(len(labels))]
    top = max(totals + [1])
    span_h = H - PAD_B - PAD_T
    step = (W - PAD_L - 16) / max(1, len(labels))
    body = _axis(top)
    for i, label in enumerate(labels):
        y = H - PAD_B
        for j, n in enumerate(names):
            h = series[n][i] / top * span_h
            if h > 0:
                y -= h
                body.append(f'<rect class="bar" x="{PAD_L + 4 + i * step:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" '
                            f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(label)} '
                            f'{escape(n)}: {series[n][i]:g}</title></rect>')
        if len(labels) <= 16 or i % 2 == 0:
            body.append(f'<text x="{PAD_L + 4 + i * step + step * 0.35:.1f}" y="{H - PAD_B + 14}" font-size="9" '
                        f'text-anchor="middle">{escape(_short(label))}</text>')
    return _frame(title, body, [(n, PALETTE[j % len(PALETTE)]) for j, n in enumerate(names)])


def horizontal_bars(title: str, values: dict[str, float], unit: str = "") -> Markup:
    rows = list(values.items()) or [("(none yet)", 0.0)]
    height = PAD_T + 24 * len(rows) + 12
    top = max([v for _, v in rows] + [1])
    body = []
    for i, (label, v) in enumerate(rows):
        y = PAD_T + i * 24
        w = v / top * (W - 180)
        body.append(f'<text x="110" y="{y + 13}" font-size="11" text-anchor="end">{escape(label)}</text>'
                    f'<rect class="bar" x="116" y="{y}" width="{w:.1f}" height="16" fill="{PALETTE[i % len(PALETTE)]}">'
                    f'<title>{escape(label)}: {v:g}</title></rect>'
                    f'<text x="{120 + w:.1f}" y="{y + 13}" font-size="11">{_num(v)}{escape(unit)}</text>')
    return _frame(title, body, [], height)


def lines(title: str, labels: list[str], series: dict[str, list[float]]) -> Markup:
    top = max([max(v) for v in series.values() if v] + [1])
    span_h = H - PAD_B - PAD_T
    step = (W - PAD_L - 16) / max(1, len(labels) - 1)
    body = _axis(top)
    for j, (name, values) in enumerate(series.items()):
        pts = " ".join(f"{PAD_L + i * step:.1f},{H - PAD_B - v / top * span_h:.1f}" for i, v in enumerate(values))
        body.append(f'<polyline class="line" points="{pts}" fill="none" stroke="{PALETTE[j % len(PALETTE)]}" '
                    f'stroke-width="2"><title>{escape(name)}</title></polyline>')
    for i, label in enumerate(labels):
        if i % max(1, len(labels) // 7) == 0:
            body.append(f'<text x="{PAD_L + i * step:.1f}" y="{H - PAD_B + 14}" font-size="9" '
                        f'text-anchor="middle">{escape(_short(label))}</text>')
    return _frame(title, body, [(n, PALETTE[j % len(PALETTE)]) for j, n in enumerate(series)])
