import { useEffect, useState } from "preact/hooks";
import { html, href } from "../html.js";

export default function RunsPage({ api }) {
  const [runs, setRuns] = useState(null);
  useEffect(() => {
    api.listRuns().then((r) => setRuns(r.runs));
  }, []);
  return html`<section><h1>Runs</h1>
    <ul>${(runs || []).map((r) => html`<li><a href=${href("runs", r.name, api.keyPath(r.key), r.run_id)}>${r.name} ${r.run_id}</a> ${r.status}</li>`)}</ul>
  </section>`;
}
