// Actor: its state (JSON viewer), queue contents, runs, workflow history tree and
// inspector summary; refreshed every few seconds.
import { useEffect, useState } from "preact/hooks";
import { html, href } from "../html.js";
import { StatusBadge } from "../components/badge.js";
import { JsonView } from "../components/json.js";
import { errorText, fmtAge, fmtDuration, runDuration } from "../components/util.js";

export default function ActorPage({ params, api }) {
  const { name, key } = params;
  const base = `/actors/${encodeURIComponent(name)}/${key}`;
  const [data, setData] = useState({});
  const [error, setError] = useState(null);
  const load = async () => {
    const q = { create: undefined };
    const parts = await Promise.allSettled([
      api.get(`${base}/inspector/summary`, q),
      api.get(`${base}/state`, q),
      api.get(`${base}/inspector/queue`, q),
      api.get(`${base}/inspector/workflow-history`, q),
      api.get(`${base}/runs`),
    ]);
    const [summary, state, queue, history, runs] = parts.map((p) => (p.status === "fulfilled" ? p.value : null));
    const failed = parts.find((p) => p.status === "rejected");
    setError(failed ? failed.reason : null);
    setData({ summary, state, queue, history, runs });
  };
  useEffect(() => {
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, [name, key]);
  const { summary, state, queue, history, runs } = data;
  return html`<section id="actor-page">
    <div class="row"><h1>${name} · ${decodeKey(key)}</h1>
      ${summary && summary.workflow_status ? html`<${StatusBadge} status=${summary.workflow_status} />` : null}</div>
    ${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : null}
    <div class="grid2">
      <div class="card" id="actor-summary"><h2 style="margin-top:0">Summary</h2>${summary ? html`<${JsonView} value=${summary} open=${1} />` : "–"}</div>
      <div class="card" id="actor-state"><h2 style="margin-top:0">State</h2>${state ? html`<${JsonView} value=${state.state} open=${2} />` : "–"}</div>
    </div>
    <div class="card" id="actor-queue"><h2 style="margin-top:0">Queue</h2>
      ${queue && queue.messages.length
        ? html`<table class="t"><thead><tr><th>id</th><th>queue</th><th>body</th></tr></thead><tbody>
            ${queue.messages.map((m) => html`<tr><td>${m.message_id}</td><td>${m.queue}</td><td><${JsonView} value=${m.body} open=${0} /></td></tr>`)}</tbody></table>`
        : html`<p class="muted">empty</p>`}</div>
    <div class="card" id="actor-runs"><h2 style="margin-top:0">Runs</h2>
      ${runs && runs.runs.length
        ? html`<table class="t"><tbody>${runs.runs.slice(0, 200).map((r) => html`<tr>
            <td><a href=${href("runs", name, key, r.run_id)}>#${r.run_id}</a></td><td>${r.queue}</td>
            <td><${StatusBadge} status=${r.status} /></td><td>${fmtAge(r.created_at)}</td><td>${fmtDuration(runDuration(r))}</td></tr>`)}</tbody></table>`
        : html`<p class="muted">no runs</p>`}</div>
    <div class="card tree" id="actor-history"><h2 style="margin-top:0">Workflow history</h2>
      ${history && history.entries.length ? html`<${HistoryTree} entries=${history.entries} />` : html`<p class="muted">no history</p>`}</div>
  </section>`;
}

function decodeKey(key) {
  try {
    return key.split(",").map(decodeURIComponent).join(", ");
  } catch (_) {
    return key;
  }
}

// History entries (paths like "run/3/fix-bug") as a tree by path segment.
function HistoryTree({ entries }) {
  const root = { children: new Map() };
  for (const e of entries.slice(0, 5000)) {
    let node = root;
    for (const part of e.path.split("/")) {
      if (!node.children.has(part)) node.children.set(part, { children: new Map() });
      node = node.children.get(part);
    }
    node.entry = e;
  }
  const render = (node) => html`<ul>${[...node.children.entries()].map(([part, child]) => {
    const e = child.entry;
    const label = html`<span>${part}</span> ${e ? html`<${StatusBadge} status=${e.status} /> <span class="muted">${e.kind}${e.attempts > 1 ? ` ×${e.attempts}` : ""}${e.started_at && e.finished_at ? " · " + fmtDuration(e.finished_at - e.started_at) : ""}</span>` : null}
      ${e && e.error ? html`<div class="error">${errorText(e.error)}</div>` : null}`;
    return child.children.size
      ? html`<li><details open><summary>${label}</summary>${render(child)}</details></li>`
      : html`<li>${label}</li>`;
  })}</ul>`;
  return render(root);
}
