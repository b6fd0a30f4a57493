/**
 * The agentvm HTTP client for TypeScript (Node 18+ and browsers).
 *
 *   const client = createClient({ baseUrl: "http://127.0.0.1:6420", token });
 *   const counter = client.actors.counter.getOrCreate(["main"]);
 *   await counter.call("increment", 5);
 *   const r = await client.actors.automator.getOrCreate("main").send("fixBug", body, { wait: true });
 *
 * Types of every route come from the server's `/openapi.json` (`schema.d.ts`,
 * generated); this layer adds actor keys, `$bytes`, waiting sends and SSE events.
 */

import { errorFromResponse, RunFailed } from "./errors.js";
import { EventStream } from "./events.js";
import type { components, operations, paths } from "./schema.js";
import { encodeKey, encodeSandboxPath, fromWire, toWire } from "./wire.js";

export * from "./errors.js";
export * from "./events.js";
export type { components, operations, paths } from "./schema.js";
export { BYTES_KEY, encodeKey, fromBase64, fromWire, toBase64, toWire } from "./wire.js";
export type { Wire } from "./wire.js";

type Schemas = components["schemas"];
/** The JSON body of an operation's 200/201/202 response, by operationId. */
export type Ok<Op extends keyof operations> = operations[Op]["responses"] extends infer R
  ? R extends { 200: { content: { "application/json": infer T } } }
    ? T
    : R extends { 201: { content: { "application/json": infer T } } }
      ? T
      : R extends { 202: { content: { "application/json": infer T } } }
        ? T
        : unknown
  : unknown;

export type ActorRef = Schemas["ActorRef"];
export type ActorInfo = Schemas["ActorInfo"];
export type RunInfo = Schemas["RunInfo"];
export type RunDetail = Schemas["RunDetail"];
export type WorkflowHistory = Schemas["WorkflowHistory"];
export type QueuedMessage = Schemas["QueuedMessage"];
export type ActorSummary = Schemas["ActorSummary"];
export type Health = Schemas["Health"];
export type FileListing = Schemas["FileListing"];
export type FileWritten = Schemas["FileWritten"];
export type RunStatus = "queued" | "running" | "completed" | "failed" | "cancelled";
export type ErrorDetail = Schemas["ErrorDetail"];

/** An actor key: a string or a list of strings (`"main"` is `["main"]`). */
export type Key = string | readonly string[];

// --- optional typing of a registry, in the spirit of createClient<typeof registry>() ---

/** What a client may know about an actor type; every part optional. */
export interface ActorShape {
  /** action name → its signature (without the context argument) */
  actions?: Record<string, (...args: any[]) => unknown>;
  /** queue name → `{ body, response }` of its messages */
  queues?: Record<string, { body?: unknown; response?: unknown }>;
  state?: unknown;
  /** broadcast name → payload */
  events?: Record<string, unknown>;
}

/** actor type name → its shape. Untyped (the default): any name, any action. */
export type RegistryShape = Record<string, ActorShape>;

type ActionsOf<A extends ActorShape> =
  A["actions"] extends Record<string, (...args: any[]) => unknown>
    ? A["actions"]
    : Record<string, (...args: any[]) => unknown>;
type QueuesOf<A extends ActorShape> =
  A["queues"] extends Record<string, { body?: unknown; response?: unknown }>
    ? A["queues"]
    : Record<string, { body?: unknown; response?: unknown }>;
type EventsOf<A extends ActorShape> =
  A["events"] extends Record<string, unknown> ? A["events"] : Record<string, unknown>;
type Awaited2<T> = T extends PromiseLike<infer U> ? U : T;

/** The result of a send: `queued`, or with `wait` how the message ended. */
export interface SendResult<R = unknown> {
  status: "queued" | "completed" | "failed" | "cancelled" | "timed_out";
  /** the message id; on a run queue also the run id */
  message_id: number | null;
  /** the consumer's response (`completed`) */
  response?: R;
  /** why the run failed (`failed`) */
  error?: ErrorDetail | null;
}

export interface SendOptions {
  /** wait for the consumer to complete the message (or the run to end) */
  wait?: boolean;
  /** with `wait`: give up after this long (status `timed_out`; the message stays queued) */
  timeoutMs?: number;
  /** with `wait`: throw `RunFailed` for a `failed` run instead of returning it */
  raiseOnFailure?: boolean;
}

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

// --- actors ---------------------------------------------------------------------------

export interface HandleOptions {
  /** false: never create the actor (calls answer 404 `actor/not_found` instead) */
  create?: boolean;
  /** create input, sent once before the first call (get-or-create) */
  input?: unknown;
}

/** One actor, addressed by type name and key. Nothing is sent until a method is called. */
export class ActorHandle<A extends ActorShape = ActorShape> {
  readonly path: string;
  private created: Promise<ActorRef> | undefined;

  constructor(
    protected readonly t: Transport,
    readonly name: string,
    readonly key: readonly string[],
    private readonly options: HandleOptions = {},
  ) {
    this.path = `/actors/${encodeURIComponent(name)}/${encodeKey(key)}`;
  }

  private get query(): Record<string, string> {
    return this.options.create === false ? { create: "false" } : {};
  }

  /** With an `input`, get-or-create once with it before the first call. */
  private async ready(): Promise<void> {
    if (this.options.input !== undefined && this.options.create !== false) {
      this.created ??= this.resolve();
    }
    if (this.created) await this.created;
  }

  /** Get-or-create (`POST /actors/{name}/{key}`) → `{actor_id, created}`. */
  resolve(): Promise<ActorRef> {
    return this.t.json<Ok<"get_or_create">>("POST", this.path, {
      json: { input: this.options.input ?? null },
    });
  }

  /** This actor's description (404 if it does not exist; never creates). */
  info(): Promise<ActorInfo> {
    return this.t.json<Ok<"get_actor">>("GET", this.path);
  }

  /** Call an action with positional arguments → its output. */
  async call<K extends keyof ActionsOf<A> & string>(
    action: K,
    ...args: Parameters<ActionsOf<A>[K]>
  ): Promise<Awaited2<ReturnType<ActionsOf<A>[K]>>> {
    await this.ready();
    const data = await this.t.json<{ output: unknown }>(
      "POST",
      `${this.path}/actions/${encodeURIComponent(action)}`,
      { json: { args }, query: this.query },
    );
    return data.output as Awaited2<ReturnType<ActionsOf<A>[K]>>;
  }

  /** Actions as methods: `handle.actions.increment(5)`. */
  get actions(): {
    [K in keyof ActionsOf<A> & string]: (
      ...args: Parameters<ActionsOf<A>[K]>
    ) => Promise<Awaited2<ReturnType<ActionsOf<A>[K]>>>;
  } {
    return new Proxy({} as never, {
      get: (_, action) =>
        typeof action === "string"
          ? (...args: unknown[]) => (this.call as (a: string, ...x: unknown[]) => unknown)(action, ...args)
          : undefined,
    });
  }

  /** Send a message to a queue; with `wait`, how it ended (a run's `failed`/`cancelled` too). */
  async send<Q extends keyof QueuesOf<A> & string>(
    queue: Q,
    body?: QueuesOf<A>[Q]["body"],
    options: SendOptions = {},
  ): Promise<SendResult<QueuesOf<A>[Q]["response"]>> {
    await this.ready();
    const payload: Record<string, unknown> = { body: body ?? null, wait: options.wait ?? false };
    if (options.wait && options.timeoutMs !== undefined) payload.timeout_ms = Math.max(0, Math.round(options.timeoutMs));
    const result = await this.t.json<SendResult<QueuesOf<A>[Q]["response"]>>(
      "POST",
      `${this.path}/queues/${encodeURIComponent(queue)}`,
      { json: payload, query: this.query },
    );
    if (options.raiseOnFailure && result.status === "failed" && result.error) {
      throw new RunFailed(result.error, result.message_id);
    }
    return result;
  }

  /** The last committed state (404 if the actor does not exist). */
  async state(): Promise<A["state"] extends undefined ? unknown : A["state"]> {
    const data = await this.t.json<{ state: unknown }>("GET", `${this.path}/state`);
    return data.state as A["state"] extends undefined ? unknown : A["state"];
  }

  /** Destroy the actor (a vm removes its container and volume). */
  destroy(): Promise<Ok<"destroy_actor">> {
    return this.t.json("DELETE", this.path);
  }

  /**
   * Subscribe to broadcasts (SSE). Resolves once the subscription is in place, so
   * anything triggered afterwards is seen. `for await (const e of stream)`; `close()`.
   */
  async events<E extends keyof EventsOf<A> & string>(
    names?: readonly E[],
    options: { signal?: AbortSignal } = {},
  ): Promise<EventStream<EventsOf<A>[E]>> {
    await this.ready();
    const query: Record<string, string> = { ...this.query };
    if (names && names.length > 0) query.events = names.join(",");
    return this.t.events<EventsOf<A>[E]>(`${this.path}/events`, { query, signal: options.signal });
  }

  // runs (per-message workflows of run queues)

  /** This actor's runs, newest first. */
  async runs(options: { status?: RunStatus } = {}): Promise<RunInfo[]> {
    const data = await this.t.json<Ok<"list_actor_runs">>("GET", `${this.path}/runs`, {
      query: { status: options.status },
    });
    return data.runs;
  }

  /** One run with its input, result and step history. */
  run(runId: number): Promise<RunDetail> {
    return this.t.json<Ok<"get_run">>("GET", `${this.path}/runs/${runId}`);
  }

  /** Cancel a queued or running run (409 `run/not_cancellable` once finished). */
  cancelRun(runId: number): Promise<RunInfo> {
    return this.t.json<Ok<"cancel_run">>("POST", `${this.path}/runs/${runId}/cancel`);
  }

  /** Run a failed or cancelled run again from the step that failed. */
  retryRun(runId: number): Promise<RunInfo> {
    return this.t.json<Ok<"retry_run">>("POST", `${this.path}/runs/${runId}/retry`);
  }

  /** The run's patch (`git am` input) as text; 404 `run/no_patch` if it has none. */
  async runPatch(runId: number): Promise<string> {
    const resp = await this.t.fetch("GET", `${this.path}/runs/${runId}/patch`);
    return resp.text();
  }

  // the main workflow and the inspector

  recoverWorkflow(): Promise<WorkflowHistory> {
    return this.t.json<Ok<"recover_workflow">>("POST", `${this.path}/workflow/recover`);
  }

  cancelWorkflow(): Promise<WorkflowHistory> {
    return this.t.json<Ok<"cancel_workflow">>("POST", `${this.path}/workflow/cancel`);
  }

  workflowHistory(): Promise<WorkflowHistory> {
    return this.t.json<Ok<"workflow_history">>("GET", `${this.path}/inspector/workflow-history`);
  }

  async queueContents(): Promise<QueuedMessage[]> {
    const data = await this.t.json<Ok<"queue_contents">>("GET", `${this.path}/inspector/queue`);
    return data.messages;
  }

  summary(): Promise<ActorSummary> {
    return this.t.json<Ok<"inspector_summary">>("GET", `${this.path}/inspector/summary`);
  }
}

/** `client.actors.<name>`: handles of one actor type. */
export class ActorAccessor<A extends ActorShape = ActorShape> {
  constructor(
    private readonly t: Transport,
    readonly name: string,
  ) {}

  /** A handle that creates the actor on first use (with `input`, if given). */
  getOrCreate(key: Key, options: { input?: unknown } = {}): ActorHandle<A> {
    return new ActorHandle<A>(this.t, this.name, toKey(key), { input: options.input });
  }

  /** A handle that never creates (404 `actor/not_found` if absent). */
  get(key: Key): ActorHandle<A> {
    return new ActorHandle<A>(this.t, this.name, toKey(key), { create: false });
  }

  /** Create the actor (409 `actor/already_exists` if taken) → its handle. */
  async create(key: Key, options: { input?: unknown } = {}): Promise<ActorHandle<A>> {
    const handle = new ActorHandle<A>(this.t, this.name, toKey(key), { create: false });
    await this.t.json<Ok<"get_or_create">>("POST", handle.path, {
      json: { input: options.input ?? null },
      query: { if_exists: "error" },
    });
    return handle;
  }

  /** Every actor of this type. */
  async list(): Promise<ActorInfo[]> {
    const data = await this.t.json<Ok<"list_actors">>("GET", "/actors", { query: { name: this.name } });
    return data.actors;
  }
}

function toKey(key: Key): readonly string[] {
  return typeof key === "string" ? [key] : key;
}

// --- vms ------------------------------------------------------------------------------

export interface ExecResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  timed_out?: boolean;
  [extra: string]: unknown;
}

/** A listening port inside a sandbox. */
export interface PortInfo {
  port: number;
  /** the preview path a browser can open (with its capability) */
  preview?: string;
  [extra: string]: unknown;
}

/** A `file_changed` event of a watch (`watch_ended` has the watch id only). */
export interface FileChange {
  watch_id?: string;
  path?: string;
  kind?: string;
  [extra: string]: unknown;
}

/** A sandbox: the `vm` actor's actions plus the raw file routes under `/vms/{key}`. */
export class VmHandle extends ActorHandle {
  readonly vmPath: string;

  constructor(t: Transport, key: readonly string[], options: HandleOptions = {}) {
    super(t, "vm", key, options);
    this.vmPath = `/vms/${encodeKey(key)}`;
  }

  /** Run a shell command (`opts`: `cwd`, `env`, `timeout_s`, ...). */
  exec(command: string, opts?: Record<string, unknown>): Promise<ExecResult> {
    return this.call("exec", command, ...(opts ? [opts] : [])) as Promise<ExecResult>;
  }

  /** A file's bytes (through the action; small files). */
  readFile(path: string): Promise<Uint8Array> {
    return this.call("read_file", path) as Promise<Uint8Array>;
  }

  /** Write a file (string or bytes) through the action. */
  async writeFile(path: string, content: string | Uint8Array, opts?: Record<string, unknown>): Promise<void> {
    await this.call("write_file", path, content, ...(opts ? [opts] : []));
  }

  /** A directory's entries (the vm's `readdir`). */
  readdir(path: string): Promise<unknown> {
    return this.call("readdir", path);
  }

  /** Stream a file down (`GET /vms/{key}/files/{path}`; large files; never creates). */
  download(path: string): Promise<Uint8Array> {
    return this.t.bytes("GET", `${this.vmPath}/files/${encodeSandboxPath(path)}`);
  }

  /** Upload a file (`PUT /vms/{key}/files/{path}`, raw body; creates the vm). */
  upload(path: string, data: Uint8Array | Blob | ArrayBuffer): Promise<FileWritten> {
    return this.t.json<Ok<"upload_file">>("PUT", `${this.vmPath}/files/${encodeSandboxPath(path)}`, {
      raw: data,
    });
  }

  /** List a directory (`GET /vms/{key}/ls/{path}`). */
  ls(path: string): Promise<FileListing> {
    return this.t.json<Ok<"listdir">>("GET", `${this.vmPath}/ls/${encodeSandboxPath(path)}`);
  }

  /** Listening ports inside the sandbox, each with its `preview` path (`GET /vms/{key}/ports`). */
  ports(): Promise<{ ports: PortInfo[]; preview_template?: string }> {
    return this.t.json("GET", `${this.vmPath}/ports`);
  }

  /**
   * File changes under `path` as server-sent `file_changed` events (and a last
   * `watch_ended`); the watch stops when the stream is closed.
   */
  watch(
    path = "/home/user",
    options: { recursive?: boolean; signal?: AbortSignal } = {},
  ): Promise<EventStream<FileChange>> {
    return this.t.events<FileChange>(`${this.vmPath}/watch`, {
      query: { path, recursive: options.recursive ?? true },
      signal: options.signal,
    });
  }

  // agent sessions

  createSession(agentType: string, opts?: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.call("create_session", agentType, ...(opts ? [opts] : [])) as Promise<Record<string, unknown>>;
  }

  sendPrompt(sessionId: string, text: string): Promise<Record<string, unknown>> {
    return this.call("send_prompt", sessionId, text) as Promise<Record<string, unknown>>;
  }

  listSessions(): Promise<Record<string, unknown>[]> {
    return this.call("list_sessions") as Promise<Record<string, unknown>[]>;
  }

  getSessionEvents(sessionId: string, opts?: { since?: number; limit?: number }): Promise<Record<string, unknown>[]> {
    return this.call("get_session_events", sessionId, ...(opts ? [opts] : [])) as Promise<
      Record<string, unknown>[]
    >;
  }

  async closeSession(sessionId: string): Promise<void> {
    await this.call("close_session", sessionId);
  }
}

// --- the client -----------------------------------------------------------------------

export type ActorsOf<R extends RegistryShape> = { [N in keyof R & string]: ActorAccessor<R[N]> } & Record<
  string,
  ActorAccessor
>;

export class Client<R extends RegistryShape = RegistryShape> {
  readonly transport: Transport;
  /** `client.actors.counter.getOrCreate(["main"])` */
  readonly actors: ActorsOf<R>;

  constructor(options: ClientOptions = {}) {
    this.transport = new Transport(options);
    const t = this.transport;
    const cache = new Map<string, ActorAccessor>();
    this.actors = new Proxy({} as ActorsOf<R>, {
      get: (_, name) => {
        if (typeof name !== "string" || name === "then") return undefined;
        let acc = cache.get(name);
        if (!acc) cache.set(name, (acc = new ActorAccessor(t, name)));
        return acc;
      },
    });
  }

  get baseUrl(): string {
    return this.transport.baseUrl;
  }

  /** Handles of an actor type named at run time. */
  actor<N extends keyof R & string>(name: N): ActorAccessor<R[N]>;
  actor(name: string): ActorAccessor;
  actor(name: string): ActorAccessor {
    return new ActorAccessor(this.transport, name);
  }

  /** A sandbox by key; created on first use (with `input`: image, limits, ...). */
  vm(key: Key, options: HandleOptions = {}): VmHandle {
    return new VmHandle(this.transport, toKey(key), options);
  }

  async listActors(options: { name?: string; workflowStatus?: RunStatus } = {}): Promise<ActorInfo[]> {
    const data = await this.transport.json<Ok<"list_actors">>("GET", "/actors", {
      query: { name: options.name, workflow_status: options.workflowStatus },
    });
    return data.actors;
  }

  /** Runs across actors, newest first. */
  async listRuns(options: { status?: RunStatus; name?: string } = {}): Promise<RunInfo[]> {
    const data = await this.transport.json<Ok<"list_runs">>("GET", "/runs", {
      query: { status: options.status, name: options.name },
    });
    return data.runs;
  }

  health(): Promise<Health> {
    return this.transport.json<Ok<"healthz">>("GET", "/healthz");
  }

  /** Prometheus text. */
  async metrics(): Promise<string> {
    return (await this.transport.fetch("GET", "/metrics")).text();
  }

  /** The OpenAPI document the server serves. */
  openapi(): Promise<Record<string, unknown>> {
    return this.transport.json("GET", "/openapi.json");
  }

  readonly workflows = {
    /** The JSON Schema of a DAG workflow definition. */
    schema: (): Promise<Record<string, unknown>> => this.transport.json("GET", "/workflows/schema.json"),
    /** Check a definition: `{valid: true}` or `{valid: false, error}` naming the field. */
    validate: (definition: unknown): Promise<Ok<"validate_workflow">> =>
      this.transport.json("POST", "/workflows/validate", { json: definition }),
  };

  readonly blobs = {
    /** Upload bytes (e.g. a git bundle) → `{blob: "sha256:...", size}`. */
    upload: (data: Uint8Array | Blob | ArrayBuffer): Promise<{ blob: string; size: number }> =>
      this.transport.json("POST", "/blobs", { raw: data }),
    delete: (blobId: string): Promise<{ deleted: string }> =>
      this.transport.json("DELETE", `/blobs/${encodeURIComponent(blobId)}`),
  };

  /** Any server-sent events route: `client.stream("/runs/events")`. */
  stream<P = unknown>(
    path: string,
    options: { query?: RequestOptions["query"]; signal?: AbortSignal } = {},
  ): Promise<EventStream<P>> {
    return this.transport.events<P>(path, options);
  }

  /** Any route, with `$bytes` handled: `client.request("GET", "/sessions/stats")`. */
  request<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    return this.transport.json<T>(method, path, options);
  }
}

/** A client of the agentvm server (`createClient<MyRegistry>({ baseUrl, token })`). */
export function createClient<R extends RegistryShape = RegistryShape>(
  options: ClientOptions | string = {},
): Client<R> {
  return new Client<R>(typeof options === "string" ? { baseUrl: options } : options);
}

export type { paths as Paths };
