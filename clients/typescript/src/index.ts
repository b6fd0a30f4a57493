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

import { ActorAccessor, type HandleOptions, toKey } from "./actors.js";
import type { EventStream } from "./events.js";
import type { paths } from "./schema.js";
import { type ClientOptions, type RequestOptions, Transport } from "./transport.js";
import type { ActorInfo, Health, Key, Ok, RegistryShape, RunInfo, RunStatus } from "./types.js";
import { VmHandle } from "./vm.js";

export * from "./actors.js";
export * from "./errors.js";
export * from "./events.js";
export * from "./transport.js";
export * from "./types.js";
export * from "./vm.js";
export type { components, operations, paths } from "./schema.js";
export { BYTES_KEY, encodeKey, fromBase64, fromWire, toBase64, toWire } from "./wire.js";
export type { Wire } from "./wire.js";

// --- the client -----------------------------------------------------------------------

/** How a DAG workflow run starts (`POST /workflows/{name}/runs`). */
export interface WorkflowRunOptions {
  params?: Record<string, unknown>;
  /** answer once the run has finished (else 202 at once) */
  wait?: boolean;
  timeoutMs?: number;
  vmKey?: string;
  repo?: string;
  keepVm?: "on_failure" | "always" | "never";
}

/** A DAG workflow run's view: status and every step's result. */
export interface WorkflowRun {
  run_id: number;
  status: string;
  [extra: string]: unknown;
}

export interface WorkflowSummary {
  name: string;
  [extra: string]: unknown;
}

function runBody(o: WorkflowRunOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { params: o.params ?? {}, wait: o.wait ?? false };
  if (o.wait && o.timeoutMs !== undefined) body.timeout_ms = Math.max(0, Math.round(o.timeoutMs));
  if (o.vmKey !== undefined) body.vm_key = o.vmKey;
  if (o.repo !== undefined) body.repo = o.repo;
  if (o.keepVm !== undefined) body.keep_vm = o.keepVm;
  return body;
}

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

  /** The hosts sharing the server's database: leases, load, health (`mode: "single"` on SQLite). */
  cluster(): Promise<Ok<"get_cluster">> {
    return this.transport.json<Ok<"get_cluster">>("GET", "/cluster");
  }

  /** Prometheus text. */
  async metrics(): Promise<string> {
    return (await this.transport.fetch("GET", "/metrics")).text();
  }

  /** The OpenAPI document the server serves. */
  openapi(): Promise<Record<string, unknown>> {
    return this.transport.json("GET", "/openapi.json");
  }

  /** DAG workflows (docs/workflows.md): definitions, runs, their events. */
  readonly workflows = {
    /** The JSON Schema of a DAG workflow definition. */
    schema: (): Promise<Record<string, unknown>> => this.transport.json("GET", "/workflows/schema.json"),
    /** Check a definition: `{valid: true}` or `{valid: false, error}` naming the field. */
    validate: (definition: unknown): Promise<Ok<"validate_workflow">> =>
      this.transport.json("POST", "/workflows/validate", { json: definition }),
    /** Registered workflows: name, latest version, params. */
    list: (): Promise<WorkflowSummary[]> => this.transport.json("GET", "/workflows"),
    /** Register a definition (a new version unless identical to the latest). */
    put: (name: string, definition: unknown): Promise<{ name: string; version: number; created: boolean }> =>
      this.transport.json("PUT", `/workflows/${encodeURIComponent(name)}`, { json: definition }),
    /** A registered definition (the latest, or `version`). */
    get: (name: string, options: { version?: number } = {}): Promise<Record<string, unknown>> =>
      this.transport.json("GET", `/workflows/${encodeURIComponent(name)}`, {
        query: { version: options.version },
      }),
    versions: (name: string): Promise<unknown> =>
      this.transport.json("GET", `/workflows/${encodeURIComponent(name)}/versions`),
    /** Run a registered workflow → the run's view (finished with `wait`). */
    run: (name: string, options: WorkflowRunOptions & { version?: number } = {}): Promise<WorkflowRun> =>
      this.transport.json("POST", `/workflows/${encodeURIComponent(name)}/runs`, {
        json: { ...runBody(options), ...(options.version !== undefined ? { version: options.version } : {}) },
      }),
    /** Run an inline definition (not registered). */
    runInline: (definition: unknown, options: WorkflowRunOptions = {}): Promise<WorkflowRun> =>
      this.transport.json("POST", "/workflows/runs", { json: { definition, ...runBody(options) } }),
    /** A workflow's runs, newest first. */
    runs: async (name: string, options: { limit?: number } = {}): Promise<WorkflowRun[]> =>
      (
        await this.transport.json<{ runs: WorkflowRun[] }>("GET", `/workflows/${encodeURIComponent(name)}/runs`, {
          query: { limit: options.limit },
        })
      ).runs,
    getRun: (name: string, runId: number): Promise<WorkflowRun> =>
      this.transport.json("GET", `/workflows/${encodeURIComponent(name)}/runs/${runId}`),
    cancelRun: (name: string, runId: number): Promise<WorkflowRun> =>
      this.transport.json("POST", `/workflows/${encodeURIComponent(name)}/runs/${runId}/cancel`),
    retryRun: (name: string, runId: number): Promise<WorkflowRun> =>
      this.transport.json("POST", `/workflows/${encodeURIComponent(name)}/runs/${runId}/retry`),
    /** One run's events (SSE). */
    events: (name: string, runId: number, options: { signal?: AbortSignal } = {}): Promise<EventStream> =>
      this.transport.events(`/workflows/${encodeURIComponent(name)}/runs/${runId}/events`, options),
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
