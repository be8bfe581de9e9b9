// Audit: the decision log with filters, its verification, and export.
import * as api from "./api.js";
import { h, show, toast, table, when, guarded } from "./ui.js";

const KINDS = ["", "ask", "chat", "classify", "rank", "action.proposed", "action.approved", "action.rejected", "action.executed",
  "action.failed", "action.expired", "action.undo_requested", "action.undone", "admin.change", "budget.alert"];

async function exportLog() {
  try {
    const text = await api.call("GET", "/v1/audit/export");
    const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" })), download: "keel-audit.jsonl" });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (e) {
    toast(e.message, true);
  }
}

export async function audit(ctx, cursor) {
  await guarded("Audit", async () => {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    const query = new URLSearchParams({ limit: "50" });
    for (const k of ["kind", "principal", "since"]) if (params.get(k)) query.set(k, params.get(k));
    if (cursor) query.set("cursor", cursor);
    const page = await api.call("GET", `/v1/decisions?${query}`);
    const kind = h("select", { id: "kind" }, KINDS.map((k) => h("option", { value: k, selected: k === (params.get("kind") || "") }, k || "every kind")));
    const principal = h("input", { id: "principal", type: "text", value: params.get("principal") || "" });
    const since = h("input", { id: "since", type: "text", placeholder: "2026-12-01T00:00:00Z", value: params.get("since") || "" });
    const filters = h("form", { onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (kind.value) q.set("kind", kind.value);
      if (principal.value.trim()) q.set("principal", principal.value.trim());
      if (since.value.trim()) q.set("since", since.value.trim());
      location.hash = `#/audit?${q}`;
    } }, h("label", { for: "kind" }, "Kind"), kind,
    ctx.has("admin", "auditor") ? [h("label", { for: "principal" }, "Principal"), principal] : "",
    h("label", { for: "since" }, "Since (RFC 3339)"), since, h("div", { class: "row" }, h("button", { type: "submit" }, "Filter")));
    const result = h("div", { "aria-live": "polite" });
    const verify = h("button", { type: "button", class: "secondary", onclick: async () => {
      try {
        const v = await api.call("POST", "/v1/audit/verify");
        result.replaceChildren(h("p", { class: v.ok ? "ok" : "bad" },
          v.ok ? `The chain verifies: ${v.entries} entries, head ${String(v.head).slice(0, 16)}…` : `The chain does not verify: ${v.problems.map((p) => `#${p.seq} ${p.problem}`).join("; ")}`));
      } catch (e) {
        toast(e.message, true);
      }
    } }, "Verify the chain");
    const more = page.next_cursor ? h("button", { type: "button", class: "secondary", onclick: () => audit(ctx, page.next_cursor) }, "Older events") : "";
    show("Audit", h("div", { class: "row" }, ctx.has("admin", "approver", "auditor") ? verify : "", ctx.has("admin", "auditor") ? h("button", { type: "button", class: "secondary", onclick: exportLog }, "Export (JSON Lines)") : ""),
      result, filters,
      table(["#", "Recorded", "Kind", "Principal", "Decision"], page.events.map((e) => [String(e.seq), when(e.recorded_at), e.event.kind, e.event.principal,
        h("a", { href: `#/decisions/${encodeURIComponent(e.event.decision_id)}` }, e.event.decision_id)])),
      more);
  });
}
