import { html } from "../html.js";

export function StatusBadge({ status }) {
  const s = String(status || "unknown");
  return html`<span class=${"badge " + s} data-status=${s}>${s}</span>`;
}
