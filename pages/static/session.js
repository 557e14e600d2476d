// The session page: the token travels in the URL fragment (never sent to the server)
// and then only in the Authorization header. All text is set with textContent.
const KINDS = {
  committee_meeting: "常委会会议", special_inquiry: "专题询问", court_hearing: "庭审旁听",
  procuratorate_open_day: "检察开放日", lecture: "人大讲堂", consultation: "协商座谈",
};
const STATES = { scheduled: "未开始", live: "直播中", ended: "已结束" };
const TIERS = { voting: "表决", observer: "列席", viewer: "旁听" };

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("tribune.token");
const sessionId = decodeURIComponent(location.pathname.split("/")[2] || "");

async function load() {
  if (!token) { $("status").textContent = "缺少登录凭证 A sign-in token is missing."; return; }
  sessionStorage.setItem("tribune.token", token);
  history.replaceState(null, "", location.pathname);
  const res = await fetch(`/api/sessions/${encodeURIComponent(sessionId)}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  const body = await res.json();
  if (!res.ok) { $("status").textContent = body.error.message; return; }
  const s = body.session;
  $("title").textContent = s.title;
  $("kind").textContent = KINDS[s.kind] || s.kind;
  $("state").textContent = STATES[s.state] || s.state;
  $("start").textContent = new Date(s.scheduled_start).toLocaleString("zh-CN");
  $("end").textContent = new Date(s.scheduled_end).toLocaleString("zh-CN");
  $("tier").textContent = TIERS[s.your_tier] || s.your_tier;
  $("announcement").textContent = s.announcement;
  $("status").textContent = "";
  $("session").hidden = false;
}

load().catch((err) => { $("status").textContent = `载入失败 Failed to load: ${err}`; });
