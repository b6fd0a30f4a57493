/** Errors as the server reports them: `{"error": {group, code, message, metadata}}`. */

export interface ErrorInfo {
  group: string;
  code: string;
  message: string;
  metadata?: Record<string, unknown>;
}

/**
 * Any error the server answered (4xx/5xx), or a run that failed (`RunFailed`).
 * `group`/`code` are stable (`request`/`invalid`, `actor`/`not_found`, ...);
 * `field` names the offending part of the request when the server said which
 * (`body.timeout_ms`, `args[0]`, `key`).
 */
export class AgentVMError extends Error {
  readonly group: string;
  readonly code: string;
  readonly status: number;
  readonly metadata: Record<string, unknown>;

  constructor(info: ErrorInfo, status: number) {
    super(info.message);
    this.name = "AgentVMError";
    this.group = info.group;
    this.code = info.code;
    this.status = status;
    this.metadata = info.metadata ?? {};
  }

  /** The request field the error is about (`metadata.field`), if any. */
  get field(): string | undefined {
    const field = this.metadata.field;
    return typeof field === "string" ? field : undefined;
  }

  /** Whether this is `group/code` (e.g. `err.is("request", "invalid")`). */
  is(group: string, code?: string): boolean {
    return this.group === group && (code === undefined || this.code === code);
  }
}

/** A 4xx: the caller's mistake (bad input, unknown actor, conflict, ...). */
export class ClientError extends AgentVMError {
  override name = "ClientError";
}

/** A 5xx: a fault on the server (or in an actor's code). */
export class ServerError extends AgentVMError {
  override name = "ServerError";
}

/** A `wait` send whose run ended `failed` (with `raiseOnFailure`); `info` is the run's error. */
export class RunFailed extends AgentVMError {
  override name = "RunFailed";
  readonly runId: number | null;

  constructor(info: ErrorInfo, runId: number | null) {
    super(info, 200);
    this.runId = runId;
  }
}

/** The typed error for an HTTP status and (possibly non-JSON) body text. */
export function errorFromResponse(status: number, text: string): AgentVMError {
  let info: ErrorInfo | undefined;
  try {
    const parsed = JSON.parse(text) as { error?: Partial<ErrorInfo> };
    const e = parsed?.error;
    if (e && typeof e.group === "string" && typeof e.code === "string") {
      info = {
        group: e.group,
        code: e.code,
        message: typeof e.message === "string" ? e.message : `HTTP ${status}`,
        metadata: e.metadata && typeof e.metadata === "object" ? e.metadata : {},
      };
    }
  } catch {
    // not JSON: described below
  }
  info ??= { group: "http", code: String(status), message: `HTTP ${status}: ${text.slice(0, 500)}` };
  return status >= 500 ? new ServerError(info, status) : new ClientError(info, status);
}
