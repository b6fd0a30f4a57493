import { html } from "../html.js";

export default function Page({ params }) {
  return html`<section><h1>metrics</h1><pre>${JSON.stringify(params)}</pre></section>`;
}
