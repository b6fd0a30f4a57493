// Small formatting helpers shared by the pages.
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${Math.round(seconds % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function fmtAge(ts, now = Date.now() / 1000) {
  if (!ts) return "–";
  const d = Math.max(0, now - ts);
  if (d < 60) return `${Math.round(d)}s ago`;
  if (d < 3600) return `${Math.round(d / 60)}m ago`;
  if (d < 86400) return `${Math.round(d / 3600)}h ago`;
  return new Date(ts * 1000).toLocaleString();
}

export function runDuration(run, now = Date.now() / 1000) {
  if (!run.started_at) return null;
  return (run.finished_at || now) - run.started_at;
}

export function errorText(err) {
  if (!err) return "";
  if (typeof err === "string") return err;
  const head = [err.group, err.code].filter(Boolean).join("/");
  return `${head ? head + ": " : ""}${err.message || JSON.stringify(err)}`;
}

export function runKey(run) {
  return `${run.actor_id}#${run.run_id}`;
}
