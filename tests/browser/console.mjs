// Drives the console in headless Chromium, as its users would: a member asks
// and opens explain-why, proposes a high-risk action; an approver finds it in
// the inbox with its diff, cannot approve their own proposal, approves the
// member's, sees it executed and undoes it once; an admin turns the kill
// switch on; an approver reaches approve by keyboard alone. Screenshots of
// each view go to $KEEL_SCREENSHOTS. Run by tests/tests/console_browser.rs,
// which prepares the stack and checks what the connector saw afterwards.
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("KEEL_URL");
const keys = { member: env("KEEL_MEMBER_KEY"), approver: env("KEEL_APPROVER_KEY"), admin: env("KEEL_ADMIN_KEY") };
const shots = env("KEEL_SCREENSHOTS");
const TIMEOUT = 15000;
/** Every page opened, so that a failure leaves a screenshot of where it stood. */
const pages = [];

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function signIn(browser, role) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && !m.text().includes("status of 4") && problems.push(m.text()));
  pages.push(page);
  const started = Date.now();
  await page.goto(`${url}/console`);
  await page.getByLabel("API key or token").waitFor();
  const firstView = Date.now() - started;
  await page.getByLabel("API key or token").fill(keys[role]);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  return { context, page, problems, firstView };
}

async function snap(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

async function memberAsksAndProposes(browser) {
  const { context, page, problems, firstView } = await signIn(browser, "member");
  check(firstView < 1000, `first view in ${firstView} ms`);
  await snap(page, "01-ask-empty");
  check(await page.getByRole("link", { name: /Approvals/ }).count() === 0, "a member is not offered the approvals inbox");
  check(await page.getByRole("link", { name: "Controls" }).count() === 0, "a member is not offered the controls");
  await page.getByLabel("Question").fill("How long do refunds take?");
  await page.getByRole("button", { name: "Ask" }).click();
  await page.getByRole("heading", { name: "Citations" }).waitFor();
  const answer = await page.getByLabel("Answer").textContent();
  check(/5 business days/.test(answer), `the answer cites the refund policy: ${answer}`);
  await page.getByRole("heading", { name: "Evidence" }).waitFor();
  await page.getByText("Route and why").waitFor();
  await snap(page, "02-ask-answer-explain");
  await page.getByRole("link", { name: /^Decision / }).click();
  await page.getByRole("heading", { name: /^Explain why: / }).waitFor();
  await snap(page, "03-explain-why");

  await page.getByRole("link", { name: "Actions" }).click();
  await page.getByLabel("Tool").selectOption("refund");
  await page.getByLabel("Arguments (JSON)").fill('{"order_id": "A-100", "amount": 5}');
  await page.getByRole("button", { name: "Propose" }).click();
  await page.getByRole("heading", { name: "Timeline" }).waitFor();
  check((await page.getByText("pending approval").count()) > 0, "a high-risk action waits for approval");
  check(await page.getByRole("button", { name: "Approve" }).count() === 0, "a member is offered no approval");
  await snap(page, "04-member-proposed");
  check(problems.length === 0, `no script errors: ${problems.join("; ")}`);
  await context.close();
}

/** Reloads an action's page until its timeline shows `text` (the saga runs in the background). */
async function reloadUntil(page, text) {
  for (let i = 0; i < 40 && (await page.getByText(text).count()) === 0; i++) {
    await page.waitForTimeout(250);
    await page.reload();
    await page.getByRole("heading", { name: "Timeline" }).waitFor();
  }
  await page.getByText(text).waitFor();
}

async function openInboxAction(page, proposer) {
  await page.getByRole("link", { name: /Approvals/ }).click();
  const row = page.getByRole("row").filter({ hasText: proposer });
  await row.first().waitFor();
  await row.first().getByRole("link").click();
  await page.getByRole("heading", { name: "Timeline" }).waitFor();
}

async function approverReviewsAndUndoes(browser) {
  const { context, page, problems } = await signIn(browser, "approver");
  await page.getByRole("heading", { name: "Approvals" }).waitFor();
  await page.getByText("2 pending actions").waitFor();
  await snap(page, "05-inbox");
  // Their own proposal: approval is not offered.
  await openInboxAction(page, "erin");
  check(await page.getByRole("button", { name: "Approve" }).count() === 0, "no approve button on one's own proposal");
  await page.getByText("someone else must approve it").waitFor();
  // The member's: the preview is a before/after diff.
  await openInboxAction(page, "ann");
  const diff = page.getByRole("table", { name: "Preview: before and after" });
  await diff.waitFor();
  check(/balance/.test(await diff.textContent()) && /\(changed\)/.test(await diff.textContent()), "the diff shows the changed balance");
  await snap(page, "06-review-diff");
  await page.getByRole("button", { name: "Approve" }).click();
  await reloadUntil(page, "Step main ran");
  await page.getByText(/Approved/).first().waitFor();
  await snap(page, "07-timeline-executed");
  await page.getByRole("button", { name: "Undo…" }).click();
  const dialog = page.getByRole("dialog", { name: "Undo this action?" });
  await dialog.waitFor();
  check(/refund\/undo/.test(await dialog.textContent()), "the confirmation shows the compensation that will run");
  await snap(page, "08-undo-confirm");
  await dialog.getByRole("button", { name: "Run the compensation" }).click();
  await reloadUntil(page, "Step main compensated");
  check(await page.getByRole("button", { name: "Undo…" }).count() === 0, "an undone action offers no second undo");
  await page.getByRole("link", { name: "Audit" }).click();
  await page.getByRole("button", { name: "Verify the chain" }).click();
  await page.getByText("The chain verifies").waitFor();
  await snap(page, "09-audit");
  await page.getByRole("link", { name: "Usage" }).click();
  await page.getByRole("heading", { name: "Router mix" }).waitFor();
  await snap(page, "10-usage");
  check(problems.length === 0, `no script errors: ${problems.join("; ")}`);
  await context.close();
}

async function keyboardReachesApprove(browser) {
  const { context, page } = await signIn(browser, "approver");
  await page.getByRole("heading", { name: "Approvals" }).waitFor();
  // From the top of the page, Tab to the member's pending action and open it with Enter.
  await page.locator("body").focus();
  let opened = false;
  for (let i = 0; i < 40 && !opened; i++) {
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => document.activeElement?.closest("tr")?.textContent || "");
    if (focused.includes("ann")) {
      await page.keyboard.press("Enter");
      opened = true;
    }
  }
  check(opened, "Tab reaches the pending action in the inbox");
  await page.getByRole("heading", { name: "Timeline" }).waitFor();
  let reached = false;
  for (let i = 0; i < 60 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement?.textContent === "Approve");
  }
  check(reached, "Tab reaches the Approve button");
  await page.keyboard.press("Enter");
  await page.getByText(/Approved: the saga runs it now|Not applied/).waitFor();
  await context.close();
}

async function adminPullsTheKillSwitch(browser) {
  const { context, page, problems } = await signIn(browser, "admin");
  await page.getByRole("link", { name: "Controls" }).click();
  await page.getByRole("heading", { name: "Autonomy" }).waitFor();
  await snap(page, "11-controls");
  await page.getByRole("button", { name: "Kill switch…" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Turn it on" }).click();
  await page.getByText("On: actions are suggest-only").waitFor();
  const slider = await page.getByLabel("How far actions may run without a click").getAttribute("aria-valuetext");
  check(slider === "Suggest only", `the autonomy slider shows suggest-only: ${slider}`);
  await snap(page, "12-kill-switch-on");
  check(problems.length === 0, `no script errors: ${problems.join("; ")}`);
  await context.close();
}

const browser = await chromium.launch({ executablePath: env("KEEL_CHROMIUM"), args: ["--no-sandbox"] });
try {
  const phase = process.env.KEEL_PHASE || "all";
  if (phase === "member" || phase === "all") await memberAsksAndProposes(browser);
  if (phase === "approver" || phase === "all") await approverReviewsAndUndoes(browser);
  if (phase === "keyboard" || phase === "all") await keyboardReachesApprove(browser);
  if (phase === "admin" || phase === "all") await adminPullsTheKillSwitch(browser);
  console.log("console browser checks passed");
} catch (e) {
  const page = pages.at(-1);
  if (page && !page.isClosed()) await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}
