/** Sandboxes: the vm actor's actions and the `/vms/{key}` routes. */

import { ActorHandle, type HandleOptions } from "./actors.js";
import type { EventStream } from "./events.js";
import type { Transport } from "./transport.js";
import type { FileListing, FileWritten, Ok } from "./types.js";
import { encodeKey, encodeSandboxPath } from "./wire.js";

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
