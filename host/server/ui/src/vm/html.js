// Preact + htm for the VM pages. Everything rendered through `html` is escaped by
// Preact: names, contents and argv from a sandbox are hostile and only ever become
// text nodes (the highlighter's escaped output in fileview.js is the one exception).
import { h } from "preact";
import htm from "htm";

export const html = htm.bind(h);

/** A key path part list → the URL form the server routes on (`a,b`, `a%2Cb`). */
export function encodeKey(key) {
  const parts = Array.isArray(key) ? key : [key];
  return parts.map((p) => encodeURIComponent(String(p))).join(",");
}

/** Is `encoded` a key in the API form, safe to put in a URL path? The key comes
 * from the page's address, which anyone can link to: a `/`, `?`, `#` or a dot
 * segment would make the page's calls reach other routes with the user's token. */
export function isKeyPath(encoded) {
  if (typeof encoded !== "string" || !/^[A-Za-z0-9._~%,!*'()-]{1,1024}$/.test(encoded)) return false;
  return encoded.split(",").every((p) => p !== "" && p !== "." && p !== "..");
}

/** The URL form back to readable text (for titles only). */
export function displayKey(encoded) {
  try {
    return encoded.split(",").map(decodeURIComponent).join(",");
  } catch {
    return encoded;
  }
}

/** An absolute sandbox path → its URL form (each segment percent-encoded). */
export function encodePath(path) {
  return path
    .split("/")
    .filter((s) => s !== "")
    // "." and ".." would be resolved away by the browser's URL parser.
    .map((s) => (s === "." || s === ".." ? s.replaceAll(".", "%2E") : encodeURIComponent(s)))
    .join("/");
}

export function parentOf(path) {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

export function basename(path) {
  const i = path.lastIndexOf("/");
  return i < 0 ? path : path.slice(i + 1);
}

export function age(seconds) {
  if (seconds == null) return "";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function formatSize(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** Add a stylesheet once (vendored CSS: style-src 'self'). */
export function useStylesheet(href) {
  if (document.querySelector(`link[data-vm-css="${href}"]`)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  link.dataset.vmCss = href;
  document.head.appendChild(link);
}
