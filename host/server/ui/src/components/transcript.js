// An agent transcript from a vm's session events (docs/sessions.md, "Events"):
// prompts, messages, thoughts, tool calls with their input and output, diffs
// rendered as diffs. Everything here may come from sandbox code: text only.
import { html } from "../html.js";
import { DiffView, unifiedDiff } from "./diff.js";
import { JsonView } from "./json.js";

const MAX_ITEMS = 2000;
const MAX_TEXT = 200000;

export function emptyTranscript() {
  return { items: [], seen: {}, tools: {}, usage: null };
}

// A new transcript state with `ev` applied (events already applied are skipped:
// the backfill and the live stream overlap).
export function applyEvent(state, ev) {
  if (!ev || typeof ev !== "object") return state;
  const sid = String(ev.session_id || "");
  if (Number.isInteger(ev.seq)) {
    if (ev.seq <= (state.seen[sid] || 0)) return state;
  }
  const s = { items: state.items.slice(), seen: { ...state.seen }, tools: { ...state.tools }, usage: state.usage };
  if (Number.isInteger(ev.seq)) s.seen[sid] = ev.seq;
  const data = ev.data && typeof ev.data === "object" ? ev.data : {};
  const push = (item) => {
    if (s.items.length < MAX_ITEMS) s.items.push(item);
  };
  if (ev.kind === "update") {
    const kind = data.sessionUpdate;
    if (kind === "agent_message_chunk" || kind === "agent_thought_chunk" || kind === "user_message_chunk") {
      const text = data.content && typeof data.content.text === "string" ? data.content.text : "";
      const role = kind === "agent_message_chunk" ? "assistant" : kind === "agent_thought_chunk" ? "thought" : "user";
      const last = s.items[s.items.length - 1];
      if (last && last.type === "message" && last.role === role && last.sid === sid) {
        if (last.text.length < MAX_TEXT) s.items[s.items.length - 1] = { ...last, text: last.text + text };
      } else push({ type: "message", role, text, sid });
    } else if (kind === "tool_call" || kind === "tool_call_update") {
      const id = String(data.toolCallId || "");
      const at = s.tools[id];
      const old = at !== undefined ? s.items[at] : { type: "tool", id, title: id, status: "pending", content: [] };
      const next = { ...old };
      if (data.title) next.title = data.title;
      if (data.kind) next.kind = data.kind;
      if (data.status) next.status = data.status;
      if (data.rawInput !== undefined) next.input = data.rawInput;
      if (data.rawOutput !== undefined) next.output = data.rawOutput;
      if (Array.isArray(data.content)) next.content = data.content;
      if (at !== undefined) s.items[at] = next;
      else if (s.items.length < MAX_ITEMS) {
        s.tools[id] = s.items.length;
        s.items.push(next);
      }
    } else if (kind === "plan" && Array.isArray(data.entries)) {
      push({ type: "plan", entries: data.entries });
    }
  } else if (ev.kind === "prompt") {
    push({ type: "message", role: "user", text: String(data.text || ""), sid });
  } else if (ev.kind === "prompt_end") {
    if (data.usage && typeof data.usage === "object") {
      const u = { ...(s.usage || {}) };
      for (const [k, v] of Object.entries(data.usage)) if (typeof v === "number") u[k] = (u[k] || 0) + v;
      s.usage = u;
    }
    push({ type: "note", text: `prompt ended: ${data.stop_reason || "?"}`, error: data.error || null });
  } else if (ev.kind === "agent_exit") {
    push({ type: "note", text: `agent exited (${data.exit_code}): ${String(data.stderr_tail || "").slice(-2000)}`, error: true });
  } else if (ev.kind) {
    push({ type: "note", text: `${ev.kind}${Object.keys(data).length ? " " + JSON.stringify(data).slice(0, 300) : ""}` });
  }
  return s;
}

export function Transcript({ state }) {
  if (!state.items.length) return html`<p class="muted">no agent events yet</p>`;
  return html`<div class="tx" data-testid="transcript">${state.items.map((it) => item(it))}</div>`;
}

function item(it) {
  if (it.type === "message") {
    const who = { assistant: "agent", user: "prompt", thought: "thinking" }[it.role] || it.role;
    return html`<div class=${"tx-item " + it.role} data-kind="message">
      <div class="who">${who}</div><div style="white-space:pre-wrap">${it.text}</div></div>`;
  }
  if (it.type === "tool") {
    const diffs = (it.content || []).filter((c) => c && c.type === "diff");
    const texts = (it.content || []).filter((c) => c && c.type === "content" && c.content && typeof c.content.text === "string");
    return html`<div class=${"tx-item tool" + (it.status === "failed" ? " error" : "")} data-kind="tool" data-status=${it.status}>
      <div class="who">tool · ${it.kind || "other"} · ${it.status}</div>
      <div><strong>${it.title}</strong></div>
      ${it.input !== undefined ? html`<details><summary>input</summary><${JsonView} value=${it.input} open=${1} /></details>` : null}
      ${diffs.map((d) => html`<${DiffView} text=${unifiedDiff(String(d.path || "?").replace(/^\//, ""), d.oldText || "", d.newText || "")} />`)}
      ${texts.map((c) => html`<details open=${it.status === "failed"}><summary>output</summary><pre>${c.content.text.slice(0, 20000)}</pre></details>`)}
      ${it.output !== undefined && !texts.length ? html`<details><summary>output</summary><${JsonView} value=${it.output} open=${1} /></details>` : null}
    </div>`;
  }
  if (it.type === "plan") {
    return html`<div class="tx-item"><div class="who">plan</div><ul>${it.entries.map((e) => html`<li>${String(e.content || "")} <span class="muted">${String(e.status || "")}</span></li>`)}</ul></div>`;
  }
  return html`<div class=${"tx-item" + (it.error ? " error" : "")} data-kind="note"><span class="muted">${it.text}</span></div>`;
}
