// The console's frame: navigation, hash routing, the token dialog.
//
// Routes (each a module src/pages/<page>.js default-exporting a Preact component
// that receives {params, api}):
//   #/runs  #/runs/<actor name>/<key>/<run id>  #/actors  #/actors/<name>/<key>
//   #/vms  #/vms/<key>  #/metrics  #/workflows
// Path segments in the hash are percent-encoded; params hold them decoded (a key
// is in its API form: parts joined by ",").
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { createApi } from "./api.js";
import { html } from "./html.js";
import RunsPage from "./pages/runs.js";

const ROUTES = [
  [["runs"], "runs", []],
  [["runs", null, null, null], "run", ["name", "key", "id"]],
  [["actors"], "actors", []],
  [["actors", null, null], "actor", ["name", "key"]],
  [["vms"], "vms", []],
  [["vms", null], "vm", ["key"]],
  [["metrics"], "metrics", []],
  [["workflows"], "workflows", []],
];
const NAV = [
  ["runs", "Runs"],
  ["actors", "Actors"],
  ["vms", "VMs"],
  ["metrics", "Metrics"],
  ["workflows", "Workflows"],
];
// The runs page is imported eagerly (first paint); the others on first visit.
const loaded = { runs: RunsPage };

export function parseHash(hash) {
  const segs = hash.replace(/^#\/?/, "").split("/").filter((s) => s !== "");
  if (!segs.length) return { page: "runs", params: {} };
  let parts;
  try {
    parts = segs.map(decodeURIComponent);
  } catch (_) {
    return { page: null, params: {} };
  }
  for (const [pattern, page, names] of ROUTES) {
    if (pattern.length !== parts.length || pattern[0] !== parts[0]) continue;
    const params = {};
    names.forEach((n, i) => (params[n] = parts[i + 1]));
    return { page, params };
  }
  return { page: null, params: {} };
}

let tokenResolver = null;

function TokenDialog({ onDone }) {
  const [value, setValue] = useState("");
  const submit = (e) => {
    e.preventDefault();
    onDone(value.trim());
  };
  return html`<div class="modal-back">
    <form class="modal" id="token-form" onSubmit=${submit}>
      <h2>Token required</h2>
      <p>This server requires its <code>AGENTVM_TOKEN</code>. It is kept in this browser's
      local storage and sent as a bearer header on every call.</p>
      <input id="token-input" type="password" autocomplete="off" autofocus
        value=${value} onInput=${(e) => setValue(e.target.value)} placeholder="token" />
      <div class="row"><button type="submit" class="primary">Use token</button>
      <button type="button" onClick=${() => onDone("")}>Cancel</button></div>
    </form>
  </div>`;
}

function Missing({ page }) {
  return html`<section><h1>${page}</h1><p class="muted">This page is not available yet.</p></section>`;
}

function App({ api }) {
  const [route, setRoute] = useState(parseHash(location.hash));
  const [asking, setAsking] = useState(false);
  const [, setTick] = useState(0);
  useEffect(() => {
    const onHash = () => setRoute(parseHash(location.hash));
    addEventListener("hashchange", onHash);
    tokenResolver = () => {
      setAsking(true);
      return new Promise((resolve) => {
        tokenResolver.resolve = resolve;
      });
    };
    return () => removeEventListener("hashchange", onHash);
  }, []);
  const { page, params } = route;
  useEffect(() => {
    if (page && !loaded[page]) {
      import(`./pages/${page}.js`)
        .then((m) => (loaded[page] = m.default))
        .catch(() => (loaded[page] = () => html`<${Missing} page=${page} />`))
        .finally(() => setTick((t) => t + 1));
    }
  }, [page]);
  const Page = page ? loaded[page] : null;
  const section = page ? page.replace(/^run$/, "runs").replace(/^actor$/, "actors").replace(/^vm$/, "vms") : "";
  const done = (value) => {
    setAsking(false);
    if (value) api.setToken(value);
    setTick((t) => t + 1); // the header's "token ✓"
    const resolve = tokenResolver && tokenResolver.resolve;
    if (resolve) resolve(value);
  };
  return html`
    <header class="top">
      <a class="brand" href="#/runs">agentvm</a>
      <nav>${NAV.map(([id, label]) => html`<a href=${"#/" + id} class=${section === id ? "active" : ""}>${label}</a>`)}</nav>
      <button class="link" title="forget the token" onClick=${() => (api.setToken(""), setTick((t) => t + 1))}>${api.token ? "token ✓" : ""}</button>
    </header>
    <main>
      ${!page ? html`<section><h1>Not found</h1><p>No page at <code>${location.hash}</code>. <a href="#/runs">Runs</a></p></section>` : null}
      ${page && Page ? html`<${Page} key=${location.hash} params=${params} api=${api} />` : null}
      ${page && !Page ? html`<p class="muted">loading…</p>` : null}
    </main>
    ${asking ? html`<${TokenDialog} onDone=${done} />` : null}
  `;
}

const api = createApi({ onUnauthorized: () => (tokenResolver ? tokenResolver() : "") });
render(html`<${App} api=${api} />`, document.getElementById("app"));
