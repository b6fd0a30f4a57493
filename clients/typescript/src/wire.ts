/**
 * JSON on the wire: bytes travel as `{"$bytes": "<base64>"}` in both directions,
 * like `orchestrator/wire.py`. `Uint8Array` (and `ArrayBuffer`) values become
 * `$bytes` objects in requests; `$bytes` objects in responses become `Uint8Array`.
 */

export const BYTES_KEY = "$bytes";

/** A JSON value as the client sends and returns it (`Uint8Array` for bytes). */
export type Wire =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | Wire[]
  | { [key: string]: Wire };

const CHUNK = 0x8000;

/** Base64 of `data` (btoa exists in browsers and Node 16+). */
export function toBase64(data: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < data.length; i += CHUNK) {
    binary += String.fromCharCode(...data.subarray(i, i + CHUNK));
  }
  return btoa(binary);
}

/** The bytes of a base64 string; throws a TypeError if it is not base64. */
export function fromBase64(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** `value` with every `Uint8Array`/`ArrayBuffer` replaced by `{"$bytes": base64}`. */
export function toWire(value: unknown): unknown {
  if (value === null || value === undefined) return value ?? null;
  if (value instanceof Uint8Array) return { [BYTES_KEY]: toBase64(value) };
  if (value instanceof ArrayBuffer) return { [BYTES_KEY]: toBase64(new Uint8Array(value)) };
  if (ArrayBuffer.isView(value)) {
    const view = value as ArrayBufferView;
    return { [BYTES_KEY]: toBase64(new Uint8Array(view.buffer, view.byteOffset, view.byteLength)) };
  }
  if (Array.isArray(value)) return value.map(toWire);
  if (typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (v !== undefined) out[k] = toWire(v);
    }
    return out;
  }
  return value;
}

/** The inverse of {@link toWire}: `{"$bytes": base64}` objects become `Uint8Array`. */
export function fromWire(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fromWire);
  if (value !== null && typeof value === "object") {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj);
    if (keys.length === 1 && keys[0] === BYTES_KEY && typeof obj[BYTES_KEY] === "string") {
      return fromBase64(obj[BYTES_KEY]);
    }
    const out: Record<string, unknown> = {};
    for (const k of keys) out[k] = fromWire(obj[k]);
    return out;
  }
  return value;
}

/** A key part percent-encoded as Python's `quote(part, safe="")` does. */
function encodePart(part: string): string {
  return encodeURIComponent(part).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** An actor key as it appears in a path: its parts percent-encoded, joined by `,`. */
export function encodeKey(key: string | readonly string[]): string {
  const parts = typeof key === "string" ? [key] : key;
  const encoded = parts.map(encodePart).join(",");
  if (encoded === "") {
    throw new TypeError("an actor key must have a non-empty part to be used over HTTP");
  }
  return encoded;
}

/** An absolute sandbox path with each segment percent-encoded (`/home/user/a b`). */
export function encodeSandboxPath(path: string): string {
  return path
    .replace(/^\/+/, "")
    .split("/")
    .map(encodePart)
    .join("/");
}
