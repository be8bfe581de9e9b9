// Controls (admins): autonomy, the kill switch, tools and policies, and the
// recent decisions the shadow policies would have changed.
import * as api from "./api.js";
import { h, show, toast, json, table, facts, when, status, confirmDialog, guarded } from "./ui.js";

const LEVELS = ["suggest_only", "one_click", "unattended"];
const LABELS = { suggest_only: "Suggest only", one_click: "One click", unattended: "Unattended" };

async function patch(ctx, body, message) {
  try {
    const answer = await api.call("PATCH", `/v1/tenants/${encodeURIComponent(ctx.who.tenant)}`, body);
    toast(answer.change_request ? "A second admin must approve this change." : message);
  } catch (e) {
    toast(e.message, true);
  }
  await controls(ctx);
}

function autonomy(ctx, tenant) {
  const slider = h("input", { id: "autonomy", type: "range", min: 0, max: 2, step: 1, value: LEVELS.indexOf(tenant.autonomy),
    "aria-valuetext": LABELS[tenant.autonomy], list: "autonomy-levels" });
  const label = h("output", { for: "autonomy" }, LABELS[tenant.autonomy]);
  slider.addEventListener("input", () => {
    label.textContent = LABELS[LEVELS[slider.value]];
    slider.setAttribute("aria-valuetext", label.textContent);
  });
  return h("section", { class: "panel" }, h("h2", {}, "Autonomy"),
    h("label", { for: "autonomy" }, "How far actions may run without a click"),
    h("div", { class: "row" }, slider, label),
    h("datalist", { id: "autonomy-levels" }, LEVELS.map((l, i) => h("option", { value: i, label: LABELS[l] }))),
    h("div", { class: "row" }, h("button", { type: "button", onclick: () => patch(ctx, { autonomy: LEVELS[slider.value] }, `Autonomy is now ${label.textContent}.`) }, "Apply autonomy")));
}

function killSwitch(ctx, tenant) {
  const on = tenant.kill_switch;
  return h("section", { class: "panel" }, h("h2", {}, "Kill switch"),
    h("p", { class: on ? "bad" : "" }, on ? "On: actions are suggest-only and hosted models are stopped." : "Off."),
    h("button", { type: "button", class: on ? "secondary" : "danger", onclick: async () => {
      if (!on && !(await confirmDialog("Turn the kill switch on?", h("p", {}, "Actions drop to suggest-only and hosted model calls stop at once."), "Turn it on"))) return;
      await patch(ctx, { kill_switch: !on }, on ? "The kill switch is off; raise autonomy again when ready." : "The kill switch is on.");
    } }, on ? "Turn the kill switch off" : "Kill switch…"));
}

/** Recent actions whose shadow policies decided differently from the enforced ones. */
function shadowChanges(actions) {
  const changed = actions.filter((a) => (a.policy || []).some((d) => d.shadow && d.shadow.allowed !== d.allowed));
  return changed.length
    ? table(["Action", "Status", "When", "Enforced → shadow"], changed.map((a) => [h("a", { href: `#/actions/${encodeURIComponent(a.action_id)}` }, `${a.tool} v${a.tool_version}`),
      status(a.status), when(a.created_at),
      a.policy.filter((d) => d.shadow && d.shadow.allowed !== d.allowed).map((d) => `${d.verb}: ${d.allowed ? "allow" : "deny"} → ${d.shadow.allowed ? "allow" : "deny"}`).join("; ")]))
    : h("p", { class: "muted" }, "The shadow policies would not have changed any of the last 200 actions.");
}

export async function controls(ctx) {
  await guarded("Controls", async () => {
    const [tenant, tools, policies, recent] = await Promise.all([
      api.call("GET", `/v1/tenants/${encodeURIComponent(ctx.who.tenant)}`), api.call("GET", "/v1/tools"),
      api.call("GET", "/v1/policies"), api.call("GET", "/v1/actions?limit=200")]);
    show("Controls", facts([["Tenant", `${tenant.name} (${tenant.id})`], ["Plan", tenant.plan], ["Status", tenant.status]]),
      h("div", { class: "grid" }, autonomy(ctx, tenant), killSwitch(ctx, tenant)),
      h("h2", {}, "Tools"),
      table(["Tool", "Version", "Risk", "Autonomy cap", "Input schema"], tools.tools.map((t) => [t.name, String(t.version), t.risk, t.autonomy ?? "—",
        h("details", {}, h("summary", {}, "schema"), json(t.input_schema))])),
      h("h2", {}, "Policies"),
      h("h3", {}, `Enforced (version ${policies.enforced.version})`), h("pre", {}, policies.enforced.policies || "(Keel's defaults only)"),
      h("h3", {}, `Shadow (version ${policies.shadow.version})`), h("pre", {}, policies.shadow.policies || "(none)"),
      h("h2", {}, "What the shadow policies would have changed"), shadowChanges(recent.actions));
  });
}
