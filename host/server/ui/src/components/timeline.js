// A run's steps as bars on a time axis; attempts shown, errors expanded.
import { html } from "../html.js";
import { errorText, fmtDuration } from "./util.js";

export function Timeline({ entries, start, end }) {
  const timed = (entries || []).filter((e) => e.started_at);
  if (!timed.length) return html`<p class="muted">no steps yet</p>`;
  const t0 = start || Math.min(...timed.map((e) => e.started_at));
  const t1 = Math.max(end || 0, ...timed.map((e) => e.finished_at || end || Date.now() / 1000), t0 + 0.001);
  const span = t1 - t0;
  return html`<div class="timeline" data-testid="timeline">
    <div class="tl-row"><span></span><span class="muted row" style="justify-content:space-between"><span>0 s</span><span>${fmtDuration(span)}</span></span></div>
    ${timed.map((e) => {
      const left = ((e.started_at - t0) / span) * 100;
      const stop = e.finished_at || t1;
      const width = Math.max(0.3, ((stop - e.started_at) / span) * 100);
      const name = e.path.split("/").slice(-1)[0] || e.path;
      const title = `${e.path}: ${e.status}, ${fmtDuration(stop - e.started_at)}${e.attempts > 1 ? `, ${e.attempts} attempts` : ""}`;
      return html`<div class="tl-row" data-step=${name} data-status=${e.status}>
          <span class="tl-name" title=${e.path}>${name}${e.attempts > 1 ? html` <span class="muted">×${e.attempts}</span>` : null}
            <span class="muted"> ${e.kind !== "step" ? e.kind : ""}</span></span>
          <span class="tl-track" title=${title}><span class=${"tl-bar " + e.status} style=${`left:${left}%;width:${Math.min(width, 100 - left)}%`}></span></span>
          ${e.error ? html`<div class="tl-err error">${errorText(e.error)}</div>` : null}
        </div>`;
    })}
  </div>`;
}
