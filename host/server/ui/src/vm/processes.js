// The processes the vm's supervisor knows (`list_processes`: spawned and exec'd
// commands), with a kill button for running ones. Refreshed on demand: polling
// would keep an idle vm from stopping (the action marks the vm as used).
import { useEffect, useState } from "preact/hooks";
import { html, age } from "./html.js";
import { vmAction } from "./http.js";

/** props: api, vmKey. */
export default function Processes({ api, vmKey }) {
  const [procs, setProcs] = useState(null);
  const [error, setError] = useState(null);
  const [n, setN] = useState(0);

  useEffect(() => {
    let live = true;
    vmAction(api, vmKey, "list_processes")
      .then((out) => live && (setProcs(out || []), setError(null)))
      .catch((err) => live && setError(String(err.message || err)));
    return () => {
      live = false;
    };
  }, [api, vmKey, n]);

  const kill = async (pid) => {
    try {
      await vmAction(api, vmKey, "kill_process", [pid, { signal: "TERM" }]);
      // Show it gone: wait (a little) for the exit before listing again.
      await vmAction(api, vmKey, "wait_process", [pid, { timeout: 5 }]).catch(() => null);
    } catch (err) {
      setError(String(err.message || err));
    }
    setN((x) => x + 1);
  };

  const sorted = procs ? [...procs].sort((a, b) => b.started_at - a.started_at) : [];
  return html`
    <div class="vm-processes">
      <div class="vm-section-head">
        <h3>Processes</h3>
        <button type="button" onClick=${() => setN((x) => x + 1)}>Refresh</button>
      </div>
      ${error && html`<div class="vm-error">${error}</div>`}
      ${procs && procs.length === 0 && html`<div class="vm-note">no processes</div>`}
      ${procs &&
      procs.length > 0 &&
      html`<table class="vm-table">
        <thead><tr><th>pid</th><th>command</th><th>status</th><th>age</th><th></th></tr></thead>
        <tbody>
          ${sorted.map(
            (p) => html`<tr key=${p.pid} data-pid=${p.pid}>
              <td>${p.pid}</td>
              <td class="vm-argv">${(p.argv || []).join(" ")}</td>
              <td>${p.running ? "running" : `exit ${p.exit_code}`}</td>
              <td>${age(p.started_at)}</td>
              <td>${p.running && html`<button type="button" onClick=${() => kill(p.pid)}>Kill</button>`}</td>
            </tr>`,
          )}
        </tbody>
      </table>`}
    </div>
  `;
}
