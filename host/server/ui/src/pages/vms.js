// #/vms: the vm actors of this host with their container's status, image and age;
// create (start) and destroy.
import { useEffect, useState } from "preact/hooks";
import { html, age, encodeKey, useStylesheet } from "../vm/html.js";
import { vmAction } from "../vm/http.js";
import { href } from "../html.js";

const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

async function loadVms(api) {
  const { actors } = await api.get("/actors", { name: "vm" });
  // The status comes from each vm's `info`, which starts nothing.
  return Promise.all(
    actors.map(async (a) => {
      const key = encodeKey(a.key);
      let info = null;
      let error = null;
      try {
        info = await vmAction(api, key, "info");
      } catch (err) {
        error = String(err.message || err);
      }
      return { ...a, encoded: key, info, error };
    }),
  );
}

export default function Vms({ api }) {
  useStylesheet(new URL("../vm/vm.css", import.meta.url).href);
  const [vms, setVms] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(null);
  const [newKey, setNewKey] = useState("");
  const [n, setN] = useState(0);

  useEffect(() => {
    let live = true;
    loadVms(api)
      .then((list) => live && (setVms(list), setError(null)))
      .catch((err) => live && setError(String(err.message || err)));
    return () => {
      live = false;
    };
  }, [api, n]);

  const create = async (ev) => {
    ev.preventDefault();
    const key = newKey.trim();
    if (!KEY_RE.test(key)) {
      setError("a vm key is letters, digits, '.', '_' and '-' (at most 128)");
      return;
    }
    setBusy(key);
    try {
      await api.post(`/actors/vm/${encodeKey(key)}/actions/start`, { args: [] });
      setNewKey("");
      setError(null);
    } catch (err) {
      setError(String(err.message || err));
    }
    setBusy(null);
    setN((x) => x + 1);
  };

  const destroy = async (vm) => {
    if (!confirm(`Destroy vm ${vm.encoded}? Its container and /home/user are removed.`)) return;
    setBusy(vm.encoded);
    try {
      await api.del(`/actors/vm/${vm.encoded}`);
    } catch (err) {
      setError(String(err.message || err));
    }
    setBusy(null);
    setN((x) => x + 1);
  };

  return html`
    <section class="vm-page">
      <div class="vm-section-head">
        <h2>VMs</h2>
        <button type="button" onClick=${() => setN((x) => x + 1)}>Refresh</button>
      </div>
      <form class="vm-create" onSubmit=${create}>
        <input
          name="key"
          placeholder="new vm key"
          value=${newKey}
          onInput=${(e) => setNewKey(e.currentTarget.value)}
        />
        <button type="submit" disabled=${busy !== null}>Create</button>
      </form>
      ${error && html`<div class="vm-error">${error}</div>`}
      ${busy && html`<div class="vm-note">working on ${busy}…</div>`}
      ${!vms && !error && html`<div class="vm-note">loading…</div>`}
      ${vms && vms.length === 0 && html`<div class="vm-note">no vms</div>`}
      ${vms &&
      vms.length > 0 &&
      html`<table class="vm-table vm-list">
        <thead>
          <tr><th>vm</th><th>status</th><th>image</th><th>age</th><th></th></tr>
        </thead>
        <tbody>
          ${vms.map(
            (vm) => html`<tr key=${vm.encoded} data-vm=${vm.encoded}>
              <td><a href=${href("vms", vm.encoded)}>${(Array.isArray(vm.key) ? vm.key : [vm.key]).join(",")}</a></td>
              <td class="vm-status">${vm.info ? vm.info.status : vm.error || "?"}</td>
              <td class="vm-muted">${(vm.info && vm.info.image) || ""}</td>
              <td>${age(vm.created_at)}</td>
              <td>
                <button type="button" disabled=${busy !== null} onClick=${() => destroy(vm)}>
                  Destroy
                </button>
              </td>
            </tr>`,
          )}
        </tbody>
      </table>`}
    </section>
  `;
}
