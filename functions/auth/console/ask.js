// Ask: a question box that streams a cited answer, with explain-why beside it.
import * as api from "./api.js";
import { h, show, toast } from "./ui.js";
import { decisionEvents, eventPanel } from "./explain.js";

export async function ask() {
  const question = h("textarea", { id: "question", required: true });
  const answer = h("div", { class: "answer", "aria-live": "polite", "aria-label": "Answer" });
  const citations = h("div", {});
  const why = h("aside", { "aria-label": "Explain why" }, h("h2", {}, "Explain why"), h("p", { class: "muted" }, "Ask a question to see how it was answered."));
  const button = h("button", { type: "submit" }, "Ask");
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      button.disabled = true;
      answer.textContent = "";
      citations.replaceChildren();
      let done = null;
      try {
        await api.stream("/v1/ask", { question: question.value, stream: true }, (name, data) => {
          if (name === "delta") answer.textContent += data.text;
          else if (name === "reset") answer.textContent = "";
          else if (name === "done") done = data;
          else if (name === "error") throw new Error(data.error?.message || "the answer failed");
        });
      } catch (e) {
        toast(e.message, true);
      } finally {
        button.disabled = false;
      }
      if (!done) return;
      if (done.refused) {
        answer.replaceChildren(h("p", { class: "warn" }, `Refused: ${done.reason || "the evidence is too thin"}`));
      }
      citations.replaceChildren(done.citations.length ? h("div", {}, h("h2", {}, "Citations"),
        h("ol", {}, done.citations.map((c) => h("li", {}, `${c.doc_id} (chunk ${c.anchor.chunk}, chars ${c.anchor.start}–${c.anchor.end})`)))) : "");
      why.replaceChildren(h("h2", {}, "Explain why"), h("p", {}, h("a", { href: `#/decisions/${encodeURIComponent(done.decision_id)}` }, `Decision ${done.decision_id}`)));
      try {
        const decision = await decisionEvents(done.decision_id, 10);
        why.append(...decision.events.map(eventPanel));
      } catch (e) {
        why.append(h("p", { class: "muted" }, `The decision log has not recorded it yet (${e.message}).`));
      }
    },
  }, h("label", { for: "question" }, "Question"), question, h("div", { class: "row" }, button));
  show("Ask", h("div", { class: "grid" }, h("div", {}, form, h("h2", {}, "Answer"), answer, citations), why));
  question.focus();
}
