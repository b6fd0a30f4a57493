// Metrics: small charts sampled from /metrics (Prometheus text, parsed here) every
// few seconds while the page is open; the last five minutes are kept.
import { useEffect, useState } from "preact/hooks";
import { html } from "../html.js";
import { LineChart } from "../components/chart.js";
import { errorText } from "../components/util.js";

const EVERY_MS = 2000;
const KEEP = 150;
const FINISHED = new Set(["completed", "failed", "cancelled"]);

// "name{a="x",b="y"} 1.5" lines → [{name, labels, value}].
export function parseProm(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const value = Number(m[4]);
    if (isFinite(value)) out.push({ name: m[1], labels, value });
  }
  return out;
}

function total(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((a, s) => a + s.value, 0);
}

function snapshot(samples) {
  return {
    t: Date.now() / 1000,
    finished: total(samples, "agentvm_runs_total", (l) => FINISHED.has(l.status)),
    inflight: total(samples, "agentvm_runs"),
    queue: total(samples, "agentvm_queue_depth"),
    sandboxes: total(samples, "agentvm_sandboxes_running"),
    stepSum: total(samples, "agentvm_step_seconds_sum"),
    stepCount: total(samples, "agentvm_step_seconds_count"),
    http: total(samples, "agentvm_http_request_seconds_count"),
  };
}

export default function MetricsPage({ api }) {
  const [snaps, setSnaps] = useState([]);
  const [error, setError] = useState(null);
  useEffect(() => {
    let stop = false;
    const sample = async () => {
      try {
        const snap = snapshot(parseProm(await api.text("/metrics")));
        if (!stop) setSnaps((old) => [...old.slice(-(KEEP - 1)), snap]);
        setError(null);
      } catch (e) {
        setError(e);
      }
    };
    sample();
    const t = setInterval(sample, EVERY_MS);
    return () => ((stop = true), clearInterval(t));
  }, []);

  const series = (f) => snaps.map((s, i) => [s.t, f(s, snaps[i - 1])]).filter((p) => p[1] !== null);
  const rate = (field, per) => (s, prev) => (prev ? Math.max(0, ((s[field] - prev[field]) / Math.max(s.t - prev.t, 1e-3)) * per) : null);
  let lastStep = null;
  const stepLatency = series((s, prev) => {
    if (prev && s.stepCount > prev.stepCount) lastStep = (s.stepSum - prev.stepSum) / (s.stepCount - prev.stepCount);
    else if (lastStep === null && s.stepCount > 0) lastStep = s.stepSum / s.stepCount;
    return lastStep;
  });
  return html`<section>
    <h1>Metrics</h1>
    ${error ? html`<p class="error">${errorText(error.error || error.message)}</p>` : null}
    <p class="muted">sampled from <code>/metrics</code> every ${EVERY_MS / 1000} s while this page is open</p>
    <div class="grid2">
      <${LineChart} testid="chart-runs" title="Runs finished per minute" points=${series(rate("finished", 60))} />
      <${LineChart} testid="chart-inflight" title="Runs queued or running" points=${series((s) => s.inflight)} />
      <${LineChart} testid="chart-queue" title="Queue depth" points=${series((s) => s.queue)} />
      <${LineChart} testid="chart-sandboxes" title="Sandboxes running" points=${series((s) => s.sandboxes)} />
      <${LineChart} testid="chart-steps" title="Step latency (mean)" unit=" s" points=${stepLatency} />
      <${LineChart} testid="chart-http" title="HTTP requests per second" points=${series(rate("http", 1))} />
    </div>
  </section>`;
}
