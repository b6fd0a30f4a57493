// The "start a run" form: one entry per run queue (GET /runs/queues, fields drawn
// from its body's JSON Schema) and per registered DAG workflow (GET /workflows,
// fields from its params).
import { useEffect, useState } from "preact/hooks";
import { html, href } from "../html.js";
import { errorText } from "./util.js";

const LONG_TEXT = new Set(["issue", "prompt", "feedback", "description", "instructions"]);

// The schema's object properties as fields: {name, type, enum, required, default, description}.
export function fieldsOf(schema) {
  if (!schema || typeof schema !== "object") return [];
  const defs = schema.$defs || schema.definitions || {};
  const deref = (s) => {
    for (let i = 0; s && s.$ref && i < 10; i++) s = defs[s.$ref.split("/").pop()] || {};
    return s || {};
  };
  const root = deref(schema);
  const required = new Set(root.required || []);
  return Object.entries(root.properties || {}).map(([name, raw]) => {
    let p = deref(raw);
    let nullable = false;
    const alts = p.anyOf || p.oneOf;
    if (alts) {
      const real = alts.map(deref).filter((a) => a.type !== "null");
      nullable = real.length < alts.length;
      p = { ...real[0], description: p.description || (real[0] || {}).description, default: p.default };
    }
    const type = p.enum ? "enum" : p.type || "string";
    return { name, type, enum: p.enum || null, required: required.has(name), nullable, default: p.default, description: p.description || raw.description || "" };
  });
}

function paramsAsFields(params) {
  return (params || []).map((p) => ({
    name: p.name,
    type: p.type === "number" || p.type === "integer" || p.type === "boolean" ? p.type : p.type === "string" ? "string" : "json",
    enum: null,
    required: !!p.required,
    default: p.default,
    description: p.description || "",
  }));
}

function initialValues(fields) {
  const v = {};
  for (const f of fields) {
    if (f.type === "boolean") v[f.name] = !!f.default;
    else if (f.default === undefined || f.default === null) v[f.name] = "";
    else v[f.name] = typeof f.default === "object" ? JSON.stringify(f.default) : String(f.default);
  }
  return v;
}

// The body to send: only fields given (or required); numbers and JSON parsed.
export function bodyOf(fields, values) {
  const body = {};
  for (const f of fields) {
    const v = values[f.name];
    if (f.type === "boolean") {
      if (v !== !!f.default) body[f.name] = v;
      continue;
    }
    if (v === "" || v === undefined) {
      if (f.required) throw new Error(`${f.name}: required`);
      continue;
    }
    if (f.type === "integer" || f.type === "number") {
      const n = Number(v);
      if (!isFinite(n)) throw new Error(`${f.name}: not a number`);
      body[f.name] = n;
    } else if (f.type === "json" || f.type === "object" || f.type === "array") {
      try {
        body[f.name] = JSON.parse(v);
      } catch (_) {
        throw new Error(`${f.name}: not valid JSON`);
      }
    } else body[f.name] = v;
  }
  return body;
}

export function StartForm({ api, onStarted }) {
  const [choices, setChoices] = useState(null);
  const [choice, setChoice] = useState("");
  const [values, setValues] = useState({});
  const [key, setKey] = useState("main");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    (async () => {
      const found = [];
      try {
        for (const q of (await api.get("/runs/queues")).queues)
          found.push({ id: `queue:${q.name}/${q.queue}`, label: `${q.name} · ${q.queue}`, kind: "queue", name: q.name, queue: q.queue, description: q.description, fields: fieldsOf(q.schema) });
      } catch (e) {
        setError(e);
      }
      try {
        const wfs = await api.get("/workflows");
        for (const w of Array.isArray(wfs) ? wfs : wfs.workflows || [])
          found.push({ id: `workflow:${w.name}`, label: `workflow · ${w.name}`, kind: "workflow", name: w.name, description: w.description || "", fields: paramsAsFields(w.params) });
      } catch (_) {
        /* no DAG workflows on this server */
      }
      setChoices(found);
      const first = found.find((c) => c.id === "queue:automator/fixBug") || found[0];
      if (first) pick(first);
    })();
  }, []);

  const pick = (c) => {
    setChoice(c.id);
    setValues(initialValues(c.fields));
    setError(null);
  };
  const current = (choices || []).find((c) => c.id === choice);

  const submit = async (e) => {
    e.preventDefault();
    if (!current) return;
    setError(null);
    let body;
    try {
      body = bodyOf(current.fields, values);
    } catch (err) {
      setError(err);
      return;
    }
    setBusy(true);
    try {
      if (current.kind === "queue") {
        const sent = await api.send(current.name, [key || "main"], current.queue, body);
        if (onStarted) onStarted(sent);
        if (sent.message_id) location.hash = href("runs", current.name, api.keyPath([key || "main"]), sent.message_id);
      } else {
        const started = await api.post(`/workflows/${encodeURIComponent(current.name)}/runs`, { params: body });
        if (onStarted) onStarted(started);
        // A registered workflow's runs are runs of the "workflows" actor keyed by its name.
        if (started && started.run_id) location.hash = href("runs", "workflows", api.keyPath([current.name]), started.run_id);
      }
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  if (choices === null) return html`<div class="card muted">loading the run queues…</div>`;
  return html`<form class="card" id="start-form" onSubmit=${submit}>
    <div class="row">
      <label>start <select id="start-kind" value=${choice} onChange=${(e) => pick(choices.find((c) => c.id === e.target.value))}>
        ${choices.map((c) => html`<option value=${c.id}>${c.label}</option>`)}
      </select></label>
      ${current && current.kind === "queue" ? html`<label>actor key <input id="start-key" value=${key} onInput=${(e) => setKey(e.target.value)} size="10" /></label>` : null}
    </div>
    ${current && current.description ? html`<p class="muted">${current.description}</p>` : null}
    ${current ? current.fields.map((f) => html`<${Field} f=${f} value=${values[f.name]} set=${(v) => setValues({ ...values, [f.name]: v })} />`) : null}
    ${error ? html`<p class="error" id="start-error">${errorText(error.error || error.message)}</p>` : null}
    <button type="submit" class="primary" id="start-submit" disabled=${busy || !current}>${busy ? "starting…" : "Start"}</button>
  </form>`;
}

function Field({ f, value, set }) {
  const id = `field-${f.name}`;
  let input;
  if (f.type === "boolean") input = html`<input id=${id} name=${f.name} type="checkbox" checked=${!!value} onChange=${(e) => set(e.target.checked)} />`;
  else if (f.type === "enum")
    input = html`<select id=${id} name=${f.name} value=${value} onChange=${(e) => set(e.target.value)}>
      ${f.required ? null : html`<option value="">(default)</option>`}
      ${f.enum.map((o) => html`<option value=${String(o)}>${String(o)}</option>`)}
    </select>`;
  else if (LONG_TEXT.has(f.name) || f.type === "json" || f.type === "object" || f.type === "array")
    input = html`<textarea id=${id} name=${f.name} value=${value} onInput=${(e) => set(e.target.value)}></textarea>`;
  else input = html`<input id=${id} name=${f.name} type=${f.type === "integer" || f.type === "number" ? "number" : "text"} value=${value} onInput=${(e) => set(e.target.value)} />`;
  return html`<label class="field"><span>${f.name}${f.required ? " *" : ""}</span>${input}${f.description ? html`<small>${f.description}</small>` : null}</label>`;
}
