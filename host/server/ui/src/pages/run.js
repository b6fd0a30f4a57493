// Run: the step timeline, the agent transcript live, the patch, token usage.
//
// Live: the orchestrator's run_* broadcasts (SSE .../events) trigger a re-read of
// the run; once the run names its vm (meta.vm) that vm's session_event broadcasts
// feed the transcript, after a backfill of the events stored before we subscribed
// (the same sequence as `agentvm watch`).
import { useEffect, useRef, useState } from "preact/hooks";
import { html } from "../html.js";
import { StatusBadge } from "../components/badge.js";
import { DiffView } from "../components/diff.js";
import { JsonView } from "../components/json.js";
import { Timeline } from "../components/timeline.js";
import { Transcript, applyEvent, emptyTranscript } from "../components/transcript.js";
import { errorText, fmtAge, fmtDuration, runDuration } from "../components/util.js";

const RUN_EVENTS = "run_started,run_step,run_meta,run_completed,run_failed,run_cancelled";
const FINISHED = new Set(["completed", "failed", "cancelled"]);

export default function RunPage({ params, api }) {
  const { name, key } = params;
  const id = Number(params.id);
  const base = `/actors/${encodeURIComponent(name)}/${key}`;
  const [run, setRun] = useState(null);
  const [error, setError] = useState(null);
  const [tx, setTx] = useState(emptyTranscript());
  const [vms, setVms] = useState([]); // the run's vm keys (meta.vm; a DAG run's meta.vms)
  const [patch, setPatch] = useState(null);
  const [, setNow] = useState(0);
  const txRef = useRef(tx);
  txRef.current = tx;

  const noteVms = (meta) => {
    const found = vmsOf(meta);
    if (found.length) setVms((old) => (found.every((k) => old.includes(k)) ? old : [...new Set([...old, ...found])]));
  };

  const load = async () => {
    try {
      const r = await api.getRun(name, key, id);
      setRun(r);
      setError(null);
      noteVms(r.meta);
      return r;
    } catch (e) {
      setError(e);
      return null;
    }
  };

  // The run itself: read once, then again on each of its broadcasts.
  useEffect(() => {
    let pending = null;
    const reload = () => {
      if (!pending) pending = setTimeout(() => ((pending = null), load()), 100);
    };
    const close = api.events(
      `${base}/events`,
      (event, data) => {
        if (data && data.run_id === id) {
          if (event === "run_meta") noteVms(data.meta);
          reload();
        }
      },
      { query: { events: RUN_EVENTS, create: "false" }, onOpen: reload }
    );
    load();
    const tick = setInterval(() => setNow((n) => n + 1), 1000);
    return () => {
      close();
      clearInterval(tick);
      clearTimeout(pending);
    };
  }, [name, key, id]);

  const finished = run && FINISHED.has(run.status);

  // Each vm's session events, while the run goes on; a last backfill at its end.
  useEffect(() => {
    if (!vms.length) return;
    const closers = vms.map((vm) => followVm(api, vm, finished, setTx, txRef));
    return () => closers.forEach((c) => c && c());
  }, [vms.join("\n"), finished]);

  useEffect(() => {
    if (run && run.status === "completed" && run.result && typeof run.result.patch === "string" && run.result.patch) {
      api.text(`${base}/runs/${id}/patch`).then(setPatch, () => setPatch(null));
    }
  }, [run && run.status]);

  const act = async (what) => {
    try {
      what === "cancel" ? await api.cancelRun(name, key, id) : await api.retryRun(name, key, id);
      load();
    } catch (e) {
      setError(e);
    }
  };

  const download = () => {
    const url = URL.createObjectURL(new Blob([patch], { type: "text/x-patch" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = `run-${id}.patch`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  if (!run) {
    return html`<section><h1>Run #${id}</h1>${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : html`<p class="muted">loading…</p>`}</section>`;
  }
  const usage = (run.result && run.result.usage) || tx.usage;
  const result = run.result && typeof run.result === "object" && !Array.isArray(run.result)
    ? Object.fromEntries(Object.entries(run.result).filter(([k]) => k !== "patch" && k !== "diff"))
    : run.result;
  return html`<section id="run-page" data-status=${run.status}>
    <div class="row">
      <h1>Run #${run.run_id}</h1>
      <${StatusBadge} status=${run.status} />
      <span class="muted">${run.name} · ${run.key.join(",")} · ${run.queue}</span>
      <span class="spacer"></span>
      ${!finished ? html`<button class="danger" id="run-cancel" onClick=${() => act("cancel")}>cancel</button>` : null}
      ${run.status === "failed" || run.status === "cancelled" ? html`<button id="run-retry" onClick=${() => act("retry")}>retry</button>` : null}
    </div>
    <p class="muted">created ${fmtAge(run.created_at)} · duration ${fmtDuration(runDuration(run))}${vms.map((vm) => html` · vm <a href=${"#/vms/" + encodeURIComponent(api.keyPath([vm]))}>${vm}</a>`)}</p>
    ${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : null}
    ${run.error ? html`<div class="card error" id="run-error">${errorText(run.error)}</div>` : null}
    <div class="card"><h2 style="margin-top:0">Steps</h2>
      <${Timeline} entries=${run.history} start=${run.started_at} end=${run.finished_at} /></div>
    ${usage ? html`<div class="card" id="usage"><strong>Tokens</strong> ${Object.entries(usage).filter(([, v]) => typeof v === "number").map(([k, v]) => html`<span class="badge" style="margin-left:6px">${k.replace(/_/g, " ")}: ${v}</span>`)}</div>` : null}
    ${patch ? html`<details class="card" id="patch"><summary><strong>Patch</strong> <span class="muted">${patch.split("\n").length} lines</span>
        <button id="patch-download" style="margin-left:8px" onClick=${(e) => (e.preventDefault(), download())}>download</button></summary>
        <${DiffView} text=${patch} /></details>` : null}
    <div class="card"><h2 style="margin-top:0">Agent transcript</h2>
      ${!vms.length && finished
        ? html`<p class="muted">this run has no vm</p>`
        : finished && !tx.items.length
          ? html`<p class="muted">the agent's events went with the run's vm (destroyed when the run ended; <code>keep_vm</code> keeps it)</p>`
          : html`<${Transcript} state=${tx} />`}</div>
    <div class="grid2">
      <div class="card"><h2 style="margin-top:0">Input</h2><${JsonView} value=${run.input} /></div>
      <div class="card"><h2 style="margin-top:0">Result</h2><${JsonView} value=${result} /></div>
    </div>
  </section>`;
}

// The vm keys a run's meta names: meta.vm (the built-in orchestrators) and the
// values of meta.vms (a DAG workflow run: {step label: vm key}).
function vmsOf(meta) {
  if (!meta || typeof meta !== "object") return [];
  const out = [];
  if (typeof meta.vm === "string") out.push(meta.vm);
  if (meta.vms && typeof meta.vms === "object") for (const v of Object.values(meta.vms)) if (typeof v === "string") out.push(v);
  return out;
}

// Feed one vm's session events into the transcript: a backfill of the stored
// ones, then its live broadcasts (none once the run is finished). Returns close().
function followVm(api, vm, finished, setTx, txRef) {
  const vmPath = `/actors/vm/${api.keyPath([vm])}`;
  const backfill = async () => {
    const action = async (action, args) =>
      (await api.post(`${vmPath}/actions/${action}`, { args }, { query: { create: "false" } })).output;
    try {
      const listed = (await action("list_sessions", [])) || [];
      const sids = new Set([...listed.map((x) => x && x.session_id), ...Object.keys(txRef.current.seen)]);
      for (const sid of sids) {
        if (typeof sid !== "string" || !sid) continue;
        for (let page = 0; page < 10; page++) {
          const since = txRef.current.seen[sid] || 0;
          const evs = (await action("get_session_events", [sid, { since, limit: 1000 }])) || [];
          for (const ev of evs) txRef.current = applyEvent(txRef.current, ev);
          setTx(txRef.current);
          if (!evs.length || (txRef.current.seen[sid] || 0) === since) break;
        }
      }
    } catch (_) {
      /* the vm is gone (destroyed at the run's end) or is another vm's session: what we saw is what there is */
    }
  };
  if (finished) {
    backfill();
    return null;
  }
  return api.events(
    `${vmPath}/events`,
    (event, data) => {
      if (event !== "session_event") return;
      txRef.current = applyEvent(txRef.current, data);
      setTx(txRef.current);
    },
    { query: { events: "session_event", create: "false" }, waitForActor: true, onOpen: backfill }
  );
}
