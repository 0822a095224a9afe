"""The run report's page: inline SVG charts, the page frame, its CSS and its small hover script.

Nothing here needs a plotting library or the network: charts are drawn as SVG by :func:`chart_svg`, and the
page carries its own CSS and script, so ``report.html`` opens from a USB stick on a machine without internet.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# Colours a reader can tell apart (Okabe-Ito, reordered so the first two contrast well).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F", "#000000")
MAX_POINTS = 4000  # a longer series is thinned (every k-th point, the last kept) so the page stays light


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class Series:
    """One line on a chart: ``points`` are ``(step, value)`` pairs."""

    label: str
    color: str
    points: list[tuple[float, float]]
    dashed: bool = False
    markers: bool = False
    run: str = ""
    kind: str = ""


@dataclass
class Chart:
    title: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    x_label: str = "step"
    log_y: bool = False
    note: str = ""
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (step, label, colour): vertical lines

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.series)


# ----------------------------------------------------------------------------------------------- ticks


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 0.5 and len(ticks) < 50:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def fmt(value: float) -> str:
    """A short label for a number: ``0.001``, ``2.5e-05``, ``1.2k``, ``3``."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if magnitude >= div:
                return f"{value / div:.3g}{suffix}"
    if magnitude < 1e-3:
        return _exponent(value)
    return f"{value:.4g}"


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels for one axis in one notation: all in exponent form when any tick needs it."""
    labels = [fmt(t) for t in ticks]
    if any("e" in label for label in labels):
        labels = ["0" if t == 0 else _exponent(t) for t in ticks]
    return labels


def _exponent(value: float) -> str:
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


# ---------------------------------------------------------------------------------------------- charts

WIDTH, HEIGHT = 600, 300
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 14, 44


def chart_svg(chart: Chart, chart_id: str) -> str:
    """One chart as an ``<svg>``: axes with ticks and labels, one ``<path class="series">`` per series (a point
    per ``M``/``L`` command), markers where asked, and the data for the hover script."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    shown = [Series(s.label, s.color, thin([(x, y) for x, y in s.points if _finite(x, y, chart.log_y)]), s.dashed,
                    s.markers, s.run, s.kind) for s in chart.series]
    xs = [x for s in shown for x, _ in s.points]
    ys = [y for s in shown for _, y in s.points]
    if not xs:
        return (f'<svg class="chart empty" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(chart.title)}">'
                f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="nodata">nothing logged</text></svg>')
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs))
    x_low, x_high = x_ticks[0], x_ticks[-1]
    if chart.log_y:
        low_exp, high_exp = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        high_exp = max(high_exp, low_exp + 1)
        y_ticks = [10.0 ** e for e in range(low_exp, high_exp + 1)]
        to_y = math.log10
    else:
        y_ticks = nice_ticks(min(ys), max(ys))
        to_y = float
    y_low, y_high = to_y(y_ticks[0]), to_y(y_ticks[-1])

    def px(x: float) -> float:
        return LEFT + (x - x_low) / ((x_high - x_low) or 1) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (to_y(y) - y_low) / ((y_high - y_low) or 1) * plot_h

    parts = [f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{esc(chart.title)}" preserveAspectRatio="xMidYMid meet">']
    parts.append('<g class="grid">')
    for tick in y_ticks:
        y = py(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
    for tick in x_ticks:
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}"/>')
    parts.append("</g>")
    parts.append(f'<g class="axis"><line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>'
                 f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/></g>')
    parts.append('<g class="ticks y">')
    for tick, text in zip(y_ticks, tick_labels(y_ticks)):
        parts.append(f'<text x="{LEFT - 7}" y="{py(tick) + 4:.1f}" text-anchor="end">{esc(text)}</text>')
    parts.append('</g><g class="ticks x">')
    for tick, text in zip(x_ticks, tick_labels(x_ticks)):
        parts.append(f'<text x="{px(tick):.1f}" y="{TOP + plot_h + 17}" text-anchor="middle">{esc(text)}</text>')
    parts.append("</g>")
    parts.append(f'<text class="axis-label" x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
                 f'{esc(chart.x_label)}</text>')
    parts.append(f'<text class="axis-label" transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" '
                 f'text-anchor="middle">{esc(chart.y_label)}</text>')
    for index, series in enumerate(shown):
        if not series.points:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(series.points))
        dash = ' stroke-dasharray="6 4"' if series.dashed else ""
        parts.append(f'<path class="series" data-series="{esc(series.kind)}" data-run="{esc(series.run)}" '
                     f'data-points="{len(series.points)}" d="{d}" stroke="{series.color}"{dash}/>')
        if series.markers or len(series.points) == 1:
            parts.append(f'<g class="markers" fill="{series.color}">' + "".join(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3"/>' for x, y in series.points) + "</g>")
    for step, text, color in chart.marks:
        if x_low <= step <= x_high:
            x = px(step)
            right = x > LEFT + plot_w * 0.7  # near the right edge: the label goes left of the line
            parts.append(f'<g class="mark"><line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
                         f'stroke="{color}"/><text x="{x - 4 if right else x + 4:.1f}" y="{TOP + 11}" '
                         f'text-anchor="{"end" if right else "start"}" fill="{color}">{esc(text)}</text></g>')
    parts.append(f'<line class="guide" x1="0" x2="0" y1="{TOP}" y2="{TOP + plot_h}" visibility="hidden"/>')
    parts.append(f'<rect class="hover" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>')
    parts.append("</svg>")
    data = {
        "x": [x_low, x_high], "y": [y_low, y_high], "log": chart.log_y,
        "box": [LEFT, TOP, plot_w, plot_h, WIDTH, HEIGHT],
        "series": [{"label": s.label, "color": s.color, "points": s.points} for s in shown if s.points],
    }
    parts.append(f'<script type="application/json" class="chart-data" data-for="{chart_id}">'
                 f"{_json_for_script(data)}</script>")
    return "".join(parts)


def _finite(x: float, y: float, log: bool) -> bool:
    return math.isfinite(x) and math.isfinite(y) and (y > 0 or not log)


def _json_for_script(data: object) -> str:
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def legend(series: Sequence[Series]) -> str:
    items = []
    for s in series:
        if not s.points:
            continue
        line = ('<svg width="26" height="10" aria-hidden="true"><line x1="1" x2="25" y1="5" y2="5" stroke="'
                f'{s.color}" stroke-width="2.5"' + (' stroke-dasharray="5 3"' if s.dashed else "") + "/></svg>")
        items.append(f'<span class="key">{line}{esc(s.label)}</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def chart_card(chart: Chart, chart_id: str) -> str:
    note = f'<p class="chart-note">{esc(chart.note)}</p>' if chart.note else ""
    return (f'<figure class="card chart-card"><figcaption>{esc(chart.title)}</figcaption>{legend(chart.series)}'
            f'<div class="chart-box">{chart_svg(chart, chart_id)}<div class="tip" hidden></div></div>{note}</figure>')


# ------------------------------------------------------------------------------------------------ page


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#0072B2;--warn:#9a5b00;
--warnbg:#fff6e5;--bad:#a1260d;--badbg:#fdecea;--good:#1f7a4d}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1240px;margin:0 auto;padding:28px 28px 60px}
h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:18px;margin:34px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 8px;color:var(--muted);font-weight:600}
.sub{color:var(--muted);margin:0 0 16px}
code,.mono,td.key{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:13px}
.runs{display:flex;flex-wrap:wrap;gap:8px 18px;margin:8px 0 0;padding:0;list-style:none}
.runs li{display:flex;align-items:center;gap:8px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:3px}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;background:#e8f3ea;
color:var(--good);vertical-align:2px}
.badge.early{background:var(--warnbg);color:var(--warn)}
.badge.killed{background:var(--badbg);color:var(--bad)}
.banner{border-radius:8px;padding:12px 16px;margin:14px 0;border:1px solid}
.banner.early{background:var(--warnbg);border-color:#f3d49b;color:#5e3b00}
.banner.killed{background:var(--badbg);border-color:#f2b8ad;color:#6b1a08}
.banner b{display:block;margin-bottom:2px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px;margin:16px 0}
.stat{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.stat .label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.stat .value{font-size:21px;font-weight:600;font-variant-numeric:tabular-nums}
.stat .value small{font-size:13px;color:var(--muted);font-weight:500}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;margin:0;padding:14px 16px}
figcaption{font-weight:600;margin-bottom:2px}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:13px;color:var(--muted);min-height:20px}
.legend .key{display:inline-flex;align-items:center;gap:5px}
.chart-box{position:relative}
svg.chart{width:100%;height:auto;display:block;overflow:visible}
svg.chart .grid line{stroke:#eef0f4;stroke-width:1}
svg.chart .axis line{stroke:#9aa3b2;stroke-width:1}
svg.chart .ticks text{font-size:11px;fill:var(--muted);font-variant-numeric:tabular-nums}
svg.chart .axis-label{font-size:12px;fill:var(--muted)}
svg.chart path.series{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round}
svg.chart .mark line{stroke-width:1.2;stroke-dasharray:2 3}
svg.chart .mark text{font-size:11px;font-weight:600}
svg.chart .guide{stroke:#8a93a3;stroke-width:1;stroke-dasharray:3 3}
svg.chart rect.hover{fill:transparent;cursor:crosshair}
svg.chart .nodata{fill:var(--muted);font-size:14px}
.chart-note{font-size:12px;color:var(--muted);margin:6px 0 0}
.tip{position:absolute;pointer-events:none;background:rgba(29,35,48,.94);color:#fff;font-size:12px;padding:6px 9px;
border-radius:6px;white-space:nowrap;box-shadow:0 2px 8px rgba(0,0,0,.18);z-index:2}
.tip .row{display:flex;align-items:center;gap:6px}
.tip .dot{width:8px;height:8px;border-radius:50%}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);border-radius:8px;
overflow:hidden;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 12px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#fafbfc;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right}
td.value{word-break:break-word}
tr.differs td{background:#fffbea}
.delta.up{color:var(--good)}.delta.down{color:var(--bad)}
.twocol{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:0 24px;align-items:start}
details{margin-top:10px}
summary{cursor:pointer;color:var(--accent);font-weight:500;margin:6px 0}
ul.notes{margin:0;padding-left:20px}
footer{margin-top:40px;color:var(--muted);font-size:12px}
.empty-note{color:var(--muted);font-style:italic}
"""

# Hover: the nearest logged step of each series, read from the chart's JSON (no library).
SCRIPT = r"""
(function(){
  function fmt(v){if(v===0)return"0";var a=Math.abs(v);if(a>=1e5||a<1e-3)return v.toExponential(3);
    return String(+v.toPrecision(5));}
  function nearest(pts,x){var lo=0,hi=pts.length-1;while(hi-lo>1){var m=(lo+hi)>>1;if(pts[m][0]<x)lo=m;else hi=m;}
    return Math.abs(pts[lo][0]-x)<=Math.abs(pts[hi][0]-x)?pts[lo]:pts[hi];}
  var charts=0;
  document.querySelectorAll("script.chart-data").forEach(function(node){
    var svg=document.getElementById(node.dataset.for);if(!svg)return;var d=JSON.parse(node.textContent);
    var tip=svg.parentNode.querySelector(".tip"),guide=svg.querySelector(".guide"),hover=svg.querySelector("rect.hover");
    var b=d.box;charts++;
    function px(x){return b[0]+(x-d.x[0])/((d.x[1]-d.x[0])||1)*b[2];}
    hover.addEventListener("mousemove",function(ev){
      var r=svg.getBoundingClientRect(),sx=(ev.clientX-r.left)*b[4]/r.width;
      var step=d.x[0]+(sx-b[0])/b[2]*(d.x[1]-d.x[0]);var rows=[],at=null;
      d.series.forEach(function(s){var p=nearest(s.points,step);if(at===null||Math.abs(p[0]-step)<Math.abs(at-step))at=p[0];});
      d.series.forEach(function(s){var p=nearest(s.points,at);if(p[0]!==at)return;
        rows.push('<div class="row"><span class="dot" style="background:'+s.color+'"></span>'+
          s.label.replace(/[&<>]/g,function(c){return{"&":"&amp;","<":"&lt;",">":"&gt;"}[c];})+": <b>"+fmt(p[1])+"</b></div>");});
      var gx=px(at);guide.setAttribute("x1",gx);guide.setAttribute("x2",gx);guide.setAttribute("visibility","visible");
      tip.innerHTML="<div>step <b>"+at+"</b></div>"+rows.join("");tip.hidden=false;
      var left=gx*r.width/b[4]+12;if(left+tip.offsetWidth>r.width)left=gx*r.width/b[4]-tip.offsetWidth-12;
      tip.style.left=left+"px";tip.style.top=(ev.clientY-r.top+12)+"px";});
    hover.addEventListener("mouseleave",function(){tip.hidden=true;guide.setAttribute("visibility","hidden");});
  });
  document.body.setAttribute("data-charts-ready",String(charts));
})();
"""
