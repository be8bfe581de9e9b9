// Explain why: one decision's events — the question, the evidence with its
// citations and anchors, the route the gateway took and why, tier, model,
// tokens, cost, groundedness, guard flags and the policies that decided.
import * as api from "./api.js";
import { h, show, json, table, facts, when, usd, guarded } from "./ui.js";

const anchor = (a) => (a ? `chunk ${a.chunk}, chars ${a.start}–${a.end}` : "");

function evidence(event) {
  const cited = new Set(event.outcome?.citations || []);
  const rows = (Array.isArray(event.evidence) ? event.evidence : []).map((e, i) => [
    `[${i + 1}]`, e.doc_id ?? e.chunk_id, anchor(e.anchor), cited.has(e.chunk_id) ? "cited" : "",
    e.stale ? h("span", { class: "warn" }, "stale") : "", e.injection_flags ? h("span", { class: "bad" }, `${e.injection_flags} flag(s)`) : "",
    e.score === undefined ? "" : Number(e.score).toFixed(3)]);
  return rows.length ? table(["#", "Document", "Anchor", "Cited", "Fresh", "Guard", "Score"], rows) : h("p", { class: "muted" }, "No evidence recorded.");
}

/** One event's panel: gateway decisions get their route and usage, actions their outcome. */
export function eventPanel(entry) {
  const e = entry.event;
  const out = e.outcome || {};
  const usage = e.usage || {};
  const parts = [h("h2", {}, `${e.kind} · ${e.principal} · ${when(e.at)}`),
    facts([["Question", e.input?.question], ["Refused", out.refused === undefined ? undefined : (out.refused ? `yes: ${out.reason || ""}` : "no")],
      ["Tier", out.tier], ["Model", out.model], ["Groundedness", out.groundedness === undefined || out.groundedness === null ? undefined : Number(out.groundedness).toFixed(2)],
      ["Cached", out.cached === undefined ? undefined : (out.cached ? "yes" : "no")], ["Degraded", out.degraded],
      ["Tokens", usage.input_tokens === undefined ? undefined : `${usage.input_tokens} in, ${usage.output_tokens} out`],
      ["Cost", usage.cost_micro_usd === undefined ? undefined : usd(usage.cost_micro_usd / 1e6)],
      ["Latency", e.latency_ms === undefined ? undefined : `${e.latency_ms} ms`], ["Request", e.request_id], ["Trace", e.trace_id],
      ["Entry", `#${entry.seq}, hash ${entry.hash.slice(0, 16)}…`]])];
  if (Array.isArray(out.route) && out.route.length) parts.push(h("h3", {}, "Route and why"), h("ol", {}, out.route.map((r) => h("li", {}, r))));
  if (e.kind === "ask") parts.push(h("h3", {}, "Evidence"), evidence(e));
  if (e.action && Object.keys(e.action).length) {
    const policy = e.action.policy || out.policy;
    if (policy) parts.push(h("h3", {}, "Policies"), json(policy));
    parts.push(h("h3", {}, "Action"), json(e.action));
  }
  if (!["ask"].includes(e.kind)) parts.push(h("h3", {}, "Outcome"), json(out));
  return h("section", { class: "panel", "aria-label": `${e.kind} event` }, parts);
}

/** The events of a decision; the log is written just after a request, so a fresh one is retried briefly. */
export async function decisionEvents(id, attempts = 1) {
  for (let i = 0; ; i++) {
    try {
      return await api.call("GET", `/v1/decisions/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status !== 404 || i + 1 >= attempts) throw e;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

export async function explain(ctx, id) {
  await guarded("Explain why", async () => {
    if (!id) {
      const input = h("input", { id: "decision-id", type: "text" });
      return show("Explain why", h("form", { onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/decisions/${encodeURIComponent(input.value.trim())}`; } },
        h("label", { for: "decision-id" }, "Decision id"), input, h("div", { class: "row" }, h("button", { type: "submit" }, "Explain"))));
    }
    const decision = await decisionEvents(id, 5);
    show(`Explain why: ${id}`, decision.events.map(eventPanel));
  });
}
