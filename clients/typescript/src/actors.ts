/** Actor handles: actions, queue sends, state, events, runs, the inspector. */

import { RunFailed } from "./errors.js";
import type { EventStream } from "./events.js";
import type { Transport } from "./transport.js";
import type {
  ActionsOf,
  ActorInfo,
  ActorRef,
  ActorShape,
  ActorSummary,
  Awaited2,
  EventsOf,
  Key,
  Ok,
  QueuedMessage,
  QueuesOf,
  RunDetail,
  RunInfo,
  RunStatus,
  SendOptions,
  SendResult,
  WorkflowHistory,
} from "./types.js";
import { encodeKey } from "./wire.js";

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

export function toKey(key: Key): readonly string[] {
  return typeof key === "string" ? [key] : key;
}
