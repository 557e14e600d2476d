// The viewer page /watch/{session}: announcement, video, comments, polls, results, presence.
import {
  $, api, h, t, say, errorText, fmtTime, key, setupPage, signIn, sessionId, showSession,
} from "./common.js";
import { addStrings } from "./i18n.js";
import { Live, showConnection } from "./live.js";
import { resultsView, voteCard } from "./polls.js";
import { watch } from "./video.js";

addStrings(
  {
    "watch.skip": "跳到留言区",
    "watch.tier": "您的身份：",
    "watch.video": "直播画面",
    "watch.announcement": "会议公告",
    "watch.polls": "测评与表决",
    "watch.comments": "留言区",
    "watch.comment_label": "发表留言",
    "watch.comment_placeholder": "请输入您的意见或建议",
    "watch.send": "发送",
    "watch.left": "还可输入 {n} 字",
    "watch.over": "超出 {n} 字",
    "watch.viewer_only": "旁听身份可观看和查看留言，不能发表留言。",
    "watch.sending": "正在发送…",
    "watch.pending": "留言已提交，等待审核后公开。",
    "watch.published": "留言已发布。",
    "watch.repeated": "这条留言已经收到，无需重复发送。",
    "watch.rate_limited": "发言过于频繁，请在 {n} 秒后再试。",
    "watch.empty": "请先输入留言内容。",
    "watch.send_failed": "发送失败：{message}",
    "watch.no_comments": "暂无留言。",
    "watch.session_ended": "会议已结束，留言已关闭。",
    "watch.nudge": "主持人提醒您参加测评：{title}",
    "vote.submit": "提交",
    "vote.change": "修改投票",
    "vote.sending": "正在提交…",
    "vote.recorded": "您的投票已记录。",
    "vote.changed": "您的投票已更新。",
    "vote.not_eligible": "您的身份不参加本次测评。",
    "vote.answer_all": "请为“{unit}”选择一项。",
    "vote.too_many": "“{unit}”最多选择 {n} 项。",
    "vote.max_choices": "最多选择 {n} 项",
    "vote.retry_failed": "网络中断，投票未确认。请再次点击提交（不会重复计票）。",
    "vote.error.poll_closed": "投票已截止。",
    "vote.error.already_voted": "您已投过票，本测评不允许修改。",
    "vote.error.not_found": "没有这项测评。",
    "vote.error.invalid": "投票内容有误。",
    "vote.error.forbidden": "您不能参加这项测评。",
    "vote.error.unavailable": "服务暂时不可用，请稍后再提交。",
    "vote.error.unauthorized": "登录已过期，请重新打开链接。",
    "vote.error.rate_limited": "操作过于频繁，请稍后再试。",
  },
  {
    "watch.skip": "Skip to the comments",
    "watch.tier": "You attend as:",
    "watch.video": "Live video",
    "watch.announcement": "Announcement",
    "watch.polls": "Polls",
    "watch.comments": "Comments",
    "watch.comment_label": "Write a comment",
    "watch.comment_placeholder": "Your opinion or suggestion",
    "watch.send": "Send",
    "watch.left": "{n} characters left",
    "watch.over": "{n} characters too many",
    "watch.viewer_only": "Viewers can watch and read the comments but not comment.",
    "watch.sending": "Sending…",
    "watch.pending": "Comment received; it appears once a moderator approves it.",
    "watch.published": "Comment published.",
    "watch.repeated": "This comment was already received.",
    "watch.rate_limited": "Too many comments; try again in {n} s.",
    "watch.empty": "Write something first.",
    "watch.send_failed": "Not sent: {message}",
    "watch.no_comments": "No comments yet.",
    "watch.session_ended": "The session has ended; comments are closed.",
    "watch.nudge": "The host reminds you to vote: {title}",
    "vote.submit": "Submit",
    "vote.change": "Change my vote",
    "vote.sending": "Submitting…",
    "vote.recorded": "Your vote is recorded.",
    "vote.changed": "Your vote is changed.",
    "vote.not_eligible": "Your tier does not vote in this poll.",
    "vote.answer_all": "Choose an option for “{unit}”.",
    "vote.too_many": "Choose at most {n} for “{unit}”.",
    "vote.max_choices": "Choose up to {n}",
    "vote.retry_failed": "The connection dropped before the vote was confirmed. Submit again (it is counted once).",
    "vote.error.poll_closed": "The poll is closed.",
    "vote.error.already_voted": "You have voted; this poll does not allow changes.",
    "vote.error.not_found": "No such poll.",
    "vote.error.invalid": "The vote is not valid.",
    "vote.error.forbidden": "You may not vote in this poll.",
    "vote.error.unavailable": "The service is unavailable; submit again shortly.",
    "vote.error.unauthorized": "Your sign-in expired; open the link again.",
    "vote.error.rate_limited": "Too many requests; try again shortly.",
  },
);

const page = {
  session: null, live: null, token: null, maxChars: 500, feed: null, player: null, cooldown: 0,
  mode: new URLSearchParams(location.search).get("video") === "hls" ? "hls" : "webrtc",
};

function renderHead() {
  const s = page.session;
  if (!s) return;
  showSession(s);
  $("tier").textContent = t(`tier.${s.your_tier}`);
  $("announcement").textContent = s.announcement || "";
  $("announcement-box").hidden = !s.announcement;
  const canComment = s.your_tier !== "viewer" && s.state !== "ended";
  $("comment-form").hidden = !canComment;
  $("comment-closed").hidden = canComment;
  $("comment-closed").textContent = t(s.state === "ended" ? "watch.session_ended" : "watch.viewer_only");
}

function commentItem(c) {
  const tags = [];
  if (c.pinned) tags.push(h("span", { class: "tag" }, t("comment.pinned")));
  if (c.highlighted) tags.push(h("span", { class: "tag" }, t("comment.highlighted")));
  if (c.answered) tags.push(h("span", { class: "tag" }, t("comment.answered")));
  if (c.adopted) tags.push(h("span", { class: "tag" }, t("comment.adopted")));
  return h("li", { class: c.highlighted ? "highlighted" : "", dataset: { id: c.id } },
    h("div", {}, h("span", { class: "who" }, c.name || c.rep),
      c.delegation ? h("span", { class: "hint" }, ` · ${c.delegation}`) : null,
      h("span", { class: "hint" }, ` · ${fmtTime(c.at)}`), ...tags),
    h("p", { class: "text" }, c.text),
    c.adopted && c.note ? h("p", { class: "hint" }, c.note) : null);
}

function renderComments() {
  const all = [...page.live.comments.values()].sort((a, b) => b.id - a.id);
  $("pinned").replaceChildren(...all.filter((c) => c.pinned).map(commentItem));
  const list = all.filter((c) => !c.pinned);
  $("comment-list").replaceChildren(
    ...(list.length ? list.map(commentItem) : [h("li", { class: "hint" }, t("watch.no_comments"))]));
}

function renderPolls() {
  const polls = [...page.live.polls.values()].filter((p) => p.state !== "draft").sort((a, b) => b.id - a.id);
  $("polls").hidden = polls.length === 0;
  const tier = (page.live.you && page.live.you.tier) || page.session.your_tier;
  const isRep = page.live.you && page.live.you.roles.includes("representative");
  $("poll-list").replaceChildren(...polls.map((p) => {
    if (p.state === "open" && p.questions && p.questions.length) {
      const eligible = isRep && (p.eligible_tiers || ["voting"]).includes(tier);
      return voteCard(p, page.live, { canVote: eligible });
    }
    const card = h("div", { class: "card", dataset: { poll: p.id } },
      h("h3", {}, p.title || (p.results && p.results.title) || ""),
      h("p", { class: "hint" }, t(`poll.state.${p.state}`)));
    if (p.results) card.append(resultsView(p.results));
    return card;
  }));
}

function renderCounter() {
  const n = [...$("comment-text").value.trim()].length;
  const left = page.maxChars - n;
  const el = $("comment-left");
  el.textContent = left >= 0 ? t("watch.left", { n: left }) : t("watch.over", { n: -left });
  el.dataset.kind = left < 0 ? "error" : "info";
  $("comment-send").disabled = left < 0 || page.cooldown > Date.now();
}

function renderAll() {
  renderHead();
  page.drawConnection();
  renderComments();
  renderPolls();
  renderCounter();
  renderVideoStatus();
}

let commentKey = null; // the key of the comment being sent: a retry reuses it
async function sendComment(ev) {
  ev.preventDefault();
  const text = $("comment-text").value.trim();
  if (!text) { say("comment-status", t("watch.empty"), "error"); return; }
  commentKey = commentKey || key();
  $("comment-send").disabled = true;
  say("comment-status", t("watch.sending"));
  try {
    const ack = await page.live.sendComment(text, commentKey);
    if (ack.ok) {
      commentKey = null;
      $("comment-text").value = "";
      const msg = ack.repeated ? "watch.repeated" : ack.comment.status === "published" ? "watch.published" : "watch.pending";
      say("comment-status", t(msg), "ok");
    } else if (ack.error.code === "rate_limited") {
      commentKey = null;
      const wait = Math.ceil(ack.error.details?.retry_after ?? 5);
      page.cooldown = Date.now() + wait * 1000;
      say("comment-status", t("watch.rate_limited", { n: wait }), "warn");
      setTimeout(renderCounter, wait * 1000 + 50);
    } else {
      commentKey = null;
      say("comment-status", t("watch.send_failed", { message: ack.error.message }), "error");
    }
  } catch (err) {
    say("comment-status", t("watch.send_failed", { message: errorText(err) }), "error");
  }
  renderCounter();
}

// Video: the session's first live feed over WHEP. When WebRTC fails (or the node is full
// and says so with 503) the page falls back to HLS through hls.js; after the session it
// plays the recording.
let videoState = "waiting";
let videoMessage = "";
function renderVideoStatus() {
  const text = videoState === "playing" ? "" : videoState === "failed"
    ? t("video.failed", { message: videoMessage }) : t(`video.${videoState}`);
  $("video-status").textContent = text;
  $("video-mode").textContent = page.player && videoState === "playing" ? t(`video.mode.${page.player.mode}`) : "";
}

function setVideo(state, message = "") {
  videoState = state;
  videoMessage = message;
  renderVideoStatus();
}

function whenPlaying() {
  $("video").addEventListener("playing", () => setVideo("playing"), { once: true });
}

async function startVideo() {
  if (page.player || !page.feed) return;
  if (page.session.state === "ended") { playHls("vod"); return; }
  if (page.mode === "hls") { playHls("hls"); return; }
  const feed = page.feed;
  setVideo("connecting");
  let playing = false;
  $("video").addEventListener("playing", () => { playing = true; }, { once: true });
  try {
    page.player = await watch(feed, page.token, $("video"), () => {
      page.player = null;
      if (!playing) page.mode = "hls"; // WebRTC never got through: HLS from now on
      if (page.live.feeds.get(feed)?.live !== false) setTimeout(startVideo, 1000);
    });
    page.player.mode = "webrtc";
    whenPlaying();
  } catch (err) {
    page.player = null;
    if (err.status === 404) { setVideo("waiting"); return; } // not live yet: feed.live will say
    page.mode = "hls"; // the node is full (503), or WebRTC is blocked here
    playHls("hls");
  }
}

async function playHls(kind) {
  if (page.player || !page.feed) return;
  const video = $("video");
  setVideo(kind === "vod" ? "recording" : "connecting");
  try {
    const urls = await api(`/api/feeds/${encodeURIComponent(page.feed)}`);
    const src = urls[kind];
    const { Hls } = await import("/static/vendor/hls.js");
    let hls = null;
    if (Hls.isSupported()) {
      hls = new Hls({ enableWorker: false, lowLatencyMode: true, liveSyncDurationCount: 2 });
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (!data.fatal) return;
        stopVideo(kind === "vod" ? "recording" : "connecting");
        setVideo("failed", data.details || data.type);
        setTimeout(() => playHls(kind), 3000);
      });
      hls.loadSource(src);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = src; // Safari and iOS play HLS themselves
    } else {
      throw new Error(t("video.no_hls"));
    }
    page.player = { mode: kind, hls, stop() { if (hls) hls.destroy(); video.removeAttribute("src"); video.load(); } };
    whenPlaying();
    video.play().catch(() => {});
  } catch (err) {
    page.player = null;
    if (err.status === 404 && kind === "vod") { setVideo("no_recording"); return; }
    if (err.status === 404) { setVideo("waiting"); setTimeout(() => playHls(kind), 3000); return; }
    setVideo("failed", errorText(err));
  }
}

function stopVideo(state) {
  if (page.player) page.player.stop();
  page.player = null;
  $("video").srcObject = null;
  setVideo(state);
}

async function findFeed() {
  const { feeds } = await api(`/api/sessions/${encodeURIComponent(page.session.id)}/feeds`);
  const live = feeds.find((f) => f.state === "live");
  page.feed = (live || feeds[0] || {}).id || null;
  if (page.session.state === "ended" && page.feed) playHls("vod");
  else if (live) startVideo();
  else setVideo(page.session.state === "ended" ? "ended" : "waiting");
}

async function main() {
  setupPage(() => page.live && renderAll());
  try {
    page.token = await signIn();
    const { session } = await api(`/api/sessions/${encodeURIComponent(sessionId())}`);
    page.session = session;
  } catch (err) {
    say("status", errorText(err), "error");
    return;
  }
  const live = new Live(page.token, page.session.id);
  page.live = live;
  page.drawConnection = showConnection(live);
  renderAll();
  live.addEventListener("hello", (e) => {
    page.maxChars = e.detail.limits?.comment_max_chars ?? page.maxChars;
    renderCounter();
  });
  live.addEventListener("reset", () => { renderComments(); renderPolls(); });
  live.addEventListener("event", (e) => {
    const ev = e.detail;
    if (ev.type.startsWith("comment.")) renderComments();
    else if (ev.type.startsWith("poll.")) renderPolls();
    else if (ev.type === "session.state") {
      page.session.state = ev.data.state;
      renderHead();
      if (ev.data.state === "ended") {
        stopVideo("ended");
        setTimeout(() => playHls("vod"), 3000); // the recording, once the feed has closed it
      }
    } else if (ev.type === "feed.live" && (!page.feed || ev.data.feed === page.feed)) {
      page.feed = ev.data.feed;
      startVideo();
    } else if (ev.type === "feed.ended" && ev.data.feed === page.feed) stopVideo("ended");
  });
  live.addEventListener("nudge", (e) => say("status", t("watch.nudge", { title: e.detail.title }), "warn"));
  $("comment-form").addEventListener("submit", sendComment);
  $("comment-text").addEventListener("input", renderCounter);
  live.connect();
  window.tribune = { live, page };
  findFeed().catch((err) => setVideo("failed", errorText(err)));
}

main();
