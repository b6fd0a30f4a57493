// Actors: every actor of the server, by type.
import { useEffect, useState } from "preact/hooks";
import { html, href } from "../html.js";
import { StatusBadge } from "../components/badge.js";
import { errorText, fmtAge } from "../components/util.js";

export default function ActorsPage({ api }) {
  const [actors, setActors] = useState(null);
  const [name, setName] = useState("");
  const [error, setError] = useState(null);
  const load = () => api.get("/actors").then((r) => (setActors(r.actors), setError(null)), setError);
  useEffect(() => {
    load();
    const t = setInterval(load, 3000);
    return () => clearInterval(t);
  }, []);
  const all = actors || [];
  const names = [...new Set(all.map((a) => a.name))].sort();
  const shown = all.filter((a) => !name || a.name === name);
  return html`<section>
    <div class="row"><h1>Actors</h1><span class="spacer"></span>
      <label>type <select value=${name} onChange=${(e) => setName(e.target.value)}>
        <option value="">all (${all.length})</option>${names.map((n) => html`<option value=${n}>${n}</option>`)}
      </select></label></div>
    ${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : null}
    ${actors === null ? html`<p class="muted">loading…</p>` : null}
    <table class="t" id="actors-table"><thead><tr><th>type</th><th>key</th><th>awake</th><th>workflow</th><th>created</th></tr></thead>
      <tbody>${shown.slice(0, 1000).map((a) => {
        const key = api.keyPath(a.key);
        return html`<tr><td>${a.name}</td>
          <td><a data-actor=${`${a.name}/${a.key.join(",")}`} href=${href("actors", a.name, key)}>${a.key.join(",") || "(empty)"}</a></td>
          <td>${a.awake ? "yes" : "no"}</td><td>${a.workflow_status ? html`<${StatusBadge} status=${a.workflow_status} />` : ""}</td>
          <td>${fmtAge(a.created_at)}</td></tr>`;
      })}</tbody></table>
  </section>`;
}
