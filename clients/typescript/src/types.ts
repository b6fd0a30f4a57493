/** Types: the generated schema's, and the optional typing of a registry. */

import type { components, operations } from "./schema.js";

export type Schemas = components["schemas"];
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

export type ActionsOf<A extends ActorShape> =
  A["actions"] extends Record<string, (...args: any[]) => unknown>
    ? A["actions"]
    : Record<string, (...args: any[]) => unknown>;
export type QueuesOf<A extends ActorShape> =
  A["queues"] extends Record<string, { body?: unknown; response?: unknown }>
    ? A["queues"]
    : Record<string, { body?: unknown; response?: unknown }>;
export type EventsOf<A extends ActorShape> =
  A["events"] extends Record<string, unknown> ? A["events"] : Record<string, unknown>;
export type Awaited2<T> = T extends PromiseLike<infer U> ? U : T;

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
