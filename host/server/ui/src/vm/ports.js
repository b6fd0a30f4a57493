// Open ports of a vm (`list_ports`) with their preview links: the server proxies
// `/vms/{key}/ports/{port}/...` to the port inside the sandbox. Links open in a new
// tab without an opener.
import { useEffect, useState } from "preact/hooks";
import { html } from "./html.js";
import { vmAction } from "./http.js";

export function previewUrl(vmKey, port) {
  return `/vms/${vmKey}/ports/${port}/`;
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
    vmAction(api, vmKey, "list_ports")
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
            <a href=${previewUrl(vmKey, p.port)} target="_blank" rel="noopener noreferrer">
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
