// One file of a vm: its beginning shown with syntax highlighting, a download button.
// The content is hostile: it reaches the DOM either as a text node or as the
// highlighter's output, which escapes every character of its input (hljs
// `highlight().value` builds its HTML from escaped text and its own <span>s).
import { useEffect, useState } from "preact/hooks";
import { html, basename, formatSize, useStylesheet } from "./html.js";
import { fetchBytes, filesUrl, readHead } from "./http.js";

// What the viewer shows at most; the rest is behind the download button.
export const VIEW_LIMIT = 512 * 1024;

const LANGUAGES = {
  py: "python",
  js: "javascript",
  mjs: "javascript",
  cjs: "javascript",
  ts: "typescript",
  tsx: "typescript",
  json: "json",
  md: "markdown",
  sh: "bash",
  bash: "bash",
  yml: "yaml",
  yaml: "yaml",
  toml: "ini",
  ini: "ini",
  cfg: "ini",
  html: "xml",
  xml: "xml",
  svg: "xml",
  css: "css",
  go: "go",
  rs: "rust",
  c: "c",
  h: "c",
  cc: "cpp",
  cpp: "cpp",
  hpp: "cpp",
  java: "java",
  kt: "kotlin",
  rb: "ruby",
  php: "php",
  sql: "sql",
  diff: "diff",
  patch: "diff",
  lua: "lua",
  swift: "swift",
};

const vendor = (name) => new URL(`../../vendor/${name}`, import.meta.url).href;

let highlighter = null;
function loadHighlighter() {
  if (!highlighter) {
    useStylesheet(vendor("highlight.css"));
    highlighter = import(vendor("highlight.mjs")).then((m) => m.default);
  }
  return highlighter;
}

export function languageOf(path) {
  const name = basename(path).toLowerCase();
  if (name === "makefile") return "makefile";
  const dot = name.lastIndexOf(".");
  return dot > 0 ? LANGUAGES[name.slice(dot + 1)] || null : null;
}

function isBinary(bytes) {
  const n = Math.min(bytes.length, 8192);
  for (let i = 0; i < n; i++) if (bytes[i] === 0) return true;
  return false;
}

/** props: api, vmKey, path, change ({path, kind, n}: reload when it is this file). */
export default function FileView({ api, vmKey, path, change }) {
  const [view, setView] = useState({ loading: true });
  const [reloads, setReloads] = useState(0);

  useEffect(() => {
    if (change && change.path === path) setReloads((n) => n + 1);
  }, [change]);

  useEffect(() => {
    let live = true;
    setView((v) => ({ ...v, loading: true }));
    (async () => {
      try {
        const { bytes, truncated } = await readHead(api, vmKey, path, VIEW_LIMIT);
        if (isBinary(bytes)) {
          if (live) setView({ binary: true, size: bytes.length, truncated });
          return;
        }
        const text = new TextDecoder("utf-8").decode(bytes);
        const lang = languageOf(path);
        let highlighted = null;
        if (lang) {
          try {
            const hljs = await loadHighlighter();
            if (hljs.getLanguage(lang)) {
              highlighted = hljs.highlight(text, { language: lang, ignoreIllegals: true }).value;
            }
          } catch {
            highlighted = null; // plain text then
          }
        }
        if (live) setView({ text, highlighted, lang, truncated, size: bytes.length });
      } catch (err) {
        if (live) setView({ error: String(err.message || err) });
      }
    })();
    return () => {
      live = false;
    };
  }, [api, vmKey, path, reloads]);

  const download = async () => {
    try {
      const response = await fetchBytes(api, "GET", filesUrl(vmKey, path));
      const url = URL.createObjectURL(await response.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = basename(path) || "download";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      setView((v) => ({ ...v, error: String(err.message || err) }));
    }
  };

  let body;
  if (view.error) body = html`<div class="vm-error">${view.error}</div>`;
  else if (view.binary) body = html`<div class="vm-note">binary file (not shown); download it</div>`;
  else if (view.highlighted != null) {
    body = html`<pre class="vm-file-content"><code
      class=${`hljs language-${view.lang}`}
      dangerouslySetInnerHTML=${{ __html: view.highlighted }}
    ></code></pre>`;
  } else if (view.text != null) {
    body = html`<pre class="vm-file-content"><code class="hljs">${view.text}</code></pre>`;
  } else body = html`<div class="vm-note">loading…</div>`;

  return html`
    <div class="vm-file" data-path=${path}>
      <div class="vm-file-head">
        <span class="vm-file-path">${path}</span>
        ${view.size != null && html`<span class="vm-muted">${formatSize(view.size)}</span>`}
        ${view.truncated && html`<span class="vm-muted">(first ${formatSize(VIEW_LIMIT)} shown)</span>`}
        <button type="button" class="vm-download" onClick=${download}>Download</button>
      </div>
      ${body}
    </div>
  `;
}
