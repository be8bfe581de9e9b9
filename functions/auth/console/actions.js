// Approvals inbox, the action list and one action: its preview as a diff,
// the policies that decided, its timeline, and approve / reject / undo.
import * as api from "./api.js";
import { h, show, toast, json, table, facts, when, status, confirmDialog, guarded } from "./ui.js";

const STATUSES = ["pending_approval", "running", "executed", "failed", "rejected", "expired", "undone", "suggested", "compensating", "undoing"];

const actionLink = (a) => h("a", { href: `#/actions/${encodeURIComponent(a.action_id)}` }, `${a.tool} v${a.tool_version}`);

function actionRows(actions) {
  return table(["Action", "Status", "Proposer", "Risk", "Proposed"],
    actions.map((a) => [actionLink(a), status(a.status), a.proposer, a.preview?.impact?.risk ?? "", when(a.created_at)]));
}

export async function inbox(ctx) {
  await guarded("Approvals", async () => {
    const page = await api.call("GET", "/v1/actions?status=pending_approval&limit=200");
    const n = page.actions.length;
    show("Approvals",
      h("p", { "aria-live": "polite" }, n === 0 ? "Nothing waits for your approval." : `${n} pending action${n === 1 ? "" : "s"}, newest first.`),
      n ? actionRows(page.actions) : "");
  });
}

export async function actionList(ctx, cursor) {
  await guarded("Actions", async () => {
    const filter = new URLSearchParams(location.hash.split("?")[1] || "").get("status") || "";
    const query = new URLSearchParams({ limit: "50" });
    if (filter) query.set("status", filter);
    if (cursor) query.set("cursor", cursor);
    const page = await api.call("GET", `/v1/actions?${query}`);
    const select = h("select", { id: "status-filter", onchange: () => { location.hash = select.value ? `#/actions?status=${select.value}` : "#/actions"; } },
      h("option", { value: "" }, "every status"), STATUSES.map((s) => h("option", { value: s, selected: s === filter }, s.replace(/_/g, " "))));
    const more = page.next_cursor ? h("button", { type: "button", class: "secondary", onclick: () => actionList(ctx, page.next_cursor) }, "Older actions") : "";
    show("Actions", await proposeForm(),
      h("h2", {}, "History"),
      h("p", { class: "muted" }, ctx.has("approver", "admin", "auditor") ? "Every action of your tenant." : "The actions you proposed."),
      h("label", { for: "status-filter" }, "Status"), select,
      page.actions.length ? actionRows(page.actions) : h("p", {}, "No actions."), more);
  });
}

/** Propose an action: a registered tool and its arguments; the answer shows its preview. */
async function proposeForm() {
  const { tools } = await api.call("GET", "/v1/tools");
  if (!tools.length) return h("p", { class: "muted" }, "No tools are registered yet.");
  const tool = h("select", { id: "propose-tool" }, tools.map((t) => h("option", { value: t.name }, `${t.name} v${t.version} (${t.risk} risk)`)));
  const args = h("textarea", { id: "propose-args", spellcheck: "false" }, "{}");
  return h("form", { class: "panel", "aria-label": "Propose an action", onsubmit: async (ev) => {
    ev.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(args.value);
    } catch (e) {
      toast(`The arguments are not JSON: ${e.message}`, true);
      return args.focus();
    }
    try {
      const a = await api.call("POST", "/v1/actions", { tool: tool.value, args: parsed, idempotency_key: `console-${crypto.randomUUID()}` });
      location.hash = `#/actions/${encodeURIComponent(a.action_id)}`;
    } catch (e) {
      toast(e.message, true);
    }
  } }, h("h2", {}, "Propose an action"), h("label", { for: "propose-tool" }, "Tool"), tool,
  h("label", { for: "propose-args" }, "Arguments (JSON)"), args, h("div", { class: "row" }, h("button", { type: "submit" }, "Propose")));
}

/** Before → after where the connector's dry run returns state; the requests each step will send otherwise. */
function previewDiff(preview) {
  // The connector's answer as Keel recorded it: {status, body}, or {error}.
  const answer = preview?.dry_run;
  const dry = answer?.body ?? answer;
  if (dry && typeof dry === "object" && dry.before && dry.after) {
    const keys = [...new Set([...Object.keys(dry.before), ...Object.keys(dry.after)])];
    const cell = (v) => (v === undefined ? "—" : JSON.stringify(v));
    return h("table", { class: "diff", "aria-label": "Preview: before and after" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "Before"), h("th", { scope: "col" }, "After"))),
      h("tbody", {}, keys.map((k) => {
        const same = JSON.stringify(dry.before[k]) === JSON.stringify(dry.after[k]);
        return h("tr", { class: same ? "same" : "changed" }, h("td", {}, k),
          h("td", { class: "before" }, cell(dry.before[k])), h("td", { class: "after" }, same ? cell(dry.after[k]) : `${cell(dry.after[k])} (changed)`));
      })));
  }
  return h("div", {},
    answer && answer.error ? h("p", { class: "warn" }, `The dry run failed: ${answer.error}`) : h("p", { class: "muted" }, "The tool has no dry run that returns state; these are the requests each step will send."),
    table(["Step", "Request", "Body"], (preview?.requests || []).map((r) => [r.step, `${r.method} ${r.url}`, json(r.body)])));
}

function policies(decisions) {
  return table(["Verb", "Decision", "Policies", "Shadow policies would"], (decisions || []).map((d) => [
    d.verb, h("span", { class: d.allowed ? "ok" : "bad" }, d.allowed ? "allow" : "deny"), d.policies.join(", ") || "—",
    d.shadow ? `${d.shadow.allowed ? "allow" : "deny"} (${d.shadow.policies.join(", ") || "no policy"})${d.shadow.allowed !== d.allowed ? " — differs" : ""}` : "—"]));
}

function timeline(a) {
  const items = [h("li", {}, h("strong", {}, "Proposed"), ` by ${a.proposer}, ${when(a.created_at)}`)];
  for (const r of a.approvals || []) {
    items.push(h("li", {}, h("strong", {}, r.decision === "approved" ? "Approved" : "Rejected"), ` by ${r.principal}, ${when(r.at)}`,
      r.reason ? h("div", {}, `Reason: ${r.reason}`) : ""));
  }
  for (const s of a.steps || []) {
    if (s.outcome !== null && s.outcome !== undefined) items.push(h("li", {}, h("strong", {}, `Step ${s.name} ran`), h("div", {}, "Connector answered:"), json(s.outcome)));
    if (s.compensation !== null && s.compensation !== undefined) items.push(h("li", {}, h("strong", {}, `Step ${s.name} compensated`), json(s.compensation)));
  }
  items.push(h("li", {}, h("strong", {}, "Now "), status(a.status), ` (updated ${when(a.updated_at)})`, a.error ? h("div", { class: "bad" }, a.error) : ""));
  return h("ol", { class: "timeline", "aria-label": "Timeline" }, items);
}

async function review(ctx, a, verb, reason) {
  try {
    await api.call("POST", `/v1/actions/${encodeURIComponent(a.action_id)}/${verb}`, { seen_updated_at: a.updated_at, ...(reason ? { reason } : {}) });
    toast(verb === "approve" ? "Approved: the saga runs it now." : "Rejected.");
    await ctx.refreshNav();
  } catch (e) {
    toast(e.status === 409 ? `Not applied: ${e.message}` : e.message, true);
  }
  await actionDetail(ctx, a.action_id);
}

function reviewControls(ctx, a) {
  if (a.status !== "pending_approval" || !ctx.has("approver", "admin")) return "";
  const reason = h("textarea", { id: "reject-reason", "aria-describedby": "reason-help" });
  const reject = h("button", { type: "button", class: "danger", onclick: () => {
    if (!reason.value.trim()) { toast("Say why you reject it.", true); reason.focus(); return; }
    review(ctx, a, "reject", reason.value.trim());
  } }, "Reject");
  const own = a.proposer === ctx.who.principal;
  return h("section", { class: "panel", "aria-label": "Review" }, h("h2", {}, "Review"),
    own ? h("p", { class: "warn" }, "You proposed this action: someone else must approve it.")
      : h("div", { class: "row" }, h("button", { type: "button", onclick: () => review(ctx, a, "approve") }, "Approve")),
    h("label", { for: "reject-reason" }, "Reason to reject"), reason,
    h("p", { id: "reason-help", class: "muted" }, "Recorded in the decision log with your name."), h("div", { class: "row" }, reject));
}

/** The compensations an undo runs, in order. */
function rollbackPlan(a) {
  return table(["Step", "Compensation"], (a.preview?.rollback?.steps || []).map((s) => [s.step, s.url ? `${s.method} ${s.url}` : s.note]));
}

function undoControls(ctx, a) {
  if (a.status !== "executed" || !a.preview?.impact?.reversible) return "";
  const plan = rollbackPlan(a);
  return h("div", { class: "row" }, h("button", { type: "button", class: "danger", onclick: async () => {
    const ok = await confirmDialog("Undo this action?", h("div", {}, h("p", {}, "These compensations run once, in this order:"), plan), "Run the compensation");
    if (!ok) return;
    try {
      await api.call("POST", `/v1/actions/${encodeURIComponent(a.action_id)}/undo`);
      toast("Undo requested: the compensation runs now.");
    } catch (e) {
      toast(e.message, true);
    }
    await actionDetail(ctx, a.action_id);
  } }, "Undo…"));
}

export async function actionDetail(ctx, id) {
  await guarded("Action", async () => {
    const a = await api.call("GET", `/v1/actions/${encodeURIComponent(id)}`);
    const impact = a.preview?.impact || {};
    show(`${a.tool} v${a.tool_version}`,
      facts([["Status", status(a.status)], ["Proposer", a.proposer], ["Proposed", when(a.created_at)], ["Workflow", a.workflow],
        ["Action id", a.action_id], ["Explain why", h("a", { href: `#/decisions/${encodeURIComponent(a.action_id)}` }, "the decision log of this action")]]),
      h("div", { class: "grid" },
        h("div", {},
          h("h2", {}, "Arguments"), json(a.args),
          h("h2", {}, "Preview"), previewDiff(a.preview),
          h("h2", {}, "Impact"), facts([["Risk", impact.risk], ["Reversible", impact.reversible ? "yes" : "no"], ["Steps", impact.steps], ["Tool", impact.description]]),
          h("h2", {}, "Rollback plan"),
          rollbackPlan(a),
          h("h2", {}, "Policies"), policies(a.policy)),
        h("div", {}, reviewControls(ctx, a), h("h2", {}, "Timeline"), timeline(a), undoControls(ctx, a))));
  });
}
