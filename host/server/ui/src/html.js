// `html` (htm bound to Preact's h) and hash links, shared by every page.
import { h } from "preact";
import htm from "htm";

export const html = htm.bind(h);

// A hash link: href("runs", name, key, id) → "#/runs/<enc name>/<enc key>/<id>".
export function href(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}
