// Runs: every run across orchestrators, live (SSE GET /runs/events), filters,
// cancel/retry, and the form that starts one.
import { useEffect, useMemo, useState } from "preact/hooks";
import { html, href } from "../html.js";
import { StatusBadge } from "../components/badge.js";
import { errorText, fmtAge, fmtDuration, runDuration, runKey } from "../components/util.js";
import { StartForm } from "../components/start_form.js";

const STATUSES = ["queued", "running", "completed", "failed", "cancelled"];

export default function RunsPage({ api }) {
  const [runs, setRuns] = useState(null); // Map runKey -> run
  const [live, setLive] = useState(false);
  const [error, setError] = useState(null);
  const [status, setStatus] = useState("");
  const [name, setName] = useState("");
  const [showForm, setShowForm] = useState(false);
  const [, setNow] = useState(0);

  useEffect(() => {
    const close = api.events(
      "/runs/events",
      (event, data) => {
        if (event !== "runs" || !data || !Array.isArray(data.runs)) return;
        setRuns((old) => {
          const next = data.full || !old ? new Map() : new Map(old);
          for (const r of data.runs) next.set(runKey(r), r);
          return next;
        });
        setError(null);
      },
      { onOpen: () => setLive(true), onError: (e) => (setLive(false), setError(e)) }
    );
    const tick = setInterval(() => setNow((n) => n + 1), 1000);
    return () => {
      close();
      clearInterval(tick);
    };
  }, []);

  const all = useMemo(() => (runs ? [...runs.values()].sort((a, b) => b.created_at - a.created_at || b.run_id - a.run_id) : []), [runs]);
  const names = [...new Set(all.map((r) => r.name))].sort();
  const shown = all.filter((r) => (!status || r.status === status) && (!name || r.name === name));
  const counts = Object.fromEntries(STATUSES.map((s) => [s, all.filter((r) => r.status === s).length]));

  const act = async (r, what) => {
    try {
      const updated = what === "cancel" ? await api.cancelRun(r.name, r.key, r.run_id) : await api.retryRun(r.name, r.key, r.run_id);
      setRuns((old) => new Map(old).set(runKey(updated), updated));
    } catch (e) {
      alert(`${what} failed: ${errorText(e.error || e.message)}`);
    }
  };

  return html`<section>
    <div class="row">
      <h1>Runs</h1>
      <span class=${"badge " + (live ? "completed" : "queued")} id="live">${live ? "live" : "connecting…"}</span>
      <span class="spacer"></span>
      <button class="primary" id="start-run" onClick=${() => setShowForm(!showForm)}>${showForm ? "Close" : "Start a run"}</button>
    </div>
    ${showForm ? html`<${StartForm} api=${api} onStarted=${() => setShowForm(false)} />` : null}
    <div class="row" style="margin:8px 0">
      <label>status <select id="filter-status" value=${status} onChange=${(e) => setStatus(e.target.value)}>
        <option value="">all (${all.length})</option>
        ${STATUSES.map((s) => html`<option value=${s}>${s} (${counts[s]})</option>`)}
      </select></label>
      <label>orchestrator <select id="filter-name" value=${name} onChange=${(e) => setName(e.target.value)}>
        <option value="">all</option>
        ${names.map((n) => html`<option value=${n}>${n}</option>`)}
      </select></label>
    </div>
    ${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : null}
    ${runs === null ? html`<p class="muted">loading…</p>` : null}
    ${runs !== null && !shown.length ? html`<p class="muted" id="no-runs">no runs${status || name ? " match the filters" : " yet"}</p>` : null}
    ${shown.length
      ? html`<table class="t" id="runs-table">
          <thead><tr><th>run</th><th>orchestrator</th><th>queue</th><th>status</th><th>age</th><th>duration</th><th>error</th><th></th></tr></thead>
          <tbody>${shown.slice(0, 500).map(
            (r) => html`<tr data-run=${r.run_id} data-name=${r.name} data-status=${r.status}>
              <td><a href=${href("runs", r.name, api.keyPath(r.key), r.run_id)}>#${r.run_id}</a></td>
              <td>${r.name} <span class="muted">${r.key.join(",")}</span></td>
              <td>${r.queue}</td>
              <td><${StatusBadge} status=${r.status} /></td>
              <td title=${new Date(r.created_at * 1000).toISOString()}>${fmtAge(r.created_at)}</td>
              <td>${fmtDuration(runDuration(r))}</td>
              <td class="error">${r.error ? errorText(r.error).slice(0, 160) : ""}</td>
              <td><div class="row">
                ${r.status === "queued" || r.status === "running" ? html`<button class="danger" data-action="cancel" onClick=${() => act(r, "cancel")}>cancel</button>` : null}
                ${r.status === "failed" || r.status === "cancelled" ? html`<button data-action="retry" onClick=${() => act(r, "retry")}>retry</button>` : null}
              </div></td>
            </tr>`
          )}</tbody>
        </table>`
      : null}
  </section>`;
}
