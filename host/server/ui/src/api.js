// The console's one API client, shared by every page (`api` in a page's props).
//
// Same-origin calls with the token as `Authorization: Bearer` (never a cookie, so
// no other site can make the browser use it). The token lives in localStorage;
// when a call answers 401 the console asks for it (app.js shows the dialog) and the
// call is retried. SSE streams are read with fetch (EventSource cannot send an
// Authorization header) and close when the page unmounts.

const TOKEN_KEY = "agentvm.token";

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.error = error || { group: "http", code: String(status), message: `HTTP ${status}`, metadata: {} };
  }
}

// An actor key as a path segment: an array of parts is percent-encoded part by
// part and joined by ","; a string is taken as that API form already (what a
// page's params.key holds).
export function keyPath(key) {
  if (!Array.isArray(key)) return String(key);
  return key.map((p) => encodeURIComponent(String(p))).join(",");
}

export function createApi({ base = "", onUnauthorized = null } = {}) {
  let token = localStorage.getItem(TOKEN_KEY) || "";
  let asking = null; // one pending token prompt shared by every call that got 401

  function headers(extra = {}) {
    const h = { ...extra };
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  async function askToken() {
    if (!onUnauthorized) throw new ApiError(401, null);
    if (!asking) {
      asking = Promise.resolve(onUnauthorized()).finally(() => {
        asking = null;
      });
    }
    const given = await asking;
    if (!given) throw new ApiError(401, { group: "auth", code: "unauthorized", message: "no token given", metadata: {} });
    setToken(given);
  }

  function setToken(value) {
    token = value || "";
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  }

  async function raw(method, path, { body, query, signal, accept } = {}) {
    let url = base + path;
    if (query) {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") qs.append(k, v);
      const s = qs.toString();
      if (s) url += (url.includes("?") ? "&" : "?") + s;
    }
    for (let attempt = 0; ; attempt++) {
      const init = { method, headers: headers(accept ? { Accept: accept } : {}), signal };
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const resp = await fetch(url, init);
      if (resp.status === 401 && attempt < 3) {
        await askToken();
        continue;
      }
      if (!resp.ok) {
        let err = null;
        try {
          err = (await resp.json()).error;
        } catch (_) {
          /* not our error shape */
        }
        throw new ApiError(resp.status, err);
      }
      return resp;
    }
  }

  async function json(method, path, opts) {
    const resp = await raw(method, path, opts);
    return resp.status === 204 ? null : resp.json();
  }

  // Server-sent events at `path`: onEvent(name, data) per event (data parsed as
  // JSON when it is). Reconnects after a dropped stream (waitForActor: also after
  // a 404, for an actor named before it is created); returns close().
  function events(path, onEvent, { query, onOpen, onError, waitForActor = false } = {}) {
    const ctrl = new AbortController();
    let closed = false;
    (async () => {
      let delay = 500;
      while (!closed) {
        try {
          const resp = await raw("GET", path, { query, signal: ctrl.signal, accept: "text/event-stream" });
          if (onOpen) onOpen();
          delay = 500;
          const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value;
            let cut;
            while ((cut = buf.indexOf("\n\n")) >= 0) {
              const block = buf.slice(0, cut);
              buf = buf.slice(cut + 2);
              let name = "message";
              const data = [];
              for (const line of block.split("\n")) {
                if (line.startsWith("event:")) name = line.slice(6).trim();
                else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
              }
              if (!data.length) continue; // a comment (": ping")
              const text = data.join("\n");
              let parsed = text;
              try {
                parsed = JSON.parse(text);
              } catch (_) {
                /* plain text data */
              }
              onEvent(name, parsed);
            }
          }
        } catch (e) {
          if (closed) return;
          if (onError) onError(e);
          // A caller mistake: do not hammer (but an actor named before it exists is awaited).
          const awaited = e instanceof ApiError && e.status === 404 && waitForActor;
          if (e instanceof ApiError && e.status !== 429 && e.status < 500 && !awaited) return;
        }
        if (closed) return;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 10000);
      }
    })();
    return () => {
      closed = true;
      ctrl.abort();
    };
  }

  return {
    keyPath,
    get token() {
      return token;
    },
    setToken,
    raw,
    get: (path, query, opts = {}) => json("GET", path, { ...opts, query }),
    post: (path, body, opts = {}) => json("POST", path, { ...opts, body: body === undefined ? {} : body }),
    put: (path, body, opts = {}) => json("PUT", path, { ...opts, body }),
    del: (path, opts = {}) => json("DELETE", path, opts),
    text: async (path, query, opts = {}) => (await raw("GET", path, { ...opts, query })).text(),
    events,
    // Convenience calls the pages share.
    listRuns: (query) => json("GET", "/runs", { query }),
    getRun: (name, key, id) => json("GET", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/runs/${id}`),
    cancelRun: (name, key, id) => json("POST", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/runs/${id}/cancel`, { body: {} }),
    retryRun: (name, key, id) => json("POST", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/runs/${id}/retry`, { body: {} }),
    send: (name, key, queue, body, extra = {}) =>
      json("POST", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/queues/${encodeURIComponent(queue)}`, { body: { body, ...extra } }),
    call: (name, key, action, args = []) =>
      json("POST", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/actions/${encodeURIComponent(action)}`, { body: { args } }),
  };
}
