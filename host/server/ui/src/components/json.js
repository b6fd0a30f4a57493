// A collapsible JSON viewer. Text only (Preact escapes it): values may come from
// sandboxes.
import { html } from "../html.js";

const MAX_ITEMS = 500;

export function JsonView({ value, open = 2, name = null }) {
  return html`<div class="json">${node(value, name, 0, open)}</div>`;
}

function node(value, name, depth, open) {
  const label = name === null ? null : html`<span class="k">${JSON.stringify(String(name))}</span>: `;
  if (value === null || typeof value !== "object") {
    return html`<div>${label}${scalar(value)}</div>`;
  }
  const isArr = Array.isArray(value);
  const entries = isArr ? value.map((v, i) => [i, v]) : Object.entries(value);
  const brackets = isArr ? ["[", "]"] : ["{", "}"];
  if (!entries.length) return html`<div>${label}${brackets[0]}${brackets[1]}</div>`;
  const shown = entries.slice(0, MAX_ITEMS);
  return html`<details open=${depth < open}>
    <summary>${label}${brackets[0]}<span class="muted"> ${entries.length} ${isArr ? "items" : "keys"} </span>${brackets[1]}</summary>
    ${shown.map(([k, v]) => node(v, isArr ? null : k, depth + 1, open))}
    ${entries.length > MAX_ITEMS ? html`<div class="muted">… ${entries.length - MAX_ITEMS} more</div>` : null}
  </details>`;
}

function scalar(v) {
  if (typeof v === "string") {
    const shown = v.length > 2000 ? v.slice(0, 2000) + `… (${v.length} chars)` : v;
    return html`<span class="s">${JSON.stringify(shown)}</span>`;
  }
  if (typeof v === "number") return html`<span class="n">${String(v)}</span>`;
  return html`<span class="b">${String(v)}</span>`;
}
