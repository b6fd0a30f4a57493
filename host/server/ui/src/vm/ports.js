// Open ports of a vm (`GET /vms/{key}/ports`: the sandbox's listening TCP ports,
// each with its preview path) with their preview links. The path carries a
// capability for this vm (the server's HMAC of its key), so the new tab opens the
// preview without the bearer token, which never leaves this page. Links open
// without an opener and without a referrer.
import { useEffect, useState } from "preact/hooks";
import { html } from "./html.js";

/** The preview path the server handed out, if it is one for this vm. */
export function previewUrl(vmKey, entry) {
  const prefix = `/vms/${vmKey}/ports/${entry.port}`;
  const given = typeof entry.preview === "string" ? entry.preview : "";
  return given.startsWith(`${prefix}.`) || given.startsWith(`${prefix}/`) ? given : `${prefix}/`;
}

function portsOf(output) {
  const list = Array.isArray(output) ? output : (output && output.ports) || [];
  // One row per port (a server often listens on both 0.0.0.0 and ::).
  const seen = new Map();
  for (const item of list) {
    const p = typeof item === "number" ? { port: item } : item;
    if (p && Number.isInteger(p.port) && !seen.has(p.port)) seen.set(p.port, p);
  }
  return [...seen.values()];
}

/** props: api, vmKey. */
export default function Ports({ api, vmKey }) {
  const [ports, setPorts] = useState(null);
  const [error, setError] = useState(null);
  const [n, setN] = useState(0);

  useEffect(() => {
    let live = true;
    api
      .get(`/vms/${vmKey}/ports`)
      .then((out) => live && (setPorts(portsOf(out)), setError(null)))
      .catch((err) => live && setError(String(err.message || err)));
    return () => {
      live = false;
    };
  }, [api, vmKey, n]);

  return html`
    <div class="vm-ports">
      <div class="vm-section-head">
        <h3>Ports</h3>
        <button type="button" class="vm-ports-refresh" onClick=${() => setN((x) => x + 1)}>Refresh</button>
      </div>
      ${error && html`<div class="vm-error">${error}</div>`}
      ${ports && ports.length === 0 && html`<div class="vm-note">no listening ports</div>`}
      ${ports &&
      ports.length > 0 &&
      html`<ul class="vm-port-list">
        ${ports.map(
          (p) => html`<li key=${p.port} data-port=${p.port}>
            <a href=${previewUrl(vmKey, p)} target="_blank" rel="noopener noreferrer">
              :${p.port}
            </a>
            ${p.process && html` <span class="vm-muted">${String(p.process)}</span>`}
            ${p.address && html` <span class="vm-muted">${String(p.address)}</span>`}
          </li>`,
        )}
      </ul>`}
    </div>
  `;
}
