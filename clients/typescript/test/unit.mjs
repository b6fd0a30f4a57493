// Checks of the client's pieces without a server:
//   node clients/typescript/test/unit.mjs '<json list of keys>'
// prints {"keys": [encodeKey(k) ...]} (compared with Python's encode_key_path by the
// pytest), after asserting the SSE parser and the $bytes codec on edge cases.
import assert from "node:assert/strict";
import { AgentVMError, encodeKey, EventStream, fromWire, toWire } from "../dist/agentvm-client.mjs";

function streamOf(chunks) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(typeof c === "string" ? enc.encode(c) : c);
      controller.close();
    },
  });
}

async function collect(chunks) {
  const out = [];
  const stream = new EventStream(streamOf(chunks), new AbortController());
  for await (const e of stream) out.push(e);
  return { out, stream };
}

// Split anywhere, even inside a multi-byte character and a CRLF; comments; multi-line data.
const text =
  ': connected act-1\n\n' +
  'event: progress\r\ndata: {"stage":"ü",\r\ndata: "n":1}\r\n\r\n' +
  ': ping\n\n' +
  'event: blob\ndata: {"b":{"$bytes":"AAH/"}}\n\n' +
  'data: {"plain":true}\n\n' +
  'event: partial\ndata: {"never":"dispatched"}';
const bytes = new TextEncoder().encode(text);
const chunks = [];
for (let i = 0; i < bytes.length; i += 3) chunks.push(bytes.subarray(i, i + 3));
const { out, stream } = await collect(chunks);
assert.equal(stream.actorId, "act-1");
assert.deepEqual(out, [
  { event: "progress", payload: { stage: "ü", n: 1 } },
  { event: "blob", payload: { b: new Uint8Array([0, 1, 255]) } },
  { event: "message", payload: { plain: true } },
]);

// The server's final word to a dropped subscriber is thrown, typed.
const dropped = new EventStream(
  streamOf([
    'event: error\ndata: {"error":{"group":"events","code":"subscriber_too_slow","message":"slow","metadata":{}}}\n\n',
  ]),
  new AbortController(),
);
await assert.rejects(dropped.next(), (err) => err instanceof AgentVMError && err.code === "subscriber_too_slow");
// An actor's own broadcast named "error" is just an event.
const own = await collect(['event: error\ndata: {"reason":"mine"}\n\n']);
assert.deepEqual(own.out, [{ event: "error", payload: { reason: "mine" } }]);

// close() while a read is pending settles it as done; nothing throws.
{
  const body = new ReadableStream({
    start(c) {
      c.enqueue(new TextEncoder().encode("event: a\ndata: 1\n\n")); // then nothing more
    },
  });
  const s = new EventStream(body, new AbortController());
  assert.deepEqual((await s.next()).value, { event: "a", payload: 1 });
  const pending = s.next();
  s.close();
  assert.deepEqual(await pending, { done: true, value: undefined });
  assert.deepEqual(await s.next(), { done: true, value: undefined });
}

// $bytes: large arrays (no call-stack limits), views, nesting, and only exact {"$bytes"} objects.
const big = new Uint8Array(1 << 20).map((_, i) => (i * 7) % 256);
const wire = toWire({ big, view: new DataView(big.buffer, 2, 3), list: [new Uint8Array(0)] });
assert.equal(typeof wire.big.$bytes, "string");
assert.deepEqual(fromWire(wire), {
  big,
  view: big.subarray(2, 5),
  list: [new Uint8Array(0)],
});
assert.deepEqual(fromWire({ $bytes: "AA==", other: 1 }), { $bytes: "AA==", other: 1 });
assert.deepEqual(toWire({ skip: undefined, keep: null }), { keep: null });
assert.throws(() => encodeKey([]), TypeError);

const keys = JSON.parse(process.argv[2] ?? "[]");
console.log(JSON.stringify({ keys: keys.map((k) => encodeKey(k)) }));
