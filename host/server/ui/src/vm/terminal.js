// A terminal of the vm: xterm.js on `WS /vms/{key}/pty`. Binary frames carry the
// terminal's bytes both ways; text frames are JSON control messages. The terminal
// id from the server's first frame is kept in sessionStorage, so a reload of the
// page re-attaches to the same terminal (the server replays its scroll-back).
import { useEffect, useRef, useState } from "preact/hooks";
import { html, useStylesheet } from "./html.js";
import { vmAction } from "./http.js";

const vendor = (name) => new URL(`../../vendor/${name}`, import.meta.url).href;

export function storageKey(vmKey) {
  return `agentvm.pty.${vmKey}`;
}

function wsUrl(vmKey, terminalId, cols, rows) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ cols: String(cols), rows: String(rows) });
  if (terminalId) query.set("terminal", terminalId);
  return `${scheme}//${location.host}/vms/${vmKey}/pty?${query}`;
}

/** A browser cannot put headers on a WebSocket: the token travels as a subprotocol
 * (`agentvm.bearer.<base64url>`), which the server's auth middleware checks and
 * strips; the server answers `agentvm`. */
export function wsProtocols(token) {
  if (!token) return undefined;
  const b64 = btoa(String.fromCharCode(...new TextEncoder().encode(token)));
  const url = b64.replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
  return ["agentvm", `agentvm.bearer.${url}`];
}

function openLink(_event, uri) {
  let url;
  try {
    url = new URL(uri);
  } catch {
    return;
  }
  if (url.protocol === "http:" || url.protocol === "https:") {
    window.open(url.href, "_blank", "noopener,noreferrer");
  }
}

/** props: api, vmKey. */
export default function Terminal({ api, vmKey }) {
  const box = useRef(null);
  const [status, setStatus] = useState("connecting");
  const [generation, setGeneration] = useState(0);

  useEffect(() => {
    let disposed = false;
    let ws = null;
    let term = null;
    let observer = null;
    const cleanup = [];

    (async () => {
      useStylesheet(vendor("xterm.css"));
      const [{ Terminal: XTerm }, { FitAddon }] = await Promise.all([
        import(vendor("xterm.mjs")),
        import(vendor("addon-fit.mjs")),
      ]);
      if (disposed) return;
      term = new XTerm({
        convertEol: false,
        cursorBlink: true,
        scrollback: 5000,
        fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace",
        fontSize: 13,
        // Links in the output (OSC 8) are the sandbox's: http(s) only, in a new tab
        // that gets no handle on this page.
        linkHandler: { activate: openLink, allowNonHttpProtocols: false },
      });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(box.current);
      // For tests and debugging: the live terminal of this page.
      box.current.xterm = term;
      try {
        fit.fit();
      } catch {
        // not laid out yet
      }

      const encoder = new TextEncoder();
      const sendResize = () => {
        if (ws && ws.readyState === WebSocket.OPEN) {
          ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
        }
      };
      const refit = () => {
        try {
          fit.fit();
        } catch {
          return;
        }
      };
      cleanup.push(term.onResize(sendResize));
      cleanup.push(
        term.onData((data) => {
          if (ws && ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
        }),
      );
      cleanup.push(
        term.onBinary((data) => {
          if (!ws || ws.readyState !== WebSocket.OPEN) return;
          const bytes = new Uint8Array(data.length);
          for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
          ws.send(bytes);
        }),
      );
      observer = new ResizeObserver(refit);
      observer.observe(box.current);

      const connect = (terminalId) => {
        let attached = false;
        let ended = false; // an exit or a take-over was reported: say that, not "closed"
        let failure = null;
        const protocols = wsProtocols(api.token);
        ws = new WebSocket(wsUrl(vmKey, terminalId, term.cols, term.rows), protocols);
        ws.binaryType = "arraybuffer";
        ws.onmessage = (ev) => {
          if (disposed) return;
          if (typeof ev.data !== "string") {
            term.write(new Uint8Array(ev.data));
            return;
          }
          let msg;
          try {
            msg = JSON.parse(ev.data);
          } catch {
            return;
          }
          if (msg.type === "attached") {
            attached = true;
            sessionStorage.setItem(storageKey(vmKey), String(msg.terminal));
            box.current.dataset.terminal = String(msg.terminal);
            setStatus("attached");
            refit();
            sendResize();
          } else if (msg.type === "exit") {
            ended = true;
            sessionStorage.removeItem(storageKey(vmKey));
            setStatus(`exited (${msg.exit_code})`);
          } else if (msg.type === "detached") {
            // Another page took this terminal over: leave it to that page.
            ended = true;
            setStatus(`detached: ${msg.reason || "?"}`);
          } else if (msg.type === "error") {
            failure = `error: ${(msg.error && msg.error.message) || "?"}`;
            setStatus(failure);
          }
        };
        ws.onclose = (ev) => {
          if (disposed || ended) return;
          if (!attached && terminalId) {
            // The remembered terminal is gone (exited, vm restarted): a new one.
            sessionStorage.removeItem(storageKey(vmKey));
            connect(null);
            return;
          }
          setStatus(failure || (ev.reason ? `closed: ${ev.reason}` : "closed"));
        };
      };
      // An API call first: it asks for the token when the server wants one (the
      // WebSocket handshake cannot), and says so when the vm does not exist.
      await api.get(`/actors/vm/${vmKey}`);
      if (disposed) return;
      connect(sessionStorage.getItem(storageKey(vmKey)));
      term.focus();
    })().catch((err) => setStatus(`error: ${err.message || err}`));

    return () => {
      disposed = true;
      if (observer) observer.disconnect();
      for (const d of cleanup) d.dispose();
      if (ws) ws.close();
      if (term) term.dispose();
    };
  }, [api, vmKey, generation]);

  // The vm's terminals (at most 8 per vm), to switch between or close.
  const [terminals, setTerminals] = useState([]);
  const current = status === "attached" ? sessionStorage.getItem(storageKey(vmKey)) : null;
  useEffect(() => {
    let live = true;
    vmAction(api, vmKey, "list_terminals")
      .then((list) => live && setTerminals((list || []).filter((t) => t.running)))
      .catch(() => live && setTerminals([]));
    return () => {
      live = false;
    };
  }, [api, vmKey, status]);

  const switchTo = (id) => {
    if (id) sessionStorage.setItem(storageKey(vmKey), id);
    else sessionStorage.removeItem(storageKey(vmKey));
    setStatus("connecting");
    setGeneration((g) => g + 1);
  };
  const close = async () => {
    if (current) await vmAction(api, vmKey, "close_terminal", [current]).catch(() => null);
    switchTo(null);
  };

  return html`
    <div class="vm-terminal-wrap">
      <div class="vm-terminal-head">
        <span class="vm-terminal-status" data-status=${status}>${status}</span>
        ${terminals.map(
          (t, i) => html`<button
            type="button"
            key=${t.id}
            class=${"vm-terminal-tab" + (t.id === current ? " selected" : "")}
            data-terminal=${t.id}
            title=${(t.argv || []).join(" ")}
            onClick=${() => t.id !== current && switchTo(t.id)}
          >
            ${i + 1}
          </button>`,
        )}
        <button type="button" class="vm-terminal-new" onClick=${() => switchTo(null)}>New terminal</button>
        <button type="button" class="vm-terminal-close" disabled=${!current} onClick=${close}>
          Close terminal
        </button>
      </div>
      <div class="vm-terminal" ref=${box}></div>
    </div>
  `;
}
