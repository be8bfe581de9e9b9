// Small DOM helpers. Every value from the API goes in as text, never as HTML.

/** An element with attributes (on* as listeners) and children (strings become text). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM: the content policy refuses style attributes.
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces the main view, titles it and moves focus to it (screen readers announce the change). */
export function show(title, ...content) {
  const main = document.getElementById("main");
  main.replaceChildren(h("h1", {}, title), ...content);
  document.title = `${title} · Keel console`;
  main.focus();
}

export function toast(message, error = false) {
  const box = document.getElementById("toast");
  box.replaceChildren(h("p", { class: error ? "error" : "" }, message));
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.replaceChildren(), 6000);
}

export const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));

export function table(headings, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))));
}

export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
export const usd = (n) => (n === null || n === undefined ? "–" : `$${Number(n).toFixed(n < 0.01 && n > 0 ? 6 : 2)}`);
export const pct = (n) => (n === null || n === undefined ? "–" : `${(n * 100).toFixed(1)}%`);
export const status = (s) => h("span", { class: `status ${s}` }, String(s).replace(/_/g, " "));

/** A confirmation dialog; resolves true when confirmed. */
export function confirmDialog(title, body, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { "aria-labelledby": "dialog-title" });
    const close = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    dialog.append(h("h2", { id: "dialog-title" }, title), body,
      h("div", { class: "row" },
        h("button", { type: "button", class: "danger", onclick: () => close(true) }, confirmLabel),
        h("button", { type: "button", class: "secondary", onclick: () => close(false) }, "Cancel")));
    dialog.addEventListener("cancel", () => resolve(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Runs an async view body, showing its error instead of a blank page. */
export async function guarded(title, body) {
  try {
    await body();
  } catch (e) {
    show(title, h("p", { class: "error-text", role: "alert" }, e.message || String(e)));
  }
}
