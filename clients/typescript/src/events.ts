/**
 * Broadcasts over server-sent events (`GET /actors/{name}/{key}/events`), parsed
 * from a streaming `fetch` body (so a bearer token can be sent, which `EventSource`
 * cannot). No reconnect: a stream that ends stays ended; subscribe again to resume.
 */

import { AgentVMError, type ErrorInfo } from "./errors.js";
import { fromWire } from "./wire.js";

/** One broadcast: its name and payload (`$bytes` decoded to `Uint8Array`). */
export interface ActorEvent<P = unknown> {
  event: string;
  payload: P;
}

// A hostile or broken server must not make the client buffer without bound.
const MAX_EVENT_CHARS = 64 * 1024 * 1024;

/** An async iterator over an actor's broadcasts; `close()` (or `break`) ends it. */
export class EventStream<P = unknown> implements AsyncIterableIterator<ActorEvent<P>> {
  /** The actor id from the server's `: connected <id>` comment, once read. */
  actorId: string | null = null;
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly decoder = new TextDecoder();
  private buffer = "";
  private name = "message";
  private data: string[] = [];
  private dataChars = 0;
  private done = false;

  constructor(
    body: ReadableStream<Uint8Array>,
    private readonly abort: AbortController,
  ) {
    this.reader = body.getReader();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** The next broadcast; `{done: true}` once the stream ended or was closed. */
  async next(): Promise<IteratorResult<ActorEvent<P>, undefined>> {
    while (!this.done) {
      const event = this.takeEvent();
      if (event !== undefined) return { done: false, value: event };
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await this.reader.read();
      } catch (err) {
        if (this.done) break; // closed meanwhile: the abort surfaces here
        this.finish();
        throw err;
      }
      if (chunk.done) {
        this.buffer += this.decoder.decode();
        this.finish();
        break;
      }
      this.buffer += this.decoder.decode(chunk.value, { stream: true });
      if (this.buffer.length > MAX_EVENT_CHARS) {
        this.close();
        throw new RangeError(`an SSE line is longer than ${MAX_EVENT_CHARS} characters`);
      }
    }
    return { done: true, value: undefined };
  }

  async return(): Promise<IteratorResult<ActorEvent<P>, undefined>> {
    this.close();
    return { done: true, value: undefined };
  }

  /** Stop listening (the server notices and ends the subscription). */
  close(): void {
    if (!this.done) {
      this.finish();
      this.abort.abort();
      // Settles a pending read (as done) on every runtime; never throws.
      this.reader.cancel().catch(() => undefined);
    }
  }

  private finish(): void {
    this.done = true;
  }

  /** Parse complete lines in the buffer until one event is complete. */
  private takeEvent(): ActorEvent<P> | undefined {
    for (;;) {
      const nl = this.buffer.indexOf("\n");
      if (nl < 0) return undefined;
      let line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (this.data.length > 0) {
          const event = this.dispatch(this.name, this.data.join("\n"));
          this.name = "message";
          this.data = [];
          this.dataChars = 0;
          return event;
        }
        this.name = "message";
        continue;
      }
      if (line.startsWith(":")) {
        const m = /^: ?connected (\S+)/.exec(line);
        if (m?.[1] !== undefined) this.actorId = m[1];
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.name = value;
      else if (field === "data") {
        this.dataChars += value.length;
        if (this.dataChars > MAX_EVENT_CHARS) {
          this.close();
          throw new RangeError(`an SSE event is larger than ${MAX_EVENT_CHARS} characters`);
        }
        this.data.push(value);
      }
    }
  }

  private dispatch(name: string, text: string): ActorEvent<P> {
    const payload = fromWire(JSON.parse(text));
    // The server's own last word to a dropped subscriber (subscriber_too_slow).
    if (name === "error" && isServerError(payload)) {
      this.close();
      throw new AgentVMError(payload.error, 0);
    }
    return { event: name, payload: payload as P };
  }
}

function isServerError(value: unknown): value is { error: ErrorInfo } {
  if (value === null || typeof value !== "object") return false;
  const e = (value as { error?: unknown }).error;
  if (e === null || typeof e !== "object") return false;
  const { group, code } = e as { group?: unknown; code?: unknown };
  return group === "events" && typeof code === "string";
}
