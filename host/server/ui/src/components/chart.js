// A small line chart as hand-made SVG: points [[t, v], ...].
import { html } from "../html.js";

export function LineChart({ title, points, unit = "", testid = null }) {
  const w = 400, h = 120, pad = 22;
  const pts = points || [];
  const last = pts.length ? pts[pts.length - 1][1] : null;
  let body = null;
  if (pts.length >= 2) {
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const y1 = (Math.max(...ys) || 1) * 1.1; // an all-zero series gets a 0..1 axis
    const X = (x) => pad + ((x - x0) / Math.max(x1 - x0, 1e-9)) * (w - pad - 4);
    const Y = (y) => h - pad - (y / y1) * (h - pad - 6);
    const d = pts.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    const area = `${d}L${X(x1).toFixed(1)},${Y(0)}L${X(x0).toFixed(1)},${Y(0)}Z`;
    body = html`
      <path class="area" d=${area} /><path class="line" d=${d} />
      <line class="axis" x1=${pad} y1=${Y(0)} x2=${w - 4} y2=${Y(0)} />
      <text x="2" y="12">${fmt(y1 / 1.1)}${unit}</text><text x="2" y=${h - pad}>0</text>
      <text x=${pad} y=${h - 6}>${Math.round(x1 - x0)} s</text>`;
  }
  return html`<div class="card chart" data-testid=${testid}>
    <div class="row"><strong>${title}</strong><span class="spacer"></span><span class="mono">${last === null ? "–" : fmt(last) + unit}</span></div>
    <svg viewBox=${`0 0 ${w} ${h}`} preserveAspectRatio="none">${body || html`<text x="10" y="60">collecting…</text>`}</svg>
  </div>`;
}

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}
