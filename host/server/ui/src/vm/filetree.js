// The file tree of a vm: directories load when opened (GET /vms/{key}/ls/...), and
// reload when the watch reports a change inside them. Names are sandbox-provided:
// text nodes only.
import { useEffect, useState, useCallback } from "preact/hooks";
import { html, parentOf } from "./html.js";
import { lsUrl } from "./http.js";

function sortEntries(entries) {
  return [...entries].sort((a, b) => {
    const ad = a.type === "dir" ? 0 : 1;
    const bd = b.type === "dir" ? 0 : 1;
    return ad - bd || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  });
}

export const MAX_SHOWN = 2000;

/**
 * props: api, vmKey, root ("/home/user"), selected (path), onSelect(entry),
 * change ({path, kind, n}: the last watch event), reloadAll (a counter).
 */
export default function FileTree({ api, vmKey, root, selected, onSelect, change, reloadAll }) {
  // path → {entries?, error?, loading}
  const [dirs, setDirs] = useState({});
  const [open, setOpen] = useState(() => new Set([root]));

  const load = useCallback(
    async (path) => {
      setDirs((d) => ({ ...d, [path]: { ...(d[path] || {}), loading: true } }));
      try {
        const listing = await api.get(lsUrl(vmKey, path));
        setDirs((d) => ({ ...d, [path]: { entries: sortEntries(listing.entries), loading: false } }));
      } catch (err) {
        setDirs((d) => ({ ...d, [path]: { error: String(err.message || err), loading: false } }));
      }
    },
    [api, vmKey],
  );

  useEffect(() => {
    setDirs({});
    load(root);
    for (const p of open) if (p !== root) load(p);
  }, [api, vmKey, root, reloadAll]);

  // A change inside an open directory reloads it (a created file appears, a
  // deleted one goes); a deleted open directory is closed.
  useEffect(() => {
    if (!change) return;
    const dir = parentOf(change.path);
    if (open.has(dir)) load(dir);
    if (change.kind === "deleted" && open.has(change.path)) {
      setOpen((o) => {
        const n = new Set(o);
        n.delete(change.path);
        return n;
      });
    }
  }, [change]);

  const toggle = (entry) => {
    const path = entry.path;
    setOpen((o) => {
      const n = new Set(o);
      if (n.has(path)) n.delete(path);
      else {
        n.add(path);
        load(path);
      }
      return n;
    });
  };

  const renderDir = (path, depth) => {
    const d = dirs[path];
    if (!d || (d.loading && !d.entries)) {
      return html`<li class="vm-tree-note" style=${{ paddingLeft: `${depth}em` }}>loading…</li>`;
    }
    if (d.error) {
      return html`<li class="vm-tree-error" style=${{ paddingLeft: `${depth}em` }}>${d.error}</li>`;
    }
    if (d.entries.length === 0) {
      return html`<li class="vm-tree-note" style=${{ paddingLeft: `${depth}em` }}>(empty)</li>`;
    }
    // A sandbox can make a directory of millions of entries: the page draws the
    // first MAX_SHOWN (sorted, directories first) and says how many it left out.
    const shown = d.entries.slice(0, MAX_SHOWN);
    const more = d.entries.length - shown.length;
    const items = shown.map((e) => {
      // The path from the listed directory and the name (not the sandbox's `path`).
      const entry = { ...e, path: path === "/" ? `/${e.name}` : `${path}/${e.name}` };
      const isDir = entry.type === "dir";
      const isOpen = isDir && open.has(entry.path);
      const click = () => {
        if (isDir) toggle(entry);
        onSelect(entry);
      };
      return html`
        <li key=${entry.path}>
          <div
            class=${"vm-tree-entry" + (selected === entry.path ? " selected" : "")}
            data-path=${entry.path}
            data-type=${entry.type}
            style=${{ paddingLeft: `${depth}em` }}
            role="treeitem"
            aria-expanded=${isDir ? String(isOpen) : undefined}
            onClick=${click}
          >
            <span class="vm-tree-icon">${isDir ? (isOpen ? "▾" : "▸") : "·"}</span>
            <span class="vm-tree-name">${entry.name}</span>
          </div>
          ${isOpen && html`<ul class="vm-tree-children">${renderDir(entry.path, depth + 1)}</ul>`}
        </li>
      `;
    });
    if (more > 0) {
      items.push(
        html`<li key="(more)" class="vm-tree-note" style=${{ paddingLeft: `${depth}em` }}>
          … ${more} more not shown
        </li>`,
      );
    }
    return items;
  };

  return html`
    <div class="vm-tree" role="tree">
      <div class="vm-tree-root" data-path=${root}>${root}</div>
      <ul class="vm-tree-children">${renderDir(root, 0.5)}</ul>
    </div>
  `;
}
