// Usage and budgets: cost per day, router mix, cache hit rate, cost per
// successful action and the budget against its limit.
import * as api from "./api.js";
import { h, show, table, facts, usd, pct, guarded } from "./ui.js";

function bars(label, points) {
  const max = Math.max(...points.map((p) => p.value), 0) || 1;
  return h("figure", {}, h("div", { class: "bars", role: "img", "aria-label": `${label}: ${points.map((p) => `${p.label} ${p.text}`).join(", ")}` },
    points.map((p) => h("span", { title: `${p.label}: ${p.text}`, style: { height: `${Math.max(2, (100 * p.value) / max)}%` } }))),
  h("figcaption", { class: "muted" }, label));
}

function meter(label, used, limit) {
  const share = limit ? Math.min(1, used / limit) : 0;
  return h("div", {}, h("p", {}, `${label}: ${usd(used)} of ${limit ? usd(limit) : "no limit"}`),
    limit ? h("div", { class: "meter", role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used },
      h("span", { style: { width: `${(share * 100).toFixed(1)}%` } })) : "");
}

export async function usage() {
  await guarded("Usage", async () => {
    const u = await api.call("GET", "/v1/usage");
    const r = u.report?.totals || {};
    const mix = Object.entries(r.router_mix || {});
    const total = mix.reduce((n, [, v]) => n + v, 0) || 1;
    const budget = u.budget || {};
    show(`Usage, ${u.period}`,
      facts([["Requests", r.requests], ["Cost", usd(u.cost_usd)], ["Cache hit rate", pct(u.cache_hit_rate)],
        ["Cost per successful action", usd(r.cost_per_successful_action_usd)], ["Successful actions", r.successful_actions],
        ["Reversal rate", pct(r.reversal_rate)]]),
      h("h2", {}, "Budget"), meter("This month", budget.spent_usd || 0, budget.monthly_usd),
      Object.entries(budget.workflows || {}).map(([w, b]) => meter(`Workflow ${w}`, b.spent_usd, b.limit_usd)),
      h("h2", {}, "Cost per day"),
      bars("Cost per day", (u.report?.daily || []).map((d) => ({ label: d.day, value: d.cost_usd, text: usd(d.cost_usd) }))),
      h("h2", {}, "Router mix"),
      mix.length ? table(["Tier", "Requests", "Share"], mix.map(([tier, n]) => [tier, n, pct(n / total)])) : h("p", { class: "muted" }, "No requests yet."),
      h("h2", {}, "Cost by model"),
      table(["Model", "Cost", "Tokens"], Object.entries(r.cost_by_model_usd || {}).map(([m, c]) => [m, usd(c), (r.tokens_by_model || {})[m] ?? ""])));
  });
}
