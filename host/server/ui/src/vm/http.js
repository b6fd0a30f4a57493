// The VM pages' calls, on top of the shared client (src/api.js: token, 401 prompt,
// error shape): raw bytes for files, JSON for actions.
import { encodePath } from "./html.js";

/** A JSON call through the shared client → the parsed answer. */
export async function json(api, method, path, body) {
  const resp = await api.raw(method, path, body === undefined ? {} : { body });
  return resp.status === 204 ? null : resp.json();
}

/** A request whose body is not JSON (an upload): the shared client sends JSON only,
 * so this one adds the same bearer header; a 401 goes through the client once (which
 * asks for the token) and is retried. */
export async function rawBody(api, method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = { "Content-Type": "application/octet-stream" };
    if (api.token) headers.Authorization = `Bearer ${api.token}`;
    const resp = await fetch(path, { method, headers, body });
    if (resp.status === 401 && attempt === 0) {
      await api.raw("GET", "/actors", { query: { name: "vm" } }); // prompts for the token
      continue;
    }
    if (!resp.ok) {
      let err = null;
      try {
        err = (await resp.json()).error;
      } catch {
        err = null;
      }
      throw new Error((err && err.message) || `HTTP ${resp.status}`);
    }
    return resp;
  }
}

/** Call an action of an existing vm actor → its output (never creates the vm). */
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

/** At most `limit` bytes of a file (its beginning) → {bytes, truncated}: the rest
 * of a large file is never read into the page. */
export async function readHead(api, key, path, limit) {
  const response = await api.raw("GET", filesUrl(key, path));
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
