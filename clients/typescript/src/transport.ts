/** The HTTP layer every typed method goes through: auth, JSON with `$bytes`, typed errors. */

import { errorFromResponse } from "./errors.js";
import { EventStream } from "./events.js";
import { fromWire, toWire } from "./wire.js";

export interface ClientOptions {
  /** the server, e.g. `http://127.0.0.1:6420`; default: the page's origin in a browser */
  baseUrl?: string;
  /** bearer token (`AGENTVM_TOKEN`) */
  token?: string;
  /** a `fetch` to use instead of the global one */
  fetch?: typeof fetch;
  /** extra headers on every request */
  headers?: Record<string, string>;
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | readonly string[] | undefined | null>;
  /** a JSON body (`Uint8Array` values travel as `$bytes`) */
  json?: unknown;
  /** a raw body (`application/octet-stream`) */
  raw?: Uint8Array | Blob | ArrayBuffer;
  signal?: AbortSignal;
}

/** Low-level access: what every typed method goes through. */
export class Transport {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly fetchFn: typeof fetch;
  private readonly headers: Record<string, string>;

  constructor(options: ClientOptions = {}) {
    const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
    const base = options.baseUrl ?? origin;
    if (base === undefined) throw new TypeError("createClient: baseUrl is required outside a browser");
    this.baseUrl = base.replace(/\/+$/, "");
    this.token = options.token || undefined;
    this.fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.headers = { ...(options.headers ?? {}) };
  }

  url(path: string, query?: RequestOptions["query"]): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v === undefined || v === null) continue;
      if (Array.isArray(v)) for (const item of v) params.append(k, String(item));
      else params.append(k, String(v));
    }
    const qs = params.toString();
    return `${this.baseUrl}${path}${qs ? `?${qs}` : ""}`;
  }

  /** The raw `Response` of a request; throws the typed error for a 4xx/5xx. */
  async fetch(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { ...this.headers };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let body: BodyInit | undefined;
    if (opts.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(toWire(opts.json));
    } else if (opts.raw !== undefined) {
      headers["content-type"] = "application/octet-stream";
      body = opts.raw as BodyInit;
    }
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = body;
    if (opts.signal !== undefined) init.signal = opts.signal;
    const resp = await this.fetchFn(this.url(path, opts.query), init);
    if (resp.status >= 400) throw errorFromResponse(resp.status, await resp.text());
    return resp;
  }

  /** A JSON request; the answer with `$bytes` decoded. */
  async json<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const resp = await this.fetch(method, path, opts);
    const text = await resp.text();
    return (text === "" ? null : fromWire(JSON.parse(text))) as T;
  }

  /** Any server-sent events route as an {@link EventStream} (resolves once it answered). */
  async events<P = unknown>(
    path: string,
    opts: { query?: RequestOptions["query"]; signal?: AbortSignal } = {},
  ): Promise<EventStream<P>> {
    const abort = new AbortController();
    opts.signal?.addEventListener("abort", () => abort.abort(), { once: true });
    const resp = await this.fetch("GET", path, { query: opts.query, signal: abort.signal });
    if (resp.body === null) throw new TypeError(`${path}: the events response has no body`);
    return new EventStream<P>(resp.body, abort);
  }

  /** A raw download. */
  async bytes(method: string, path: string, opts: RequestOptions = {}): Promise<Uint8Array> {
    const resp = await this.fetch(method, path, opts);
    return new Uint8Array(await resp.arrayBuffer());
  }
}
