// Workflows: the registered DAG workflows (GET /workflows) and their params; a
// run of one is started from the Runs page's form.
import { useEffect, useState } from "preact/hooks";
import { html } from "../html.js";
import { JsonView } from "../components/json.js";
import { errorText } from "../components/util.js";

export default function WorkflowsPage({ api }) {
  const [wfs, setWfs] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    api.get("/workflows").then((r) => setWfs(Array.isArray(r) ? r : r.workflows || []), setError);
  }, []);
  return html`<section>
    <h1>Workflows</h1>
    <p class="muted">Registered DAG workflows (docs/workflows.md). Start one from <a href="#/runs">Runs</a> → Start a run.</p>
    ${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : null}
    ${wfs && !wfs.length ? html`<p class="muted">none registered</p>` : null}
    ${(wfs || []).map((w) => html`<div class="card"><strong>${w.name}</strong> <span class="muted">v${w.latest} · ${(w.params || []).length} params</span>
      ${w.description ? html`<p>${w.description}</p>` : null}<${JsonView} value=${w} open=${0} /></div>`)}
  </section>`;
}
