// The console's shell: sign-in, the role-aware navigation and the hash routes.
import * as api from "./api.js";
import { h, show, toast } from "./ui.js";
import { inbox, actionList, actionDetail } from "./actions.js";
import { explain } from "./explain.js";
import { ask } from "./ask.js";
import { usage } from "./usage.js";
import { audit } from "./audit.js";
import { controls } from "./controls.js";

const has = (who, ...roles) => roles.some((r) => who.roles.includes(r));
const reviews = (who) => has(who, "approver", "admin");

/** The views a principal may open, in navigation order. */
function views(who) {
  return [
    ["#/ask", "Ask", true],
    ["#/inbox", "Approvals", reviews(who)],
    ["#/actions", "Actions", true],
    ["#/audit", "Audit", true],
    ["#/usage", "Usage", has(who, "admin", "approver", "auditor")],
    ["#/controls", "Controls", has(who, "admin")],
  ].filter(([, , allowed]) => allowed);
}

let who = null;

function signInView(message) {
  const input = h("input", { id: "credential", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "credential-help" });
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      api.signIn(input.value);
      who = null;
      await route();
    },
  },
  h("label", { for: "credential" }, "API key or token"),
  input,
  h("p", { id: "credential-help", class: "muted" }, "A key from your tenant's admin, or a token from your identity provider. It is kept for this tab only."),
  h("button", { type: "submit" }, "Sign in"));
  show("Sign in", message ? h("p", { class: "error-text", role: "alert" }, message) : "", form);
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  input.focus();
}

async function pendingCount() {
  try {
    const page = await api.call("GET", "/v1/actions?status=pending_approval&limit=200");
    return page.actions.length;
  } catch (_) {
    return null;
  }
}

async function renderNav() {
  const current = location.hash.split("?")[0].split("/").slice(0, 2).join("/");
  const count = reviews(who) ? await pendingCount() : null;
  const items = views(who).map(([href, label]) => h("li", {},
    h("a", { href, "aria-current": current === href ? "page" : null }, label,
      href === "#/inbox" && count ? [" ", h("span", { class: "badge", "aria-label": `${count} pending` }, count)] : [])));
  document.getElementById("nav").replaceChildren(h("ul", {}, items));
  document.getElementById("who").replaceChildren(
    h("span", {}, `${who.principal} · ${who.tenant} · ${who.roles.join(", ")}`),
    h("button", { type: "button", class: "link", onclick: () => { api.signOut(); who = null; location.hash = "#/signin"; } }, "Sign out"));
}

async function route() {
  if (!api.credential()) return signInView();
  if (!who) {
    try {
      who = await api.me();
    } catch (e) {
      api.signOut();
      return signInView(e.status === 401 ? "That key or token was not accepted." : e.message);
    }
    if (!who.tenant) {
      api.signOut();
      return signInView("The console is for a tenant's principals: sign in with a tenant key, not the platform admin's.");
    }
  }
  const [, view, id] = location.hash.split("?")[0].split("/");
  const allowed = views(who).map(([href]) => href.slice(2));
  if (!view || view === "signin" || (!allowed.includes(view) && view !== "decisions")) {
    location.hash = reviews(who) ? "#/inbox" : "#/ask";
    return;
  }
  await renderNav();
  const ctx = { who, has: (...roles) => has(who, ...roles), refreshNav: renderNav };
  switch (view) {
    case "inbox": return inbox(ctx);
    case "actions": return id ? actionDetail(ctx, decodeURIComponent(id)) : actionList(ctx);
    case "decisions": return explain(ctx, decodeURIComponent(id || ""));
    case "ask": return ask(ctx);
    case "usage": return usage(ctx);
    case "audit": return audit(ctx);
    case "controls": return controls(ctx);
    default: return toast(`No view ${view}`, true);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
