// The built client against a live server running tests.server.registry:build.
//   node clients/typescript/test/smoke.mjs <url> <token|-> [key-prefix]
// Prints one line per check and "smoke: ok"; exits 1 on the first failure.
import assert from "node:assert/strict";
import { AgentVMError, ClientError, createClient } from "../dist/agentvm-client.mjs";

const [url, tokenArg, prefix = `smoke-${process.pid}`] = process.argv.slice(2);
if (!url) {
  console.error("usage: smoke.mjs <url> <token|-> [key-prefix]");
  process.exit(2);
}
const token = tokenArg && tokenArg !== "-" ? tokenArg : undefined;
const client = createClient({ baseUrl: url, token });
const check = (name) => console.log(`check: ${name}`);

async function expectError(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected an error");
}

// An action call (get-or-create on first use).
const counter = client.actors.counter.getOrCreate([prefix, "a,b/ü"]);
assert.equal(await counter.call("increment", 5), 5);
assert.equal(await counter.actions.increment(2), 7);
assert.deepEqual(await counter.state(), { count: 7 });
const info = await counter.info();
assert.deepEqual(info.key, [prefix, "a,b/ü"]);
check("action call, state, key encoding");

// $bytes both ways: Uint8Array arguments in, Uint8Array out.
const a = new Uint8Array([0, 1, 2, 255]);
const b = new Uint8Array(70000).map((_, i) => i % 251);
const joined = await counter.call("concat", a, b);
assert.ok(joined instanceof Uint8Array, "bytes come back as Uint8Array");
assert.equal(joined.length, a.length + b.length);
assert.deepEqual(joined.subarray(0, 4), a);
assert.deepEqual(joined.subarray(4), b);
const nested = await counter.call("echo", { data: new Uint8Array([7, 8]), list: [new Uint8Array(0)] });
assert.deepEqual(nested, { data: new Uint8Array([7, 8]), list: [new Uint8Array(0)] });
const blob = await counter.call("blob", 300);
assert.equal(blob.length, 300);
assert.equal(blob[299], 299 % 256);
check("$bytes round trip");

// A waiting send: the worker's workflow completes the message with a response.
const worker = client.actors.worker.getOrCreate([prefix]);
const answer = await worker.send("requests", { n: 21 }, { wait: true, timeoutMs: 60000 });
assert.equal(answer.status, "completed");
assert.deepEqual(answer.response, { doubled: 42 });
assert.equal(typeof answer.message_id, "number");
const parked = await worker.send("parked", { x: 1 }, { wait: true, timeoutMs: 50 });
assert.equal(parked.status, "timed_out");
check("wait send (completed, timed_out)");

// Runs: a run queue's message is a run, listed per actor and across actors.
const runner = client.actors.runner.getOrCreate([prefix]);
const done = await runner.send("jobs", { label: "ts" }, { wait: true, timeoutMs: 60000 });
assert.equal(done.status, "completed");
const runs = await runner.runs();
assert.ok(runs.some((r) => r.run_id === done.message_id && r.status === "completed"));
const all = await client.listRuns({ status: "completed", name: "runner" });
assert.ok(all.some((r) => r.run_id === done.message_id));
const detail = await runner.run(done.message_id);
assert.deepEqual(detail.meta, { label: "ts" });
assert.ok(Array.isArray(detail.history) && detail.history.length > 0);
const notCancellable = await expectError(runner.cancelRun(done.message_id));
assert.ok(notCancellable instanceof ClientError);
assert.equal(notCancellable.status, 409);
assert.equal(`${notCancellable.group}/${notCancellable.code}`, "run/not_cancellable");
check("runs: list, list across actors, get, cancel refused");

// SSE: subscribed before the action, so its broadcast is seen.
const stream = await counter.events(["changed"]);
await counter.call("increment", 1);
const first = await stream.next();
assert.equal(first.done, false);
assert.deepEqual(first.value, { event: "changed", payload: { count: 8 } });
assert.ok(stream.actorId, "the connected comment names the actor");
stream.close();
assert.deepEqual(await stream.next(), { done: true, value: undefined });
// for-await with break closes it too.
const stream2 = await counter.events();
await counter.call("announce", "hello", { raw: new Uint8Array([1, 2, 3]) });
for await (const e of stream2) {
  assert.equal(e.event, "hello");
  assert.deepEqual(e.payload, { raw: new Uint8Array([1, 2, 3]) });
  break;
}
// Any SSE route through client.stream (here the actor's, filtered by query).
const raw = await client.stream(`${counter.path}/events`, { query: { events: "changed" } });
await counter.call("announce", "ignored", null);
await counter.call("increment", 1);
const third = await raw.next();
assert.deepEqual(third.value, { event: "changed", payload: { count: 9 } });
raw.close();
check("SSE events");

// A 4xx surfaces as a typed error naming the field.
const badArg = await expectError(counter.call("increment", "five"));
assert.ok(badArg instanceof AgentVMError && badArg instanceof ClientError);
assert.equal(badArg.status, 400);
assert.ok(badArg.is("request", "invalid"));
assert.equal(badArg.field, "args[0]");
const badWait = await expectError(
  client.request("POST", `${worker.path}/queues/requests`, { json: { body: {}, wait: "yes" } }),
);
assert.equal(badWait.status, 400);
assert.equal(badWait.field, "body.wait");
const unknown = await expectError(counter.call("frobnicate"));
assert.equal(unknown.status, 404);
assert.equal(`${unknown.group}/${unknown.code}`, "action/not_found");
const absent = await expectError(client.actors.counter.get([prefix, "never"]).call("increment", 1));
assert.equal(absent.status, 404);
assert.equal(absent.group, "actor");
check("typed 4xx errors with field");

// vm routes (the test registry's vm double keeps files in its state).
const vm = client.vm([prefix, "vm"]);
await vm.writeFile("/home/user/a.bin", new Uint8Array([9, 8, 7]));
assert.deepEqual(await vm.readFile("/home/user/a.bin"), new Uint8Array([9, 8, 7]));
assert.deepEqual(await vm.download("/home/user/a.bin"), new Uint8Array([9, 8, 7]));
const put = await vm.upload("/home/user/dir/b c.txt", new TextEncoder().encode("hi"));
assert.deepEqual(put, { path: "/home/user/dir/b c.txt", size: 2 });
const listing = await vm.ls("/home/user");
assert.deepEqual(
  listing.entries.map((e) => e.name),
  ["a.bin", "dir"],
);
const ran = await vm.exec("echo hi", { cwd: "/tmp" });
assert.equal(ran.exit_code, 0);
check("vm: exec, files, download/upload, ls");

// Other routes.
const health = await client.health();
assert.equal(health.status, "ok");
const validity = await client.workflows.validate({ name: 1 });
assert.equal(validity.valid, false);
check("health, workflows.validate");

console.log("smoke: ok");
