// The projector /projector/{session}: the hall's screen. The latest published results as bar
// charts with 满意率 per unit (online and on-site combined), participation and validity, and
// the pinned comments. Open it with a staff token: it takes part in nothing.
import { $, api, h, t, say, errorText, setupPage, signIn, sessionId, showSession } from "./common.js";
import { addStrings } from "./i18n.js";
import { Live, showConnection } from "./live.js";
import { resultsView } from "./polls.js";

addStrings(
  { "proj.pinned": "置顶留言", "proj.fullscreen": "全屏", "proj.results": "测评结果：{title}" },
  { "proj.pinned": "Pinned comments", "proj.fullscreen": "Full screen", "proj.results": "Results: {title}" },
);

const page = { session: null, live: null, results: null };

function render() {
  showSession(page.session);
  if (page.drawConnection) page.drawConnection();
  const r = page.results;
  $("results-h").textContent = r ? t("proj.results", { title: r.title }) : t("results.title");
  $("results").replaceChildren(r ? resultsView(r) : h("p", { class: "hint" }, t("results.none")));
  const pinned = page.live ? [...page.live.comments.values()].filter((c) => c.pinned).sort((a, b) => b.id - a.id) : [];
  $("pinned").replaceChildren(...pinned.map((c) =>
    h("li", { dataset: { id: c.id } }, h("span", { class: "who" }, c.name || c.rep), h("p", { class: "text" }, c.text))));
}

async function main() {
  setupPage(() => page.session && render());
  let token;
  try {
    token = await signIn();
    page.session = (await api(`/api/sessions/${encodeURIComponent(sessionId())}`)).session;
    page.results = (await api(`/api/sessions/${encodeURIComponent(page.session.id)}/projector`)).results;
  } catch (err) {
    say("status", errorText(err), "error");
    return;
  }
  const live = new Live(token, page.session.id);
  page.live = live;
  page.drawConnection = showConnection(live);
  render();
  live.addEventListener("reset", render);
  live.addEventListener("event", (e) => {
    if (e.detail.type === "poll.results") page.results = e.detail.data.results;
    if (e.detail.type === "poll.results" || e.detail.type.startsWith("comment.")) render();
  });
  $("fullscreen").addEventListener("click", () => document.documentElement.requestFullscreen().catch(() => {}));
  live.connect();
  window.tribune = { live, page };
}

main();
