// The VM pages' calls, on top of the shared client (src/api.js): raw bytes for
// files, JSON for actions, SSE for the watch.
import { encodeKey, encodePath } from "./html.js";

function message(status, body) {
  const err = body && body.error;
  if (err && err.message) return `${err.code || status}: ${err.message}`;
  return `HTTP ${status}`;
}

/** A fetch through the shared client (token, 401 handling); throws on an error status. */
export async function raw(api, path, init = {}) {
  const response = await api.fetch(path, init);
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    const error = new Error(message(response.status, body));
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return response;
}

export async function json(api, method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "content-type": "application/json" };
  }
  const response = await raw(api, path, init);
  return response.status === 204 ? null : response.json();
}

/** Call an action of the vm actor → its output. */
export async function vmAction(api, key, name, args = []) {
  const out = await json(api, "POST", `/actors/vm/${key}/actions/${name}?create=false`, { args });
  return out.output;
}

export function filesUrl(key, path) {
  return `/vms/${key}/files/${encodePath(path)}`;
}

export function lsUrl(key, path) {
  return `/vms/${key}/ls/${encodePath(path)}`;
}

/** At most `limit` bytes of a file (its beginning) → {bytes, truncated}. */
export async function readHead(api, key, path, limit) {
  const response = await raw(api, filesUrl(key, path));
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  let truncated = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    if (size > limit) {
      truncated = true;
      await reader.cancel();
      break;
    }
  }
  const bytes = new Uint8Array(Math.min(size, limit));
  let at = 0;
  for (const c of chunks) {
    const take = Math.min(c.length, bytes.length - at);
    bytes.set(c.subarray(0, take), at);
    at += take;
    if (at >= bytes.length) break;
  }
  return { bytes, truncated };
}

export { encodeKey };
