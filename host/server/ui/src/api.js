// The console's one API client, shared by every page (`api` in a page's props): a
// thin layer over the TypeScript client (clients/typescript, vendored as
// `agentvm-client`), which also stays reachable as `api.client`.
//
// Same-origin calls with the token as `Authorization: Bearer` (never a cookie, so
// no other site can make the browser use it). The token lives in localStorage;
// the fetch given to the TS client adds it, and when a call answers 401 the
// console asks for it (app.js shows the dialog) and the call is retried. SSE
// streams (the client reads them with fetch: EventSource cannot send the header)
// reconnect after a drop and close when the page unmounts.
import { AgentVMError, createClient, encodeKey } from "agentvm-client";

const TOKEN_KEY = "agentvm.token";

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.error = error || { group: "http", code: String(status), message: `HTTP ${status}`, metadata: {} };
  }
}

// An actor key as a path segment: an array of parts is percent-encoded part by
// part and joined by "," (the client's encodeKey); a string is taken as that API
// form already (what a page's params.key holds).
export function keyPath(key) {
  return Array.isArray(key) ? encodeKey(key) : String(key);
}

// The TS client's typed error as our {status, error: {group, code, message, metadata}}.
function asApiError(e) {
  if (e instanceof ApiError) return e;
  if (e instanceof AgentVMError) {
    return new ApiError(e.status, { group: e.group, code: e.code, message: e.message, metadata: e.metadata });
  }
  return e;
}

async function wrap(promise) {
  try {
    return await promise;
  } catch (e) {
    throw asApiError(e);
  }
}

export function createApi({ base, onUnauthorized = null } = {}) {
  let token = localStorage.getItem(TOKEN_KEY) || "";
  let asking = null; // one pending token prompt shared by every call that got 401

  function setToken(value) {
    token = value || "";
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  }

  async function askToken() {
    if (!onUnauthorized) return false;
    if (!asking) {
      asking = Promise.resolve(onUnauthorized()).finally(() => {
        asking = null;
      });
    }
    const given = await asking;
    if (!given) return false;
    setToken(given);
    return true;
  }

  // Every request of the TS client goes through here: the current token, and a
  // retry after the user gave one for a 401.
  async function authFetch(input, init = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = new Headers(init.headers || {});
      if (token) headers.set("authorization", `Bearer ${token}`);
      else headers.delete("authorization");
      const resp = await fetch(input, { ...init, headers });
      if (resp.status !== 401 || attempt >= 3 || !(await askToken())) return resp;
    }
  }

  const client = createClient({ baseUrl: base || location.origin, fetch: authFetch });
  const request = (method, path, opts) => wrap(client.request(method, path, opts));

  // Server-sent events at `path`: onEvent(name, payload) per event. Reconnects
  // after a dropped stream (waitForActor: also after a 404, for an actor named
  // before it is created); returns close().
  function events(path, onEvent, { query, onOpen, onError, waitForActor = false } = {}) {
    const ctrl = new AbortController();
    let closed = false;
    (async () => {
      let delay = 500;
      while (!closed) {
        try {
          const stream = await wrap(client.stream(path, { query, signal: ctrl.signal }));
          if (closed) return stream.close();
          if (onOpen) onOpen();
          delay = 500;
          for await (const { event, payload } of stream) {
            if (closed) break;
            onEvent(event, payload);
          }
        } catch (raw) {
          if (closed) return;
          const e = asApiError(raw);
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

  const handle = (name, key) => client.actor(name).get(Array.isArray(key) ? key : decodeKey(key));

  return {
    client,
    keyPath,
    get token() {
      return token;
    },
    setToken,
    get: (path, query, opts = {}) => request("GET", path, { ...opts, query }),
    post: (path, body, opts = {}) => request("POST", path, { ...opts, json: body === undefined ? {} : body }),
    put: (path, body, opts = {}) => request("PUT", path, { ...opts, json: body }),
    del: (path, opts = {}) => request("DELETE", path, opts),
    text: async (path, query, opts = {}) => (await wrap(client.transport.fetch("GET", path, { ...opts, query }))).text(),
    events,
    // Convenience calls the pages share.
    listRuns: (query) => wrap(client.listRuns(query)),
    getRun: (name, key, id) => wrap(handle(name, key).run(id)),
    cancelRun: (name, key, id) => wrap(handle(name, key).cancelRun(id)),
    retryRun: (name, key, id) => wrap(handle(name, key).retryRun(id)),
    send: (name, key, queue, body, extra = {}) =>
      request("POST", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/queues/${encodeURIComponent(queue)}`, {
        json: { body, ...extra },
      }),
    call: (name, key, action, args = []) =>
      request("POST", `/actors/${encodeURIComponent(name)}/${keyPath(key)}/actions/${encodeURIComponent(action)}`, {
        json: { args },
      }),
  };
}

// "a%2Cb,c" → ["a,b", "c"] (a page's params.key back into parts).
function decodeKey(key) {
  return String(key)
    .split(",")
    .map((p) => decodeURIComponent(p));
}
