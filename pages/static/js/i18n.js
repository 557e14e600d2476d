// Chinese (zh-CN) by default, English on request (remembered per browser). Every string a
// page shows comes from these tables; a key missing from the current language is shown
// as ⟦key⟧ and listed in window.tribuneMissing, which the browser tests check is empty.
const TABLES = { "zh-CN": {}, en: {} };
window.tribuneMissing = new Set();

export function addStrings(zh, en) {
  Object.assign(TABLES["zh-CN"], zh);
  Object.assign(TABLES.en, en);
}

export function lang() {
  const saved = localStorage.getItem("tribune.lang");
  return saved === "en" ? "en" : "zh-CN";
}

export function setLang(value) {
  localStorage.setItem("tribune.lang", value);
  document.documentElement.lang = value;
}

// t("comments.left", {n: 3}) → "还可输入 3 字"
export function t(key, vars = {}) {
  const text = TABLES[lang()][key];
  if (text === undefined) {
    window.tribuneMissing.add(`${lang()}:${key}`);
    return `⟦${key}⟧`;
  }
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

// Fills elements marked data-i18n (text), data-i18n-placeholder, data-i18n-label
// (aria-label) and data-i18n-title.
export function applyI18n(root) {
  document.documentElement.lang = lang();
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
}

addStrings(
  {
    "app.name": "Tribune 履职直播",
    "lang.switch": "English",
    "error.generic": "出错了",
    "error.no_token": "缺少登录凭证：请从平台打开会议链接。",
    "loading": "正在载入…",
    "kind.committee_meeting": "常委会会议",
    "kind.special_inquiry": "专题询问",
    "kind.court_hearing": "庭审旁听",
    "kind.procuratorate_open_day": "检察开放日",
    "kind.lecture": "人大讲堂",
    "kind.consultation": "协商座谈",
    "state.scheduled": "未开始",
    "state.live": "直播中",
    "state.ended": "已结束",
    "tier.voting": "表决",
    "tier.observer": "列席",
    "tier.viewer": "旁听",
    "conn.connecting": "正在连接…",
    "conn.live": "已连接",
    "conn.reconnecting": "连接中断，正在重新连接…",
    "conn.refused": "无法进入：{message}",
    "presence": "在线代表 {n} 人",
    "video.waiting": "直播尚未开始，开始后画面会自动出现。",
    "video.connecting": "正在连接视频…",
    "video.playing": "正在播放",
    "video.failed": "视频连接失败：{message}。将自动重试。",
    "video.ended": "直播已结束。",
    "video.recording": "正在载入会议录像…",
    "video.no_recording": "本场会议没有录像。",
    "video.no_hls": "此浏览器不能播放 HLS",
    "video.mode.webrtc": "实时",
    "video.mode.hls": "HLS",
    "video.mode.vod": "录像",
    "comment.pinned": "置顶",
    "comment.highlighted": "精选",
    "comment.answered": "已答复",
    "comment.adopted": "已采纳",
    "poll.kind.satisfaction": "满意度测评",
    "poll.kind.single": "单选",
    "poll.kind.multiple": "多选",
    "poll.kind.yes_no": "表决",
    "poll.state.draft": "草稿",
    "poll.state.open": "投票中",
    "poll.state.closed": "已截止",
    "poll.state.published": "已公布",
    "results.title": "测评结果",
    "results.rate": "满意率",
    "results.votes": "{n} 票",
    "results.participation": "参与 {voted} / {eligible} 人（{rate}）",
    "results.valid": "结果有效",
    "results.invalid": "参与率未达到 {threshold}，结果无效",
    "results.online": "线上",
    "results.onsite": "现场",
    "results.combined": "合计",
    "results.none": "尚无公布的结果",
  },
  {
    "app.name": "Tribune live sessions",
    "lang.switch": "中文",
    "error.generic": "Something went wrong",
    "error.no_token": "No sign-in token: open the session link from the platform.",
    "loading": "Loading…",
    "kind.committee_meeting": "Standing committee meeting",
    "kind.special_inquiry": "Special inquiry",
    "kind.court_hearing": "Court hearing",
    "kind.procuratorate_open_day": "Procuratorate open day",
    "kind.lecture": "Lecture",
    "kind.consultation": "Consultation",
    "state.scheduled": "Not started",
    "state.live": "Live",
    "state.ended": "Ended",
    "tier.voting": "Voting",
    "tier.observer": "Observer",
    "tier.viewer": "Viewer",
    "conn.connecting": "Connecting…",
    "conn.live": "Connected",
    "conn.reconnecting": "Connection lost, reconnecting…",
    "conn.refused": "Cannot join: {message}",
    "presence": "{n} representatives online",
    "video.waiting": "The broadcast has not started; the picture appears when it does.",
    "video.connecting": "Connecting the video…",
    "video.playing": "Playing",
    "video.failed": "The video failed: {message}. Retrying.",
    "video.ended": "The broadcast has ended.",
    "video.recording": "Loading the recording…",
    "video.no_recording": "This session has no recording.",
    "video.no_hls": "this browser cannot play HLS",
    "video.mode.webrtc": "Real time",
    "video.mode.hls": "HLS",
    "video.mode.vod": "Recording",
    "comment.pinned": "Pinned",
    "comment.highlighted": "Highlighted",
    "comment.answered": "Answered",
    "comment.adopted": "Adopted",
    "poll.kind.satisfaction": "Satisfaction poll",
    "poll.kind.single": "Single choice",
    "poll.kind.multiple": "Multiple choice",
    "poll.kind.yes_no": "Motion",
    "poll.state.draft": "Draft",
    "poll.state.open": "Open",
    "poll.state.closed": "Closed",
    "poll.state.published": "Published",
    "results.title": "Results",
    "results.rate": "Satisfaction rate",
    "results.votes": "{n} votes",
    "results.participation": "Participation {voted} / {eligible} ({rate})",
    "results.valid": "The result is valid",
    "results.invalid": "Participation is below {threshold}: the result is not valid",
    "results.online": "Online",
    "results.onsite": "On site",
    "results.combined": "Combined",
    "results.none": "No results published yet",
  },
);
