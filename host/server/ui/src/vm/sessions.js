// The vm's agent sessions (`list_sessions`) and, per session, its stored events
// (`get_session_events`): the transcript as the agent produced it, shown as text.
import { useEffect, useState } from "preact/hooks";
import { html } from "./html.js";
import { vmAction } from "./http.js";

function summary(event) {
  const d = event.data || {};
  if (typeof d.text === "string") return d.text;
  if (d.update && typeof d.update === "object") {
    const u = d.update;
    const content = u.content && typeof u.content === "object" ? u.content.text : null;
    return [u.sessionUpdate, u.title, content].filter((x) => typeof x === "string").join(" ");
  }
  return JSON.stringify(d).slice(0, 400);
}

function Events({ api, vmKey, sessionId }) {
  const [events, setEvents] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    vmAction(api, vmKey, "get_session_events", [sessionId, { limit: 500 }])
      .then((out) => live && setEvents(out || []))
      .catch((err) => live && setError(String(err.message || err)));
    return () => {
      live = false;
    };
  }, [api, vmKey, sessionId]);
  if (error) return html`<div class="vm-error">${error}</div>`;
  if (!events) return html`<div class="vm-note">loading…</div>`;
  if (events.length === 0) return html`<div class="vm-note">no events</div>`;
  return html`<ol class="vm-session-events">
    ${events.map(
      (e) => html`<li key=${e.seq}>
        <span class="vm-muted">#${e.seq} ${e.kind}</span> <span>${summary(e)}</span>
      </li>`,
    )}
  </ol>`;
}

/** props: api, vmKey. */
export default function Sessions({ api, vmKey }) {
  const [sessions, setSessions] = useState(null);
  const [error, setError] = useState(null);
  const [openId, setOpenId] = useState(null);
  const [n, setN] = useState(0);

  useEffect(() => {
    let live = true;
    vmAction(api, vmKey, "list_sessions")
      .then((out) => live && (setSessions(out || []), setError(null)))
      .catch((err) => live && setError(String(err.message || err)));
    return () => {
      live = false;
    };
  }, [api, vmKey, n]);

  return html`
    <div class="vm-sessions">
      <div class="vm-section-head">
        <h3>Sessions</h3>
        <button type="button" onClick=${() => setN((x) => x + 1)}>Refresh</button>
      </div>
      ${error && html`<div class="vm-error">${error}</div>`}
      ${sessions && sessions.length === 0 && html`<div class="vm-note">no open sessions</div>`}
      ${sessions &&
      sessions.length > 0 &&
      html`<ul class="vm-session-list">
        ${sessions.map(
          (s) => html`<li key=${s.session_id} data-session=${s.session_id}>
            <button
              type="button"
              class="vm-link"
              onClick=${() => setOpenId(openId === s.session_id ? null : s.session_id)}
            >
              ${s.session_id}
            </button>
            <span class="vm-muted"> ${s.agent_type || ""} ${s.status || ""}</span>
            ${openId === s.session_id &&
            html`<${Events} api=${api} vmKey=${vmKey} sessionId=${s.session_id} />`}
          </li>`,
        )}
      </ul>`}
    </div>
  `;
}
