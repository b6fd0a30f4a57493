// The VM pages' calls, on top of the shared client (src/api.js: token, 401 prompt,
// error shape). JSON goes through it; file bytes (streamed reads, uploads,
// downloads) through `fetchBytes`, which sends the same bearer header.
import { encodePath } from "./html.js";

/** A request whose body or answer is raw bytes → the Response (ok), or throws an
 * Error with the server's message. A 401 goes through the shared client once (which
 * asks for the token) and the request is retried with it. */
export async function fetchBytes(api, method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/octet-stream";
    if (api.token) headers.Authorization = `Bearer ${api.token}`;
    const resp = await fetch(path, { method, headers, body });
    if (resp.status === 401 && attempt === 0) {
      await api.get("/actors", { name: "vm" }); // asks for the token, or throws
      continue;
    }
    if (!resp.ok) {
      let err = null;
      try {
        err = (await resp.json()).error;
      } catch {
        err = null;
      }
      const error = new Error((err && err.message) || `HTTP ${resp.status}`);
      error.status = resp.status;
      throw error;
    }
    return resp;
  }
}

/** Call an action of an existing vm actor → its output (never creates the vm). */
export async function vmAction(api, key, name, args = []) {
  const out = await api.post(`/actors/vm/${key}/actions/${name}`, { args }, { query: { create: "false" } });
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
  const response = await fetchBytes(api, "GET", filesUrl(key, path));
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
