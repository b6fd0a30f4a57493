// #/vms/<key>: one vm — its files (tree, viewer, upload, live refresh through the
// watch stream), a terminal, open ports with previews, processes and sessions.
import { useEffect, useState } from "preact/hooks";
import { html, displayKey, encodePath, isKeyPath, parentOf, useStylesheet } from "../vm/html.js";
import { fetchBytes, vmAction } from "../vm/http.js";
import FileTree from "../vm/filetree.js";
import FileView from "../vm/fileview.js";
import Terminal from "../vm/terminal.js";
import Ports from "../vm/ports.js";
import Processes from "../vm/processes.js";
import Sessions from "../vm/sessions.js";

const ROOT = "/home/user";

function Info({ api, vmKey }) {
  const [info, setInfo] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    vmAction(api, vmKey, "info")
      .then((out) => live && setInfo(out))
      .catch((err) => live && setError(String(err.message || err)));
    return () => {
      live = false;
    };
  }, [api, vmKey]);
  if (error) return html`<div class="vm-error">${error}</div>`;
  if (!info) return html`<div class="vm-note">loading…</div>`;
  return html`<div class="vm-info">
    <span class="vm-status" data-status=${info.status}>${info.status}</span>
    <span class="vm-muted"> ${info.image || ""} ${info.container || ""}</span>
  </div>`;
}

function Upload({ api, vmKey, dir, onDone }) {
  const [state, setState] = useState(null);
  const upload = async (ev) => {
    const files = [...ev.currentTarget.files];
    ev.currentTarget.value = "";
    for (const file of files) {
      // A file name from the user's disk: one path segment, never a way up.
      const name = file.name.replaceAll("/", "_");
      if (name === "" || name === "." || name === "..") continue;
      const path = `${dir}/${name}`;
      setState(`uploading ${path}…`);
      try {
        await fetchBytes(api, "PUT", `/vms/${vmKey}/files/${encodePath(path)}`, file);
        setState(`uploaded ${path}`);
        onDone(path);
      } catch (err) {
        setState(`upload failed: ${err.message || err}`);
        return;
      }
    }
  };
  return html`<label class="vm-upload">
    Upload to <span class="vm-muted">${dir}</span>
    <input type="file" multiple onChange=${upload} />
    ${state && html`<span class="vm-note">${state}</span>`}
  </label>`;
}

/** Follow `GET /vms/{key}/watch?path=` (file_changed {path, kind}). */
function useWatch(api, vmKey, path, onChange) {
  const [status, setStatus] = useState("off");
  useEffect(() => {
    const close = api.events(
      `/vms/${vmKey}/watch`,
      (name, data) => {
        if (name !== "file_changed" || !data || typeof data.path !== "string") return;
        onChange({ path: data.path, kind: data.kind });
      },
      { query: { path }, onOpen: () => setStatus("on"), onError: () => setStatus("error") },
    );
    return () => {
      setStatus("off");
      close();
    };
  }, [api, vmKey, path]);
  return status;
}

export default function Vm({ params, api }) {
  useStylesheet(new URL("../vm/vm.css", import.meta.url).href);
  if (!isKeyPath(params.key)) {
    return html`<section class="vm-page">
      <h2><a href="#/vms">VMs</a></h2>
      <div class="vm-error">not a vm key: ${String(params.key)}</div>
    </section>`;
  }
  return html`<${Gate} api=${api} vmKey=${params.key} />`;
}

/** One call first: it asks for the token if the server wants one, and tells a
 * missing vm; the sections' calls, the watch stream and the terminal's socket then
 * start with the token in hand (each asking on its own would race the dialog). */
function Gate({ api, vmKey }) {
  const [state, setState] = useState({ ready: false });
  useEffect(() => {
    let live = true;
    api
      .get(`/actors/vm/${vmKey}`)
      .then(() => live && setState({ ready: true }))
      .catch((err) => live && setState({ error: String(err.message || err) }));
    return () => {
      live = false;
    };
  }, [api, vmKey]);
  if (state.error) {
    return html`<section class="vm-page">
      <h2><a href="#/vms">VMs</a> / ${displayKey(vmKey)}</h2>
      <div class="vm-error">${state.error}</div>
    </section>`;
  }
  if (!state.ready) return html`<div class="vm-note">loading…</div>`;
  return html`<${VmPage} api=${api} vmKey=${vmKey} />`;
}

function VmPage({ api, vmKey }) {
  const [selected, setSelected] = useState(null); // {path, type}
  const [change, setChange] = useState(null);
  const [reloadAll, setReloadAll] = useState(0);

  useEffect(() => setSelected(null), [vmKey]);
  const watching = useWatch(api, vmKey, ROOT, (c) => {
    // An overflow means changes were dropped (too many at once): re-list everything.
    if (c.kind === "overflow") setReloadAll((x) => x + 1);
    else setChange({ ...c });
  });

  const dir = selected ? (selected.type === "dir" ? selected.path : parentOf(selected.path)) : ROOT;
  const file = selected && selected.type !== "dir" ? selected.path : null;

  return html`
    <section class="vm-page" data-vm=${vmKey}>
      <div class="vm-section-head">
        <h2><a href="#/vms">VMs</a> / ${displayKey(vmKey)}</h2>
        <${Info} api=${api} vmKey=${vmKey} />
      </div>
      <div class="vm-files">
        <div class="vm-files-side">
          <div class="vm-section-head">
            <h3>Files</h3>
            <button type="button" onClick=${() => setReloadAll((x) => x + 1)}>Refresh</button>
            <span
              class="vm-muted vm-watch"
              data-watch=${watching}
              title="changes in the sandbox refresh the tree while this says live"
            >
              ${watching === "on" ? "live" : "not live"}
            </span>
          </div>
          <${FileTree}
            api=${api}
            vmKey=${vmKey}
            root=${ROOT}
            selected=${selected && selected.path}
            onSelect=${(entry) => setSelected({ path: entry.path, type: entry.type })}
            change=${change}
            reloadAll=${reloadAll}
          />
          <${Upload}
            api=${api}
            vmKey=${vmKey}
            dir=${dir}
            onDone=${(path) => setChange({ path, kind: "created", n: Date.now() })}
          />
        </div>
        <div class="vm-files-main">
          ${file
            ? html`<${FileView} api=${api} vmKey=${vmKey} path=${file} change=${change} />`
            : html`<div class="vm-note">select a file</div>`}
        </div>
      </div>
      <div class="vm-section">
        <h3>Terminal</h3>
        <${Terminal} api=${api} vmKey=${vmKey} />
      </div>
      <div class="vm-columns">
        <div class="vm-section"><${Ports} api=${api} vmKey=${vmKey} /></div>
        <div class="vm-section"><${Processes} api=${api} vmKey=${vmKey} /></div>
        <div class="vm-section"><${Sessions} api=${api} vmKey=${vmKey} /></div>
      </div>
    </section>
  `;
}
