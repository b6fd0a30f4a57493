// The built client against a live real host (Docker sandboxes):
//   node clients/typescript/test/vm_smoke.mjs <url> <token|-> <vm-key>
// exec, bytes through actions and the raw file routes, a file watch (SSE), a
// listening port and its preview through the proxy, a typed 404, DAG workflows (no agent:
// every step skipped); then destroys the vm.
import assert from "node:assert/strict";
import { ClientError, createClient } from "../dist/agentvm-client.mjs";

const [url, tokenArg, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: vm_smoke.mjs <url> <token|-> <vm-key>");
  process.exit(2);
}
const client = createClient({ baseUrl: url, token: tokenArg && tokenArg !== "-" ? tokenArg : undefined });
const check = (name) => console.log(`check: ${name}`);
const vm = client.vm(key);

async function until(what, fn, ms = 60000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

try {
  const ran = await vm.exec("echo hi; pwd", { cwd: "/home/user" });
  assert.equal(ran.exit_code, 0);
  assert.equal(ran.stdout, "hi\n/home/user\n");
  check("exec");

  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  await vm.writeFile("/home/user/all.bin", all);
  assert.deepEqual(await vm.readFile("/home/user/all.bin"), all);
  assert.deepEqual(await vm.download("/home/user/all.bin"), all);
  const put = await vm.upload("/home/user/up load.bin", all.slice().reverse());
  assert.equal(put.size, 256);
  assert.deepEqual(await vm.readFile("/home/user/up load.bin"), all.slice().reverse());
  const listing = await vm.ls("/home/user");
  assert.ok(listing.entries.some((e) => e.name === "up load.bin"));
  check("bytes: actions and raw routes");

  await vm.exec("mkdir -p /home/user/w");
  const changes = await vm.watch("/home/user/w");
  await vm.writeFile("/home/user/w/new.txt", "x");
  let seen;
  for await (const e of changes) {
    if (e.event === "file_changed" && e.payload.path === "/home/user/w/new.txt") {
      seen = e.payload;
      break;
    }
  }
  assert.ok(seen && ["created", "modified"].includes(seen.kind) && seen.watch_id, JSON.stringify(seen));
  // The watch is stopped once the client left.
  await until("the watch to stop", async () => (await vm.call("list_watches")).length === 0);
  check("watch (SSE)");

  await vm.exec("mkdir -p /home/user/site && echo '<p>from the sandbox</p>' > /home/user/site/index.html");
  await vm.call("spawn", "python3 -m http.server 8000 --bind 127.0.0.1", { cwd: "/home/user/site" });
  const port = await until("port 8000", async () => (await vm.ports()).ports.find((p) => p.port === 8000));
  assert.ok(typeof port.preview === "string" && port.preview.includes("/ports/8000"), JSON.stringify(port));
  const page = await client.transport.fetch("GET", port.preview);
  assert.match(await page.text(), /from the sandbox/);
  check("ports and preview");

  const missing = await vm.watch("/home/user/nope").then(
    () => assert.fail("a watch of a missing path must fail"),
    (err) => err,
  );
  assert.ok(missing instanceof ClientError, String(missing));
  assert.equal(missing.status, 404);
  assert.equal(missing.code, "file_not_found");
  check("typed 404");

  // DAG workflows: a definition whose steps are all skipped runs without an agent.
  const name = `ts-${key}`;
  const definition = {
    name,
    params: [{ name: "go", type: "boolean", default: false }],
    steps: [
      { id: "a", prompt: "a", when: { param: "go" } },
      { id: "b", prompt: "b {{steps.a.text}}", depends_on: ["a"], when: { param: "go" } },
    ],
  };
  assert.deepEqual(await client.workflows.validate(definition), { valid: true, error: null });
  const invalid = await client.workflows.validate({ ...definition, steps: [{ id: "a" }] });
  assert.equal(invalid.valid, false);
  assert.ok(invalid.error.metadata.field.startsWith("steps"), JSON.stringify(invalid.error));
  assert.deepEqual(await client.workflows.put(name, definition), { name, version: 1, created: true });
  assert.equal((await client.workflows.put(name, definition)).created, false);
  assert.ok((await client.workflows.list()).some((w) => w.name === name && w.latest === 1));
  assert.equal((await client.workflows.get(name)).version, 1);
  const run = await client.workflows.run(name, { wait: true, timeoutMs: 60000 });
  assert.equal(run.status, "completed", JSON.stringify(run));
  assert.deepEqual(run.order, ["a", "b"]);
  assert.equal(run.steps.a.status, "skipped");
  assert.equal((await client.workflows.getRun(name, run.run_id)).status, "completed");
  assert.equal((await client.workflows.runs(name))[0].run_id, run.run_id);
  const refused = await client.workflows.cancelRun(name, run.run_id).then(
    () => assert.fail("a finished run cannot be cancelled"),
    (err) => err,
  );
  assert.equal(refused.status, 409);
  assert.equal(refused.code, "not_cancellable");
  // A finished run's event stream ends by itself.
  const ended = [];
  for await (const e of await client.workflows.events(name, run.run_id)) ended.push(e.event);
  assert.ok(Array.isArray(ended));
  const badParam = await client.workflows.run(name, { params: { go: "yes" } }).then(
    () => assert.fail("a param of the wrong type is refused"),
    (err) => err,
  );
  assert.equal(badParam.status, 400);
  assert.equal(badParam.field, "params.go");
  const inline = await client.workflows.runInline({ ...definition, name: `${name}-inline` }, { wait: true });
  assert.equal(inline.status, "completed");
  check("workflows: validate, put, list, get, run, runs, events, cancel refused, bad param, inline");
} finally {
  await vm.destroy().catch(() => undefined);
}
console.log("vm smoke: ok");
