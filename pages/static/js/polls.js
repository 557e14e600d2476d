// Polls on the pages: the voting card a representative fills in, and the results as bar
// charts (plain elements sized through the CSSOM, which the CSP allows).
import { h, t, pct, key } from "./common.js";

// Results → a chart per question with 满意率, participation and validity.
export function resultsView(results, { source = "combined" } = {}) {
  const box = h("div", { class: "results", dataset: { poll: results.poll } });
  for (const q of results.questions) {
    const votes = q.votes[source] ?? q.votes.online ?? 0;
    const chart = h("ul", { class: "chart" });
    q.options.forEach((o, i) => {
      const n = o[source] ?? o.online ?? 0;
      const fill = h("div", { class: `fill opt-${results.kind === "satisfaction" ? i : "x"}` });
      fill.style.width = votes ? `${(100 * n) / votes}%` : "0";
      chart.append(
        h("li", {}, h("span", { class: "label" }, o.label),
          h("div", { class: "track", role: "img", "aria-label": `${o.label} ${n}` }, fill),
          h("span", { class: "n" }, t("results.votes", { n }))),
      );
    });
    const rate = q.satisfaction_rate ? (q.satisfaction_rate[source] ?? q.satisfaction_rate.online) : null;
    box.append(
      h("section", { class: "result-q", dataset: { question: q.id } },
        h("h4", {}, q.unit || q.text),
        rate !== null && rate !== undefined
          ? h("p", { class: "rate" }, `${t("results.rate")} ${pct(rate)}`) : null,
        chart),
    );
  }
  const p = results.participation;
  if (p) {
    box.append(h("p", { class: "participation" },
      t("results.participation", { voted: p.voted, eligible: p.eligible_present, rate: pct(p.rate) })));
  }
  if (results.valid === true) box.append(h("p", { class: "valid", dataset: { kind: "ok" } }, t("results.valid")));
  if (results.valid === false) {
    box.append(h("p", { class: "valid", dataset: { kind: "warn" } },
      t("results.invalid", { threshold: pct(results.threshold) })));
  }
  return box;
}

// The card of an open poll for a representative: one fieldset per question (per unit for a
// satisfaction poll). The vote is sent once all questions are answered; a retry after a
// dropped connection reuses the same key, so it is recorded once.
export function voteCard(poll, live, { canVote }) {
  const mine = poll.mine || {};
  const done = poll.questions.length > 0 && poll.questions.every((q) => mine[String(q.id)]);
  const card = h("form", { class: "card vote", dataset: { poll: poll.id } });
  card.append(h("h3", {}, poll.title),
    h("p", { class: "hint" }, `${t(`poll.kind.${poll.kind}`)} · ${t(`poll.state.${poll.state}`)}`));
  if (poll.description) card.append(h("p", { class: "pre" }, poll.description));
  const status = h("p", { class: "vote-status", role: "status" });
  const locked = done && !poll.allow_change;
  for (const q of poll.questions) {
    const chosen = Array.isArray(mine[String(q.id)]) ? mine[String(q.id)] : [];
    const multi = q.max_choices > 1;
    const field = h("fieldset", { dataset: { question: q.id } }, h("legend", {}, q.unit || q.text));
    if (multi) field.append(h("p", { class: "hint" }, t("vote.max_choices", { n: q.max_choices })));
    const choices = h("div", { class: "choices" });
    for (const o of q.options) {
      const id = `p${poll.id}q${q.id}o${o.id}`;
      choices.append(h("label", { for: id },
        h("input", { type: multi ? "checkbox" : "radio", name: `q${q.id}`, id, value: o.id,
          checked: chosen.includes(o.id), disabled: locked || !canVote || poll.state !== "open" }),
        o.label));
    }
    field.append(choices);
    card.append(field);
  }
  const submit = h("button", { type: "submit", class: "primary",
    disabled: locked || !canVote || poll.state !== "open" }, t(done ? "vote.change" : "vote.submit"));
  card.append(h("div", { class: "row" }, submit), status);
  if (done) { status.textContent = t("vote.recorded"); status.dataset.kind = "ok"; }
  else if (!canVote) status.textContent = t("vote.not_eligible");

  let pendingKey = null; // kept while this exact vote is being retried
  card.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const answers = {};
    for (const q of poll.questions) {
      const picked = [...card.querySelectorAll(`input[name="q${q.id}"]:checked`)].map((i) => Number(i.value));
      if (!picked.length) {
        status.textContent = t("vote.answer_all", { unit: q.unit || q.text });
        status.dataset.kind = "error";
        return;
      }
      if (picked.length > q.max_choices) {
        status.textContent = t("vote.too_many", { unit: q.unit || q.text, n: q.max_choices });
        status.dataset.kind = "error";
        return;
      }
      answers[String(q.id)] = q.max_choices > 1 ? picked : picked[0];
    }
    pendingKey = pendingKey || key();
    submit.disabled = true;
    status.textContent = t("vote.sending");
    status.dataset.kind = "info";
    try {
      const ack = await live.vote(poll.id, answers, pendingKey);
      pendingKey = null;
      if (ack.ok) {
        for (const [qid, v] of Object.entries(answers)) mine[qid] = Array.isArray(v) ? v : [v];
        poll.mine = mine;
        status.textContent = t(ack.status === "changed" ? "vote.changed" : "vote.recorded");
        status.dataset.kind = "ok";
        if (!poll.allow_change) for (const i of card.querySelectorAll("input")) i.disabled = true;
        else submit.disabled = false;
      } else {
        status.textContent = t(`vote.error.${ack.error.code}`) + (ack.error.message ? ` (${ack.error.message})` : "");
        status.dataset.kind = "error";
        submit.disabled = false;
      }
    } catch (err) {
      status.textContent = t("vote.retry_failed");
      status.dataset.kind = "error";
      submit.disabled = false;
    }
  });
  return card;
}
