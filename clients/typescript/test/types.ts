// Compile-time checks of the typed layer (tsc --noEmit -p test/tsconfig.json); never run.
import { createClient, type Ok, type RunInfo } from "../src/index.js";

type Registry = {
  counter: {
    actions: { increment(amount: number): number; concat(a: Uint8Array, b: Uint8Array): Uint8Array };
    state: { count: number };
    events: { changed: { count: number } };
  };
  automator: {
    queues: { fixBug: { body: { repo: string; issue: string }; response: { patch: string } } };
  };
};

export async function typed(): Promise<void> {
  const client = createClient<Registry>({ baseUrl: "http://127.0.0.1:6420" });
  const counter = client.actors.counter.getOrCreate(["main"]);
  const n: number = await counter.call("increment", 1);
  const m: number = await counter.actions.increment(2);
  const bytes: Uint8Array = await counter.call("concat", new Uint8Array(1), new Uint8Array(2));
  // @ts-expect-error: increment takes a number
  await counter.call("increment", "five");
  // @ts-expect-error: no such action on a typed actor
  await counter.call("frobnicate");
  const state: { count: number } = await counter.state();
  const r = await client.actors.automator.getOrCreate("main").send(
    "fixBug",
    { repo: "https://example.com/r.git", issue: "x" },
    { wait: true },
  );
  const patch: string | undefined = r.response?.patch;
  // @ts-expect-error: the body's shape is known
  await client.actors.automator.getOrCreate("main").send("fixBug", { repo: 1 });
  for await (const e of await counter.events(["changed"])) {
    const count: number = e.payload.count;
    void count;
  }
  // Untyped actors still work, by any name.
  const out: unknown = await client.actor("other").getOrCreate("k").call("anything", 1, "x");
  const runs: RunInfo[] = await client.listRuns({ status: "failed" });
  const health: Ok<"healthz"> = await client.health();
  const status: "ok" | "stopping" = health.status;
  void [n, m, bytes, state, patch, out, runs, status];
}
