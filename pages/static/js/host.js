// The host page /host/{session}: publish camera or screen over WHIP, start and end the
// session, run polls (templates, open / close / publish, live tally, on-site counts, who has
// not voted, nudge).
import { $, api, h, t, say, errorText, setupPage, signIn, sessionId, showSession } from "./common.js";
import { addStrings } from "./i18n.js";
import { Live, showConnection } from "./live.js";
import { resultsView } from "./polls.js";
import { publish, rateMeter } from "./video.js";

addStrings(
  {
    "host.brand": "主持人控制台",
    "host.go_live": "开始会议",
    "host.end": "结束会议",
    "host.confirm_end": "再次点击“结束会议”确认：结束后不能重新开始。",
    "host.publish": "推送画面",
    "host.feed": "视频源",
    "host.no_feed": "本会议还没有视频源，请管理员在后台创建。",
    "host.source": "画面来源",
    "host.camera": "摄像头",
    "host.screen": "共享屏幕",
    "host.camera_device": "摄像头设备",
    "host.mic_device": "麦克风",
    "host.preview": "预览",
    "host.start_publish": "开始推流",
    "host.stop_publish": "停止推流",
    "host.publishing": "正在推流",
    "host.bitrate": "码率 {kbps} kbps · 已编码 {frames} 帧",
    "host.publish_failed": "推流失败：{message}",
    "host.stopped": "推流已停止。",
    "host.device_default": "默认设备",
    "host.cut": "切断公开画面",
    "host.restore": "恢复公开画面",
    "host.cut_on": "公开画面已切断：公众看到的是暂停画面，录像也只保留暂停画面。",
    "host.cut_off": "公开画面正常。",
    "host.delay": "公开画面延时 {n} 秒。",
    "host.new_poll": "发起测评",
    "host.template": "模板",
    "host.poll_title": "标题",
    "host.units": "被测评单位（每行一个）",
    "host.options": "选项（每行一个）",
    "host.units_hint": "满意度测评：每行一个部门，每个部门按 满意 / 基本满意 / 不满意 测评。",
    "host.options_hint": "第一行是问题，其余每行一个选项。",
    "host.motion_hint": "只填写表决事项，选项为 赞成 / 反对 / 弃权。",
    "host.live_results": "投票中向代表公开实时结果",
    "host.create_poll": "创建",
    "host.created": "已创建测评“{title}”。",
    "host.polls": "测评",
    "host.no_polls": "还没有测评。",
    "host.open": "开始投票",
    "host.close": "截止投票",
    "host.publish_results": "公布结果",
    "host.tally": "实时计票",
    "host.onsite": "现场计票",
    "host.save_onsite": "保存现场票数",
    "host.onsite_saved": "现场票数已保存。",
    "host.missing": "未投票的在场代表",
    "host.load_missing": "查看",
    "host.nudge": "提醒投票",
    "host.nudged": "已提醒 {n} 人。",
    "host.none_missing": "在场代表均已投票。",
    "template.satisfaction_per_department": "部门满意度测评",
    "template.livelihood_projects": "民生实事项目票决",
    "template.motion": "表决事项",
    "template.single_choice": "单项选择",
  },
  {
    "host.brand": "Host console",
    "host.go_live": "Start the session",
    "host.end": "End the session",
    "host.confirm_end": "Press “End the session” again to confirm: an ended session cannot restart.",
    "host.publish": "Broadcast",
    "host.feed": "Feed",
    "host.no_feed": "The session has no feed yet; ask an admin to create one.",
    "host.source": "Source",
    "host.camera": "Camera",
    "host.screen": "Share screen",
    "host.camera_device": "Camera device",
    "host.mic_device": "Microphone",
    "host.preview": "Preview",
    "host.start_publish": "Start broadcasting",
    "host.stop_publish": "Stop broadcasting",
    "host.publishing": "Broadcasting",
    "host.bitrate": "{kbps} kbps · {frames} frames encoded",
    "host.publish_failed": "Broadcast failed: {message}",
    "host.stopped": "Broadcast stopped.",
    "host.device_default": "Default device",
    "host.cut": "Cut the public output",
    "host.restore": "Restore the public output",
    "host.cut_on": "The public output is cut: the public sees the pause slate, and the recording keeps only the slate.",
    "host.cut_off": "The public output is on.",
    "host.delay": "The public output trails live by {n} s.",
    "host.new_poll": "New poll",
    "host.template": "Template",
    "host.poll_title": "Title",
    "host.units": "Departments (one per line)",
    "host.options": "Options (one per line)",
    "host.units_hint": "Satisfaction poll: one department per line, each rated satisfied / basically satisfied / dissatisfied.",
    "host.options_hint": "The first line is the question, each further line an option.",
    "host.motion_hint": "Write the motion only; the options are for / against / abstain.",
    "host.live_results": "Show live results to representatives while open",
    "host.create_poll": "Create",
    "host.created": "Poll “{title}” created.",
    "host.polls": "Polls",
    "host.no_polls": "No polls yet.",
    "host.open": "Open voting",
    "host.close": "Close voting",
    "host.publish_results": "Publish results",
    "host.tally": "Live tally",
    "host.onsite": "On-site counts",
    "host.save_onsite": "Save on-site counts",
    "host.onsite_saved": "On-site counts saved.",
    "host.missing": "Present representatives who have not voted",
    "host.load_missing": "Show",
    "host.nudge": "Nudge them",
    "host.nudged": "{n} nudged.",
    "host.none_missing": "Everyone present has voted.",
    "template.satisfaction_per_department": "Satisfaction per department",
    "template.livelihood_projects": "Livelihood projects",
    "template.motion": "Motion",
    "template.single_choice": "Single choice",
  },
);

const page = {
  session: null, token: null, live: null, polls: new Map(), templates: {}, stream: null, pub: null,
  feeds: new Map(), notes: new Map(), opened: new Set(), missing: new Map(),
};
const sid = () => encodeURIComponent(page.session.id);

function renderHead() {
  const s = page.session;
  showSession(s);
  $("go-live").disabled = s.state !== "scheduled";
  $("end").disabled = s.state === "ended";
}

let endArmed = false;
async function changeState(to) {
  if (to === "ended" && !endArmed) {
    endArmed = true;
    say("state-status", t("host.confirm_end"), "warn");
    setTimeout(() => { endArmed = false; }, 8000);
    return;
  }
  try {
    const { session } = await api(`/api/sessions/${sid()}/state`, { method: "POST", body: { state: to } });
    page.session = session;
    say("state-status", "");
    renderHead();
  } catch (err) {
    say("state-status", errorText(err), "error");
  }
}

// --- Publishing -----------------------------------------------------------------------

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kind] of [[$("camera"), "videoinput"], [$("mic"), "audioinput"]]) {
    const current = select.value;
    select.replaceChildren(h("option", { value: "" }, t("host.device_default")),
      ...devices.filter((d) => d.kind === kind)
        .map((d, i) => h("option", { value: d.deviceId }, d.label || `${kind} ${i + 1}`)));
    select.value = current;
  }
}

async function getStream() {
  if (page.stream) return page.stream;
  const audio = $("mic").value ? { deviceId: { exact: $("mic").value } } : true;
  if ($("source").value === "screen") {
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
    const mic = await navigator.mediaDevices.getUserMedia({ audio }).catch(() => null);
    page.stream = new MediaStream([...screen.getTracks(), ...(mic ? mic.getAudioTracks() : [])]);
  } else {
    const video = { width: { ideal: 1280 }, height: { ideal: 720 } };
    if ($("camera").value) video.deviceId = { exact: $("camera").value };
    page.stream = await navigator.mediaDevices.getUserMedia({ video, audio });
  }
  $("preview").srcObject = page.stream;
  await listDevices(); // labels are known once permission is granted
  return page.stream;
}

function dropStream() {
  if (page.stream) for (const track of page.stream.getTracks()) track.stop();
  page.stream = null;
  $("preview").srcObject = null;
}

let meterTimer = null;
async function startPublishing() {
  const feed = $("feed").value;
  if (!feed) { say("pub-status", t("host.no_feed"), "error"); return; }
  $("publish").disabled = true;
  try {
    const stream = await getStream();
    page.pub = await publish(feed, page.token, stream, () => stopPublishing());
    $("unpublish").disabled = false;
    say("pub-status", t("host.publishing"), "ok");
    const meter = rateMeter(page.pub.pc, "outbound-rtp");
    meterTimer = setInterval(async () => {
      const { bps, frames } = await meter();
      $("bitrate").textContent = t("host.bitrate", { kbps: Math.round(bps / 1000), frames });
    }, 1000);
  } catch (err) {
    page.pub = null;
    $("publish").disabled = false;
    say("pub-status", t("host.publish_failed", { message: err.message }), "error");
  }
}

async function stopPublishing() {
  clearInterval(meterTimer);
  const pub = page.pub;
  page.pub = null;
  if (pub) await pub.stop();
  $("publish").disabled = false;
  $("unpublish").disabled = true;
  say("pub-status", t("host.stopped"));
}

// --- Polls ----------------------------------------------------------------------------

function renderTemplates() {
  const select = $("template");
  const current = select.value;
  select.replaceChildren(...Object.keys(page.templates).map((k) => h("option", { value: k }, t(`template.${k}`))));
  if (current) select.value = current;
  const kind = (page.templates[select.value] || {}).kind;
  $("units-label").textContent = t(kind === "satisfaction" ? "host.units" : "host.options");
  $("units-hint").textContent = t(kind === "satisfaction" ? "host.units_hint"
    : kind === "yes_no" ? "host.motion_hint" : "host.options_hint");
}

async function createPoll(ev) {
  ev.preventDefault();
  const template = $("template").value;
  const kind = page.templates[template].kind;
  const lines = $("poll-units").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const body = { template, title: $("poll-title").value.trim(), live_results: $("poll-live-results").checked };
  if (kind === "satisfaction") body.units = lines;
  else if (kind === "yes_no") body.question = lines[0] || body.title;
  else { body.question = lines[0] || ""; body.options = lines.slice(1); }
  if (kind === "multiple") body.max_choices = Math.max(1, Math.min(body.options.length, 3));
  try {
    const { poll } = await api(`/api/sessions/${sid()}/polls`, { method: "POST", body });
    page.polls.set(poll.id, poll);
    say("poll-form-status", t("host.created", { title: poll.title }), "ok");
    $("poll-units").value = "";
    $("poll-title").value = "";
    renderPolls();
  } catch (err) {
    say("poll-form-status", errorText(err), "error");
  }
}

async function loadPolls() {
  const { polls } = await api(`/api/sessions/${sid()}/polls`);
  for (const p of polls) page.polls.set(p.id, { ...(page.polls.get(p.id) || {}), ...p });
  renderPolls();
}

// A live tally (counts by option id) shown as results, with 满意率 for satisfaction polls.
function tallyAsResults(poll, tally) {
  return {
    poll: poll.id, title: poll.title, kind: poll.kind, state: poll.state, threshold: null, valid: null,
    participation: null,
    questions: poll.questions.map((q) => {
      const qt = (tally.questions || {})[String(q.id)] || { votes: 0, options: {} };
      const options = q.options.map((o) => ({ id: o.id, label: o.label, online: qt.options[String(o.id)] || 0 }));
      const rate = poll.kind === "satisfaction" && qt.votes
        ? { online: (options[0].online + options[1].online) / qt.votes } : undefined;
      return { id: q.id, text: q.text, unit: q.unit, votes: { online: qt.votes }, options, satisfaction_rate: rate };
    }),
  };
}

async function step(poll, state) {
  const status = $(`poll-status-${poll.id}`);
  try {
    const { poll: updated, results } = await api(`/api/polls/${poll.id}/state`, { method: "POST", body: { state } });
    page.polls.set(updated.id, { ...updated, results: results || poll.results });
    renderPolls();
  } catch (err) {
    status.textContent = errorText(err);
    status.dataset.kind = "error";
  }
}

function onsiteForm(poll) {
  const form = h("form", { class: "stack onsite" });
  for (const q of poll.questions) {
    const row = h("fieldset", {}, h("legend", {}, q.unit || q.text));
    for (const o of q.options) {
      const id = `onsite-${poll.id}-${q.id}-${o.id}`;
      row.append(h("label", { for: id }, `${o.label} `),
        h("input", { type: "number", min: 0, max: 100000, id, class: "n", dataset: { q: q.id, o: o.id } }), " ");
    }
    form.append(row);
  }
  const status = h("p", { role: "status" });
  const note = page.notes.get(`onsite-${poll.id}`);
  if (note) { status.textContent = t(note[0]); status.dataset.kind = note[1]; }
  form.append(h("button", { type: "submit" }, t("host.save_onsite")), status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const counts = {};
    for (const input of form.querySelectorAll("input.n")) {
      if (input.value === "") continue;
      (counts[input.dataset.q] ||= {})[input.dataset.o] = Number(input.value);
    }
    try {
      const { results } = await api(`/api/polls/${poll.id}/onsite`, { method: "PUT", body: { counts } });
      poll.results = results;
      page.notes.set(`onsite-${poll.id}`, ["host.onsite_saved", "ok"]);
      renderPolls();
    } catch (err) {
      status.textContent = errorText(err);
      status.dataset.kind = "error";
    }
  });
  return keepOpen(h("details", {}, h("summary", {}, t("host.onsite")), form), `onsite-${poll.id}`);
}

// Who has not voted, as last loaded; kept in page state so a redraw of the poll list keeps it.
function missingBox(poll) {
  const list = h("ul", { class: "missing", id: `missing-${poll.id}` });
  const status = h("p", { role: "status", id: `missing-status-${poll.id}` });
  // Draws into the card on the page now: a redraw may have replaced this one while a request ran.
  const show = () => {
    const list = $(`missing-${poll.id}`);
    const status = $(`missing-status-${poll.id}`);
    if (!list || !status) return;
    const { items, note } = page.missing.get(poll.id) || {};
    list.replaceChildren(...(items || []).map((m) => h("li", {}, `${m.name} (${m.rep}) ${m.delegation || ""}`)));
    status.textContent = note ? note[0] : "";
    if (note) status.dataset.kind = note[1];
  };
  const remember = (change) => {
    page.missing.set(poll.id, { ...(page.missing.get(poll.id) || {}), ...change });
    show();
  };
  const load = async () => {
    try {
      const { missing } = await api(`/api/polls/${poll.id}/missing`);
      remember({ items: missing, note: missing.length ? null : [t("host.none_missing"), "ok"] });
    } catch (err) { remember({ note: [errorText(err), "error"] }); }
  };
  const nudge = async () => {
    try {
      const { nudged } = await api(`/api/polls/${poll.id}/nudge`, { method: "POST" });
      remember({ note: [t("host.nudged", { n: nudged }), "ok"] });
    } catch (err) { remember({ note: [errorText(err), "error"] }); }
  };
  const box = keepOpen(h("details", {}, h("summary", {}, t("host.missing")),
    h("div", { class: "row" }, h("button", { type: "button", onclick: load }, t("host.load_missing")),
      h("button", { type: "button", onclick: nudge }, t("host.nudge"))), list, status), `missing-${poll.id}`);
  queueMicrotask(show);
  return box;
}

// A <details> that stays open when the poll list is drawn again.
function keepOpen(details, id) {
  details.open = page.opened.has(id);
  details.addEventListener("toggle", () => { if (details.open) page.opened.add(id); else page.opened.delete(id); });
  return details;
}

function pollCard(poll) {
  const card = h("article", { class: "card", dataset: { poll: poll.id, state: poll.state } },
    h("h3", {}, poll.title),
    h("p", { class: "hint" }, `${t(`poll.kind.${poll.kind}`)} · ${t(`poll.state.${poll.state}`)}`));
  const next = { draft: ["open", "host.open"], open: ["closed", "host.close"], closed: ["published", "host.publish_results"] }[poll.state];
  if (next) card.append(h("button", { type: "button", class: "primary", onclick: () => step(poll, next[0]) }, t(next[1])));
  card.append(h("p", { id: `poll-status-${poll.id}`, role: "status" }));
  if (poll.state === "open") {
    const tally = page.live.tallies.get(poll.id);
    card.append(h("h4", {}, t("host.tally")), h("div", { class: "tally" },
      tally ? resultsView(tallyAsResults(poll, tally), { source: "online" }) : h("p", { class: "hint" }, t("results.votes", { n: 0 }))));
    card.append(missingBox(poll));
  }
  if (poll.state === "open" || poll.state === "closed") card.append(onsiteForm(poll));
  if (poll.results && poll.state !== "open") card.append(resultsView(poll.results));
  return card;
}

function renderPolls() {
  const polls = [...page.polls.values()].sort((a, b) => b.id - a.id);
  $("poll-list").replaceChildren(...(polls.length ? polls.map(pollCard) : [h("p", { class: "hint" }, t("host.no_polls"))]));
}

function renderAll() {
  renderHead();
  renderTemplates();
  renderPolls();
  renderCut();
  page.drawConnection();
}

async function loadFeeds() {
  const { feeds } = await api(`/api/sessions/${sid()}/feeds`);
  const current = $("feed").value;
  page.feeds = new Map(feeds.map((f) => [f.id, f]));
  $("feed").replaceChildren(...feeds.map((f) => h("option", { value: f.id }, `${f.id} (${t(`state.${f.state === "idle" ? "scheduled" : f.state}`)})`)));
  if (current && page.feeds.has(current)) $("feed").value = current;
  if (!feeds.length) say("pub-status", t("host.no_feed"), "warn");
  renderCut();
}

// The kill switch of the selected feed: one press cuts the public output to the slate.
function renderCut() {
  const feed = page.feeds.get($("feed").value);
  $("cut").disabled = !feed;
  if (!feed) { $("cut-state").textContent = ""; return; }
  $("cut").textContent = t(feed.cut ? "host.restore" : "host.cut");
  $("cut").classList.toggle("primary", feed.cut);
  const parts = [t(feed.cut ? "host.cut_on" : "host.cut_off")];
  if (feed.delay) parts.push(t("host.delay", { n: feed.delay }));
  $("cut-state").textContent = parts.join(" ");
  $("cut-state").dataset.kind = feed.cut ? "error" : "info";
}

async function toggleCut() {
  const feed = page.feeds.get($("feed").value);
  if (!feed) return;
  try {
    const { feed: updated } = await api(`/api/feeds/${encodeURIComponent(feed.id)}/cut`, { method: "POST", body: { cut: !feed.cut } });
    page.feeds.set(updated.id, updated);
    renderCut();
  } catch (err) {
    say("pub-status", errorText(err), "error");
  }
}

async function main() {
  setupPage(() => page.live && renderAll());
  try {
    page.token = await signIn();
    page.session = (await api(`/api/sessions/${encodeURIComponent(sessionId())}`)).session;
    page.templates = (await api("/api/poll-templates")).templates;
  } catch (err) {
    say("status", errorText(err), "error");
    return;
  }
  page.live = new Live(page.token, page.session.id);
  page.drawConnection = showConnection(page.live);
  renderAll();
  const live = page.live;
  live.addEventListener("tally", (e) => {
    const poll = page.polls.get(e.detail.poll);
    const box = document.querySelector(`article[data-poll="${e.detail.poll}"] .tally`);
    if (poll && box) box.replaceChildren(resultsView(tallyAsResults(poll, e.detail), { source: "online" }));
  });
  live.addEventListener("event", (e) => {
    const ev = e.detail;
    if (ev.type === "session.state") { page.session.state = ev.data.state; renderHead(); }
    if (ev.type.startsWith("poll.")) {
      const id = ev.data.poll.id ?? ev.data.poll;
      const known = page.polls.get(id) || {};
      const lp = live.polls.get(id) || {};
      page.polls.set(id, { ...known, ...lp, questions: lp.questions?.length ? lp.questions : known.questions,
        title: lp.title || known.title });
      renderPolls();
    }
    if (ev.type.startsWith("feed.")) loadFeeds().catch(() => {});
  });
  $("go-live").addEventListener("click", () => changeState("live"));
  $("end").addEventListener("click", () => changeState("ended"));
  $("template").addEventListener("change", renderTemplates);
  $("poll-form").addEventListener("submit", createPoll);
  $("preview-btn").addEventListener("click", () => { dropStream(); getStream().catch((err) => say("pub-status", errorText(err), "error")); });
  $("source").addEventListener("change", dropStream);
  $("camera").addEventListener("change", dropStream);
  $("mic").addEventListener("change", dropStream);
  $("publish").addEventListener("click", startPublishing);
  $("cut").addEventListener("click", toggleCut);
  $("feed").addEventListener("change", renderCut);
  $("unpublish").addEventListener("click", stopPublishing);
  live.connect();
  window.tribune = { live, page };
  await Promise.all([loadFeeds(), loadPolls(), listDevices()]).catch((err) => say("status", errorText(err), "error"));
}

main();
