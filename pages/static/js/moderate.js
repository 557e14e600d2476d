// The moderator page /moderate/{session}: the pending queue live, sensitive-word hits marked,
// keyboard shortcuts, approve / reject / pin / highlight / answered / adopt with a note,
// filters, counts and the export.
import {
  $, h, t, say, download, errorText, fmtTime, setupPage, signIn, sessionId, api, showSession,
} from "./common.js";
import { addStrings } from "./i18n.js";
import { Live, showConnection } from "./live.js";

addStrings(
  {
    "mod.brand": "留言审核",
    "mod.pending": "待审核",
    "mod.flagged": "含敏感词",
    "mod.published": "已发布",
    "mod.filter": "筛选",
    "mod.filter_all": "全部",
    "mod.filter_flagged": "含敏感词",
    "mod.filter_clean": "不含敏感词",
    "mod.search": "搜索留言",
    "mod.export_xlsx": "导出 Excel",
    "mod.export_csv": "导出 CSV",
    "mod.keys": "快捷键：J / K 上下选择，A 通过，R 不通过，P 置顶，H 精选，D 已答复，O 采纳（填写转交说明）",
    "mod.queue": "待审核留言",
    "mod.published_list": "已发布留言",
    "mod.empty": "没有待审核的留言。",
    "mod.none_published": "还没有发布的留言。",
    "mod.hits": "敏感词：{words}",
    "mod.approve": "通过",
    "mod.reject": "不通过",
    "mod.remove": "撤下",
    "mod.pin": "置顶",
    "mod.unpin": "取消置顶",
    "mod.highlight": "精选",
    "mod.unhighlight": "取消精选",
    "mod.answered": "已答复",
    "mod.adopt": "采纳",
    "mod.adopt_note": "采纳说明（如转交的部门）",
    "mod.cancel": "取消",
    "mod.done": "已处理：{action}",
  },
  {
    "mod.brand": "Moderation",
    "mod.pending": "Pending",
    "mod.flagged": "Sensitive words",
    "mod.published": "Published",
    "mod.filter": "Filter",
    "mod.filter_all": "All",
    "mod.filter_flagged": "With sensitive words",
    "mod.filter_clean": "Without sensitive words",
    "mod.search": "Search comments",
    "mod.export_xlsx": "Export Excel",
    "mod.export_csv": "Export CSV",
    "mod.keys": "Keys: J / K move, A approve, R reject, P pin, H highlight, D answered, O adopt (with a note)",
    "mod.queue": "Pending comments",
    "mod.published_list": "Published comments",
    "mod.empty": "Nothing waits for review.",
    "mod.none_published": "No published comments yet.",
    "mod.hits": "Sensitive words: {words}",
    "mod.approve": "Approve",
    "mod.reject": "Reject",
    "mod.remove": "Remove",
    "mod.pin": "Pin",
    "mod.unpin": "Unpin",
    "mod.highlight": "Highlight",
    "mod.unhighlight": "Unhighlight",
    "mod.answered": "Answered",
    "mod.adopt": "Adopt",
    "mod.adopt_note": "Note (e.g. the department it goes to)",
    "mod.cancel": "Cancel",
    "mod.done": "Done: {action}",
  },
);

const page = { session: null, live: null, selected: null, adopting: null };
const KEYS = { a: "approve", r: "reject", p: "pin", h: "highlight", d: "answered", o: "adopt" };

function matches(c) {
  const filter = $("filter").value;
  const flagged = (c.flagged || []).length > 0;
  if (filter === "flagged" && !flagged) return false;
  if (filter === "clean" && flagged) return false;
  const q = $("search").value.trim();
  return !q || c.text.includes(q) || (c.name || "").includes(q) || c.rep.includes(q);
}

function visibleQueue() {
  return [...page.live.queue.values()].sort((a, b) => a.id - b.id).filter(matches);
}

function actionButtons(c, actions) {
  return h("div", { class: "actions" }, ...actions.map((a) =>
    h("button", { type: "button", class: a === "approve" ? "primary" : "", dataset: { action: a },
      onclick: () => act(c, a) }, t(`mod.${a}`))));
}

function meta(c) {
  return h("div", {}, h("span", { class: "who" }, c.name || c.rep),
    h("span", { class: "hint" }, ` · ${c.rep}${c.delegation ? ` · ${c.delegation}` : ""} · ${fmtTime(c.at)}`));
}

function renderQueue() {
  const list = visibleQueue();
  if (page.selected !== null && !list.some((c) => c.id === page.selected)) page.selected = list.length ? list[0].id : null;
  if (page.selected === null && list.length) page.selected = list[0].id;
  $("queue").replaceChildren(...(list.length ? list.map((c) => {
    const flagged = (c.flagged || []).length > 0;
    return h("li", { role: "option", class: flagged ? "flagged" : "", "aria-selected": String(c.id === page.selected),
      dataset: { id: c.id }, onclick: () => { page.selected = c.id; renderQueue(); } },
      meta(c), h("p", { class: "text pre" }, c.text),
      flagged ? h("p", { class: "hits", dataset: { kind: "error" } }, t("mod.hits", { words: c.flagged.join("、") })) : null,
      actionButtons(c, ["approve", "reject", "pin", "highlight", "adopt"]));
  }) : [h("li", { class: "hint" }, t("mod.empty"))]));
  const all = [...page.live.queue.values()];
  $("n-pending").textContent = all.length;
  $("n-flagged").textContent = all.filter((c) => (c.flagged || []).length).length;
}

function renderPublished() {
  const list = [...page.live.comments.values()].sort((a, b) => b.id - a.id);
  $("n-published").textContent = list.length;
  $("published").replaceChildren(...(list.length ? list.filter(matches).map((c) =>
    h("li", { dataset: { id: c.id } }, meta(c), h("p", { class: "text pre" }, c.text),
      h("p", { class: "hint" }, [c.pinned && t("comment.pinned"), c.highlighted && t("comment.highlighted"),
        c.answered && t("comment.answered"), c.adopted && `${t("comment.adopted")} ${c.note || ""}`].filter(Boolean).join(" · ")),
      actionButtons(c, [c.pinned ? "unpin" : "pin", c.highlighted ? "unhighlight" : "highlight", "answered", "adopt", "remove"])),
  ) : [h("li", { class: "hint" }, t("mod.none_published"))]));
}

async function act(c, action, note) {
  if (action === "adopt" && note === undefined) {
    page.adopting = c;
    $("adopt-note").value = "";
    $("adopt-dialog").showModal();
    return;
  }
  // Pinning or highlighting a pending comment publishes it first.
  if (page.live.queue.has(c.id) && action !== "approve" && action !== "reject") {
    const ack = await page.live.request("moderate", { comment: c.id, action: "approve" });
    if (!ack.ok) { say("action-status", ack.error.message, "error"); return; }
  }
  const payload = { comment: c.id, action };
  if (note) payload.note = note;
  try {
    const ack = await page.live.request("moderate", payload);
    if (ack.ok) say("action-status", t("mod.done", { action: t(`mod.${action}`) }), "ok");
    else say("action-status", ack.error.message, "error");
  } catch (err) {
    say("action-status", errorText(err), "error");
  }
}

function onKey(ev) {
  if (ev.target.closest("input, textarea, select, dialog") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const list = visibleQueue();
  const i = list.findIndex((c) => c.id === page.selected);
  const k = ev.key.toLowerCase();
  if (k === "j" || k === "arrowdown") { page.selected = list[Math.min(list.length - 1, i + 1)]?.id ?? null; renderQueue(); ev.preventDefault(); return; }
  if (k === "k" || k === "arrowup") { page.selected = list[Math.max(0, i - 1)]?.id ?? null; renderQueue(); ev.preventDefault(); return; }
  if (KEYS[k] && i >= 0) { ev.preventDefault(); act(list[i], KEYS[k]); }
}

function renderAll() {
  showSession(page.session);
  page.drawConnection();
  renderQueue();
  renderPublished();
}

async function main() {
  setupPage(() => page.live && renderAll());
  let token;
  try {
    token = await signIn();
    page.session = (await api(`/api/sessions/${encodeURIComponent(sessionId())}`)).session;
  } catch (err) {
    say("status", errorText(err), "error");
    return;
  }
  const live = new Live(token, page.session.id);
  page.live = live;
  page.drawConnection = showConnection(live);
  renderAll();
  live.addEventListener("queue", renderQueue);
  live.addEventListener("reset", renderPublished);
  live.addEventListener("event", (e) => {
    if (e.detail.type.startsWith("comment.")) renderPublished();
    if (e.detail.type === "session.state") { page.session.state = e.detail.data.state; renderAll(); }
  });
  $("filter").addEventListener("change", () => { renderQueue(); renderPublished(); });
  $("search").addEventListener("input", () => { renderQueue(); renderPublished(); });
  document.addEventListener("keydown", onKey);
  $("adopt-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    $("adopt-dialog").close();
    if (page.adopting) act(page.adopting, "adopt", $("adopt-note").value.trim());
    page.adopting = null;
  });
  $("adopt-cancel").addEventListener("click", () => { page.adopting = null; $("adopt-dialog").close(); });
  const exportAs = (format) => download(
    `/api/sessions/${encodeURIComponent(page.session.id)}/comments/export?format=${format}`,
    `${page.session.id}-comments.${format}`).catch((err) => say("action-status", errorText(err), "error"));
  $("export-xlsx").addEventListener("click", () => exportAs("xlsx"));
  $("export-csv").addEventListener("click", () => exportAs("csv"));
  live.connect();
  window.tribune = { live, page };
}

main();
