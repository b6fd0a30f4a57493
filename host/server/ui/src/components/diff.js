// Diffs rendered as diffs: a unified diff / git patch as coloured lines, and a
// line diff of two texts (an agent's edit: oldText → newText). Text only.
import { html } from "../html.js";

const MAX_LINES = 5000;

export function DiffView({ text }) {
  const lines = String(text || "").split("\n");
  const shown = lines.slice(0, MAX_LINES);
  return html`<div class="diff" data-testid="diff">
    ${shown.map((l) => html`<div class=${lineClass(l)}>${l || " "}</div>`)}
    ${lines.length > MAX_LINES ? html`<div class="muted">… ${lines.length - MAX_LINES} more lines</div>` : null}
  </div>`;
}

function lineClass(l) {
  if (l === "-- ") return ""; // a format-patch mbox's signature separator
  if (l.startsWith("+++") || l.startsWith("---") || l.startsWith("diff --git")) return "file";
  if (l.startsWith("@@")) return "hunk";
  if (l.startsWith("+")) return "add";
  if (l.startsWith("-")) return "del";
  return "";
}

// A unified diff of two texts (LCS on lines; very large inputs fall back to
// "all removed, all added" to keep the page responsive).
export function unifiedDiff(path, oldText, newText, context = 3) {
  const a = oldText ? String(oldText).split("\n") : [];
  const b = newText ? String(newText).split("\n") : [];
  const ops = a.length * b.length > 4e6 ? [...a.map((l) => ["-", l]), ...b.map((l) => ["+", l])] : lcsOps(a, b);
  const out = [`--- a/${path}`, `+++ b/${path}`];
  // Group into hunks with `context` lines around changes.
  const changed = ops.map((o) => o[0] !== " ");
  let i = 0;
  while (i < ops.length) {
    if (!changed[i]) {
      i++;
      continue;
    }
    let start = Math.max(0, i - context);
    let end = i;
    while (end < ops.length) {
      let next = end;
      while (next < ops.length && !changed[next]) next++;
      if (next >= ops.length || next - end > 2 * context) break;
      end = next + 1;
    }
    end = Math.min(ops.length, end + context);
    out.push("@@");
    for (let j = start; j < end; j++) out.push(ops[j][0] + ops[j][1]);
    i = end;
  }
  return out.join("\n");
}

function lcsOps(a, b) {
  const n = a.length, m = b.length;
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--) dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const ops = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      ops.push([" ", a[i]]);
      i++;
      j++;
    } else if (dp[i + 1][j] >= dp[i][j + 1]) ops.push(["-", a[i++]]);
    else ops.push(["+", b[j++]]);
  }
  while (i < n) ops.push(["-", a[i++]]);
  while (j < m) ops.push(["+", b[j++]]);
  return ops;
}
