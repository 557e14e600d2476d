// The admin page /admin: sessions, the roster, stream keys, sensitive words, reports,
// rankings and reminders, each through the documented HTTP API with the admin's token.
import {
  $, api, h, t, lang, say, errorText, download, fmtDateTime, setupPage, signIn, KIND_KEYS,
} from "./common.js";
import { addStrings } from "./i18n.js";

addStrings(
  {
    "admin.skip": "跳到主要内容",
    "admin.title": "管理",
    "admin.nav": "页面导航",
    "admin.who": "管理员：{name}",
    "admin.not_admin": "此页面仅限管理员使用。您当前的身份：{roles}。",
    "admin.no_roles": "无",
    "admin.refresh": "刷新",
    "admin.working": "正在处理…",
    "admin.sep": "、",
    "admin.sep2": "",
    "admin.yes": "是",
    "admin.no": "否",
    "admin.never": "从未",
    "admin.session_pick": "会议",
    "admin.no_sessions_option": "（尚无会议）",
    "admin.pick_session": "请先选择会议。",
    "admin.sessions": "会议",
    "admin.sessions.list": "会议列表",
    "admin.sessions.none": "暂无会议。请在下方安排第一场会议。",
    "admin.sessions.count": "共 {n} 场会议。",
    "admin.col.session": "会议",
    "admin.col.kind": "类型",
    "admin.col.time": "时间",
    "admin.col.access": "参加范围",
    "admin.col.state": "状态",
    "admin.col.actions": "操作",
    "admin.access": "{audience} · 代表默认{tier} · {moderation}",
    "admin.action.start": "开始直播",
    "admin.action.end": "结束会议",
    "admin.action.cancel": "取消会议",
    "admin.action.feeds": "推流密钥",
    "admin.action.exports": "报表",
    "admin.action.confirm": "确认{action}？",
    "admin.state.changed": "会议 {id} 的状态已改为“{state}”。",
    "admin.schedule": "安排新会议",
    "admin.s.title": "标题",
    "admin.s.kind": "会议类型",
    "admin.s.start": "开始时间",
    "admin.s.end": "结束时间",
    "admin.s.audience": "参加范围",
    "admin.s.tier": "代表默认身份",
    "admin.s.tier_hint": "表决：可留言、可投票；列席：可留言；旁听：只能观看。",
    "admin.s.moderation": "留言审核",
    "admin.s.id": "会议编号（可不填）",
    "admin.s.id_hint": "2–63 位小写字母、数字或 -，以字母或数字开头；不填则自动生成。",
    "admin.s.participants": "受邀代表",
    "admin.s.participants_hint": "每行一位：代表编号，后面可加身份 voting、observer 或 viewer，如“R0001 voting”；不加则用默认身份。",
    "admin.s.announcement": "会议公告（可不填）",
    "admin.s.submit": "安排会议",
    "admin.s.created": "已安排会议“{title}”，编号 {id}。",
    "admin.audience.roster": "名册内代表",
    "admin.audience.public": "公开",
    "admin.audience.invited": "限定邀请",
    "admin.moderation.pre": "先审后发",
    "admin.moderation.post": "先发后审",
    "admin.v.title": "请填写标题。",
    "admin.v.times": "请填写开始和结束时间。",
    "admin.v.order": "结束时间必须晚于开始时间。",
    "admin.v.id": "编号只能用 2–63 位小写字母、数字或 -，并以字母或数字开头。",
    "admin.v.participants": "限定邀请的会议需要列出受邀代表。",
    "admin.v.participant_line": "受邀代表第 {n} 行有误：“{line}”。",
    "admin.v.participant_twice": "代表 {rep} 列了两次。",
    "admin.roster": "代表名册",
    "admin.roster.hint": "上传 CSV 或 Excel（.xlsx）文件。第一行是列名：代表编号、姓名、层级（必填），代表团、小组、联络站（选填），也可用英文列名 id、name、level、delegation、group、liaison_station。已有编号的代表会被更新。",
    "admin.roster.file": "名册文件（CSV 或 XLSX）",
    "admin.roster.skip": "跳过有误的行，导入其余各行",
    "admin.roster.submit": "导入",
    "admin.roster.choose": "请先选择一个 CSV 或 XLSX 文件。",
    "admin.roster.type": "只能导入 .csv 或 .xlsx 文件；旧版 .xls 请先在 Excel 中另存为 .xlsx。",
    "admin.roster.uploading": "正在导入 {name}…",
    "admin.roster.done": "导入完成：写入 {imported} 行（新增 {created}，更新 {updated}）。",
    "admin.roster.done_skipped": "导入完成：写入 {imported} 行（新增 {created}，更新 {updated}），跳过有误的 {rejected} 行。",
    "admin.roster.refused": "{total} 行中有 {rejected} 行有误，没有导入任何数据。请改正下列各行后重新导入，或勾选“跳过有误的行”。",
    "admin.roster.report": "导入报告",
    "admin.roster.total": "读取行数",
    "admin.roster.imported": "已写入",
    "admin.roster.created": "新增",
    "admin.roster.updated": "更新",
    "admin.roster.rejected": "有误",
    "admin.roster.committed": "是否写入",
    "admin.roster.rejected_rows": "有误的行（行号按表格计，第 1 行是列名）",
    "admin.roster.no_rejected": "没有有误的行。",
    "admin.col.row": "行号",
    "admin.col.rep_id": "代表编号",
    "admin.col.errors": "问题",
    "admin.feeds": "推流密钥",
    "admin.feeds.hint": "每个视频源有一个推流密钥，导播在 OBS 等编码软件中用 WHIP 推流时填入。",
    "admin.feeds.none": "这场会议还没有视频源。",
    "admin.feeds.new_id": "新视频源编号",
    "admin.feeds.id_hint": "规则同会议编号，如 main、hall-2。",
    "admin.feeds.delay": "公开画面延时（秒）",
    "admin.feeds.upstream": "上游 HLS 地址（可选）",
    "admin.feeds.upstream_hint": "转播法院等已有的 HLS 直播：填写媒体播放列表地址，不再发放推流密钥。主机须在 upstream_allowlist 中。",
    "admin.feeds.relayed": "已创建转播视频源 {id}：会议开始后由节点拉取。",
    "admin.feeds.delay_hint": "庭审等场合可设 0–300 秒：公众看到的画面比现场晚这么多秒，主持人可在此期间切断。",
    "admin.v.delay": "延时应为 0–300 之间的整数秒。",
    "admin.feeds.create": "创建视频源",
    "admin.feeds.created": "已创建视频源 {id}。",
    "admin.feeds.rotate": "更换密钥",
    "admin.feeds.rotated": "已为 {id} 生成新密钥，旧密钥立即失效（正在推流的不受影响）。",
    "admin.feeds.key_for": "视频源 {id} 的推流设置",
    "admin.feeds.once": "密钥只显示这一次，服务器只保存它的摘要。请现在复制并妥善保管；遗失后只能更换新密钥。",
    "admin.feeds.whip": "WHIP 地址",
    "admin.feeds.key": "推流密钥（Bearer Token）",
    "admin.feeds.hide": "已保存，隐藏密钥",
    "admin.v.feed_id": "视频源编号只能用 2–63 位小写字母、数字或 -，并以字母或数字开头。",
    "admin.col.feed": "视频源",
    "admin.col.key_version": "密钥版本",
    "admin.col.rotated": "密钥更换时间",
    "admin.feed.state.idle": "未推流",
    "admin.feed.state.live": "推流中",
    "admin.feed.state.stalled": "中断",
    "admin.feed.state.ended": "已结束",
    "admin.words": "敏感词",
    "admin.words.label": "敏感词（每行一个）",
    "admin.words.hint": "含敏感词的留言一律进入人工审核。匹配时忽略大小写、全角半角、空格和标点；每个词最多 50 字。",
    "admin.words.save": "保存敏感词",
    "admin.words.count": "当前共 {n} 个词。",
    "admin.words.saved": "已保存，共 {n} 个词。",
    "admin.words.added": "新增 {count} 个：{list}。",
    "admin.words.removed": "删除 {count} 个：{list}。",
    "admin.words.unchanged": "没有变化。",
    "admin.v.word_long": "“{word}”超过 50 字。",
    "admin.exports": "报表与导出",
    "admin.exports.format": "文件格式",
    "admin.format.xlsx": "Excel 工作簿（.xlsx）",
    "admin.format.csv": "CSV 文本（.csv）",
    "admin.exports.report": "下载会议报表",
    "admin.exports.comments": "下载全部留言",
    "admin.exports.preparing": "正在生成 {name}…",
    "admin.exports.done": "已下载 {name}。",
    "admin.ranking": "履职积分排名",
    "admin.period": "统计期间",
    "admin.period_hint": "year（本年）、quarter（本季度）、month（本月），或 2026、2026-Q4、2026-11、2026-10-01..2026-12-31（北京时间）。",
    "admin.rank.load": "查询排名",
    "admin.rank.loaded": "已载入 {label} 的排名。",
    "admin.rank.top": "前三名",
    "admin.rank.place": "第 {rank} 名",
    "admin.rank.points": "{points} 分",
    "admin.rank.none": "暂无代表。",
    "admin.rank.meta": "{label}：共 {ranked} 位代表参加排名；计分规则第 {version} 版，计算于 {at}。",
    "admin.rank.more": "只列出前 {shown} 名。",
    "admin.col.rank": "名次",
    "admin.col.rep": "代表",
    "admin.col.delegation": "代表团",
    "admin.col.level": "层级",
    "admin.col.points": "积分",
    "admin.col.breakdown": "构成",
    "admin.level.national": "全国",
    "admin.level.provincial": "省",
    "admin.level.city": "市",
    "admin.level.county": "县（区）",
    "admin.level.township": "乡（镇）",
    "admin.activity.attendance": "出席",
    "admin.activity.presence": "到场未达标",
    "admin.activity.absence": "缺席",
    "admin.activity.leave": "请假",
    "admin.activity.comment": "留言",
    "admin.activity.adopted_comment": "意见被采纳",
    "admin.activity.poll": "参加测评",
    "admin.activity.lecture_minute": "讲堂学习",
    "admin.reminders": "履职提醒",
    "admin.remind.hint": "按计分规则列出积分偏低、长期未履职或缺席过多的代表；发送后由平台以短信或即时消息通知本人。",
    "admin.remind.period_hint": "不填则用计分规则规定的期间。",
    "admin.remind.load": "查看名单",
    "admin.remind.send": "发送提醒",
    "admin.remind.count": "{label}：{n} 位代表需要提醒。",
    "admin.remind.none": "本期没有需要提醒的代表。",
    "admin.remind.sent": "已发送 {n} 条提醒（{label}）。",
    "admin.col.reasons": "原因",
    "admin.col.last_activity": "最近履职",
    "admin.col.absences": "缺席 / 请假",
    "admin.absences": "缺席 {absent} 次，请假 {excused} 次",
    "admin.reason.below_threshold": "积分低于标准",
    "admin.reason.inactive": "长期未履职",
    "admin.reason.absent": "缺席过多",
  },
  {
    "admin.skip": "Skip to the content",
    "admin.title": "Administration",
    "admin.nav": "Sections",
    "admin.who": "Admin: {name}",
    "admin.not_admin": "This page is for administrators. Your roles: {roles}.",
    "admin.no_roles": "none",
    "admin.refresh": "Refresh",
    "admin.working": "Working…",
    "admin.sep": ", ",
    "admin.sep2": " ",
    "admin.yes": "yes",
    "admin.no": "no",
    "admin.never": "never",
    "admin.session_pick": "Session",
    "admin.no_sessions_option": "(no sessions yet)",
    "admin.pick_session": "Choose a session first.",
    "admin.sessions": "Sessions",
    "admin.sessions.list": "All sessions",
    "admin.sessions.none": "No sessions yet. Schedule the first one below.",
    "admin.sessions.count": "{n} sessions.",
    "admin.col.session": "Session",
    "admin.col.kind": "Kind",
    "admin.col.time": "Time",
    "admin.col.access": "Access",
    "admin.col.state": "State",
    "admin.col.actions": "Actions",
    "admin.access": "{audience} · representatives: {tier} · {moderation}",
    "admin.action.start": "Start",
    "admin.action.end": "End",
    "admin.action.cancel": "Cancel",
    "admin.action.feeds": "Stream keys",
    "admin.action.exports": "Reports",
    "admin.action.confirm": "Confirm: {action}?",
    "admin.state.changed": "Session {id} is now “{state}”.",
    "admin.schedule": "Schedule a session",
    "admin.s.title": "Title",
    "admin.s.kind": "Kind",
    "admin.s.start": "Starts",
    "admin.s.end": "Ends",
    "admin.s.audience": "Who may attend",
    "admin.s.tier": "Representatives' default tier",
    "admin.s.tier_hint": "Voting: comment and vote; observer: comment; viewer: watch only.",
    "admin.s.moderation": "Comment moderation",
    "admin.s.id": "Session id (optional)",
    "admin.s.id_hint": "2–63 lower-case letters, digits or -, starting with a letter or digit; generated if empty.",
    "admin.s.participants": "Invited participants",
    "admin.s.participants_hint": "One per line: the representative's id, optionally followed by a tier (voting, observer or viewer), e.g. “R0001 voting”; the default tier otherwise.",
    "admin.s.announcement": "Announcement (optional)",
    "admin.s.submit": "Schedule",
    "admin.s.created": "Scheduled “{title}” as {id}.",
    "admin.audience.roster": "Representatives on the roster",
    "admin.audience.public": "Public",
    "admin.audience.invited": "Invited only",
    "admin.moderation.pre": "Review before publishing",
    "admin.moderation.post": "Publish, then review",
    "admin.v.title": "Enter a title.",
    "admin.v.times": "Enter the start and end times.",
    "admin.v.order": "The end must be after the start.",
    "admin.v.id": "Ids are 2–63 lower-case letters, digits or -, starting with a letter or digit.",
    "admin.v.participants": "An invited session needs its participants listed.",
    "admin.v.participant_line": "Participants line {n} is not valid: “{line}”.",
    "admin.v.participant_twice": "{rep} is listed twice.",
    "admin.roster": "Roster",
    "admin.roster.hint": "Upload a CSV or Excel (.xlsx) file. The first row names the columns: id, name, level (required), delegation, group, liaison_station (optional), in English or Chinese. Representatives whose id exists are updated.",
    "admin.roster.file": "Roster file (CSV or XLSX)",
    "admin.roster.skip": "Skip invalid rows and import the others",
    "admin.roster.submit": "Import",
    "admin.roster.choose": "Choose a CSV or XLSX file first.",
    "admin.roster.type": "Only .csv and .xlsx files can be imported; save an old .xls as .xlsx in Excel first.",
    "admin.roster.uploading": "Importing {name}…",
    "admin.roster.done": "Imported {imported} rows ({created} new, {updated} updated).",
    "admin.roster.done_skipped": "Imported {imported} rows ({created} new, {updated} updated); skipped {rejected} invalid rows.",
    "admin.roster.refused": "{rejected} of {total} rows are invalid, so nothing was imported. Fix the rows below and import again, or tick “Skip invalid rows”.",
    "admin.roster.report": "Import report",
    "admin.roster.total": "Rows read",
    "admin.roster.imported": "Imported",
    "admin.roster.created": "Created",
    "admin.roster.updated": "Updated",
    "admin.roster.rejected": "Invalid",
    "admin.roster.committed": "Written",
    "admin.roster.rejected_rows": "Invalid rows (spreadsheet row numbers; the header is row 1)",
    "admin.roster.no_rejected": "No invalid rows.",
    "admin.col.row": "Row",
    "admin.col.rep_id": "Id",
    "admin.col.errors": "Problems",
    "admin.feeds": "Stream keys",
    "admin.feeds.hint": "Each feed has a stream key, which the studio enters in OBS (or another WHIP encoder) to publish.",
    "admin.feeds.none": "This session has no feeds yet.",
    "admin.feeds.new_id": "New feed id",
    "admin.feeds.id_hint": "Same rules as session ids, e.g. main, hall-2.",
    "admin.feeds.delay": "Public delay (seconds)",
    "admin.feeds.upstream": "Upstream HLS URL (optional)",
    "admin.feeds.upstream_hint": "To relay an existing HLS channel (a court's): its media playlist URL; no stream key is issued. The host must be on upstream_allowlist.",
    "admin.feeds.relayed": "Relayed feed {id} created: a node pulls it while the session is live.",
    "admin.feeds.delay_hint": "0–300 s, e.g. for court hearings: the public sees the picture this much later, and the host can cut it meanwhile.",
    "admin.v.delay": "The delay is a whole number of seconds from 0 to 300.",
    "admin.feeds.create": "Create feed",
    "admin.feeds.created": "Feed {id} created.",
    "admin.feeds.rotate": "New key",
    "admin.feeds.rotated": "{id} has a new key; the old one stopped working (a publisher already live stays live).",
    "admin.feeds.key_for": "Publishing settings for feed {id}",
    "admin.feeds.once": "The key is shown only this once; the server keeps only its hash. Copy it now and keep it safe; if it is lost, make a new one.",
    "admin.feeds.whip": "WHIP URL",
    "admin.feeds.key": "Stream key (bearer token)",
    "admin.feeds.hide": "Saved it: hide the key",
    "admin.v.feed_id": "Feed ids are 2–63 lower-case letters, digits or -, starting with a letter or digit.",
    "admin.col.feed": "Feed",
    "admin.col.key_version": "Key version",
    "admin.col.rotated": "Key changed",
    "admin.feed.state.idle": "Idle",
    "admin.feed.state.live": "Live",
    "admin.feed.state.stalled": "Stalled",
    "admin.feed.state.ended": "Ended",
    "admin.words": "Sensitive words",
    "admin.words.label": "Sensitive words (one per line)",
    "admin.words.hint": "A comment containing one always goes to review. Matching ignores case, width, spaces and punctuation; at most 50 characters a word.",
    "admin.words.save": "Save the words",
    "admin.words.count": "{n} words in force.",
    "admin.words.saved": "Saved: {n} words.",
    "admin.words.added": "{count} added: {list}.",
    "admin.words.removed": "{count} removed: {list}.",
    "admin.words.unchanged": "Nothing changed.",
    "admin.v.word_long": "“{word}” is longer than 50 characters.",
    "admin.exports": "Reports and exports",
    "admin.exports.format": "File format",
    "admin.format.xlsx": "Excel workbook (.xlsx)",
    "admin.format.csv": "CSV text (.csv)",
    "admin.exports.report": "Download the session report",
    "admin.exports.comments": "Download all comments",
    "admin.exports.preparing": "Preparing {name}…",
    "admin.exports.done": "Downloaded {name}.",
    "admin.ranking": "Duty points ranking",
    "admin.period": "Period",
    "admin.period_hint": "year, quarter or month (the current one), or 2026, 2026-Q4, 2026-11, 2026-10-01..2026-12-31 (China Standard Time).",
    "admin.rank.load": "Show the ranking",
    "admin.rank.loaded": "Ranking for {label} loaded.",
    "admin.rank.top": "Top three",
    "admin.rank.place": "No. {rank}",
    "admin.rank.points": "{points} points",
    "admin.rank.none": "No representatives.",
    "admin.rank.meta": "{label}: {ranked} representatives ranked under rules version {version}, computed {at}.",
    "admin.rank.more": "Only the first {shown} are listed.",
    "admin.col.rank": "Rank",
    "admin.col.rep": "Representative",
    "admin.col.delegation": "Delegation",
    "admin.col.level": "Level",
    "admin.col.points": "Points",
    "admin.col.breakdown": "Breakdown",
    "admin.level.national": "National",
    "admin.level.provincial": "Provincial",
    "admin.level.city": "City",
    "admin.level.county": "County",
    "admin.level.township": "Township",
    "admin.activity.attendance": "Attendance",
    "admin.activity.presence": "Present below threshold",
    "admin.activity.absence": "Absence",
    "admin.activity.leave": "Leave",
    "admin.activity.comment": "Comments",
    "admin.activity.adopted_comment": "Adopted comments",
    "admin.activity.poll": "Polls",
    "admin.activity.lecture_minute": "Lecture minutes",
    "admin.reminders": "Reminders",
    "admin.remind.hint": "Representatives the scoring rules say to remind: few points, inactive for long, or absent too often. Sending hands the list to the platform, which messages each of them by SMS or IM.",
    "admin.remind.period_hint": "Empty: the period the scoring rules name.",
    "admin.remind.load": "Show the list",
    "admin.remind.send": "Send reminders",
    "admin.remind.count": "{label}: {n} representatives to remind.",
    "admin.remind.none": "Nobody to remind in this period.",
    "admin.remind.sent": "Sent {n} reminders ({label}).",
    "admin.col.reasons": "Reasons",
    "admin.col.last_activity": "Last activity",
    "admin.col.absences": "Absent / excused",
    "admin.absences": "{absent} absent, {excused} excused",
    "admin.reason.below_threshold": "Few points",
    "admin.reason.inactive": "Inactive",
    "admin.reason.absent": "Absent too often",
  },
);

const XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const ID_PATTERN = /^[a-z0-9][a-z0-9-]{1,62}$/;
const TIERS = ["voting", "observer", "viewer"];

const page = {
  me: null,
  sessions: [],
  feeds: [],
  key: null, // {id, key, whip}: the stream key just made, shown until hidden
  roster: null, // the last import report
  rank: null, // {scores, top}
  reminders: null,
};

// Messages shown in status lines are kept as functions, so a language switch can say them
// again in the new language.
const notes = new Map();
function tell(id, text, kind = "info") {
  notes.set(id, { text, kind });
  say(id, text(), kind);
}

const enc = encodeURIComponent;
const num = (x) => Number(x).toLocaleString(lang(), { maximumFractionDigits: 2 });
const pad = (n) => String(n).padStart(2, "0");

// A `datetime-local` value ("2026-12-01T09:00") as RFC 3339 with the browser's offset on
// that day ("2026-12-01T09:00:00+08:00").
function rfc3339(local) {
  const when = new Date(local);
  if (!local || Number.isNaN(when.getTime())) return null;
  const offset = -when.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  const abs = Math.abs(offset);
  const base = local.length === 16 ? `${local}:00` : local;
  return `${base}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

const localInput = (d) =>
  `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;

// Consequential actions (a state change, a new key, messages to representatives) take two
// clicks: the first turns the button into a confirmation for a few seconds. No dialog.
function twoStep(button, labelKey, action) {
  let timer = 0;
  const plain = !button.classList.contains("primary");
  const reset = () => {
    clearTimeout(timer);
    delete button.dataset.armed;
    if (plain) button.classList.remove("primary");
    button.textContent = t(labelKey);
  };
  button.dataset.i18n = labelKey;
  button.addEventListener("click", () => {
    if (button.dataset.armed) {
      reset();
      action();
      return;
    }
    button.dataset.armed = "true";
    button.classList.add("primary");
    button.textContent = t("admin.action.confirm", { action: t(labelKey) });
    timer = setTimeout(reset, 6000);
  });
  button.addEventListener("blur", reset);
  reset();
  return button;
}

async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}

function invalid(statusId, fieldId, key, vars) {
  const field = $(fieldId);
  field.setAttribute("aria-invalid", "true");
  field.addEventListener("input", () => field.removeAttribute("aria-invalid"), { once: true });
  field.focus();
  tell(statusId, () => t(key, vars), "error");
}

const emptyRow = (cols, text) => h("tr", {}, h("td", { colspan: cols, class: "hint" }, text));

// --- sessions ---------------------------------------------------------------------------

function fillKinds() {
  const select = $("s-kind");
  const value = select.value || KIND_KEYS[0];
  select.replaceChildren(...KIND_KEYS.map((k) => h("option", { value: k }, t(`kind.${k}`))));
  select.value = value;
}

function sessionRow(s) {
  const actions = [];
  if (s.state === "scheduled") {
    actions.push(twoStep(h("button", { type: "button" }), "admin.action.start", () => changeState(s, "live")));
    actions.push(twoStep(h("button", { type: "button" }), "admin.action.cancel", () => changeState(s, "ended")));
  } else if (s.state === "live") {
    actions.push(twoStep(h("button", { type: "button" }), "admin.action.end", () => changeState(s, "ended")));
  }
  actions.push(h("button", { type: "button", onclick: () => pickSession("feed-session", s.id) }, t("admin.action.feeds")));
  actions.push(h("button", { type: "button", onclick: () => pickSession("export-session", s.id) }, t("admin.action.exports")));
  const access = t("admin.access", {
    audience: t(`admin.audience.${s.audience}`),
    tier: t(`tier.${s.default_tier}`),
    moderation: t(`admin.moderation.${s.moderation}`),
  });
  return h("tr", { dataset: { session: s.id } },
    h("th", { scope: "row" }, h("div", {}, s.title), h("code", { class: "hint" }, s.id)),
    h("td", {}, t(`kind.${s.kind}`)),
    h("td", {}, `${fmtDateTime(s.scheduled_start)} – ${fmtDateTime(s.scheduled_end)}`),
    h("td", {}, access),
    h("td", {}, h("span", { class: `badge ${s.state}` }, t(`state.${s.state}`))),
    h("td", {}, h("div", { class: "actions" }, ...actions)));
}

function renderSessions() {
  const rows = page.sessions.map(sessionRow);
  $("session-rows").replaceChildren(...(rows.length ? rows : [emptyRow(6, t("admin.sessions.none"))]));
  fillSessionSelect("feed-session");
  fillSessionSelect("export-session");
}

function fillSessionSelect(id) {
  const select = $(id);
  const value = select.value;
  const options = page.sessions.map((s) => h("option", { value: s.id }, `${s.title} · ${s.id}`));
  select.replaceChildren(...(options.length ? options : [h("option", { value: "" }, t("admin.no_sessions_option"))]));
  if (page.sessions.some((s) => s.id === value)) select.value = value;
}

async function loadSessions() {
  try {
    const { sessions } = await api("/api/sessions?limit=500");
    page.sessions = sessions;
    const before = $("feed-session").value;
    renderSessions();
    if ($("feed-session").value !== before || !page.feeds.length) await loadFeeds();
  } catch (err) {
    tell("sessions-status", () => errorText(err), "error");
  }
}

function pickSession(selectId, id) {
  const select = $(selectId);
  select.value = id;
  if (selectId === "feed-session") loadFeeds();
  select.focus();
}

async function changeState(s, state) {
  try {
    await api(`/api/sessions/${enc(s.id)}/state`, { method: "POST", body: { state } });
    tell("sessions-status", () => t("admin.state.changed", { id: s.id, state: t(`state.${state}`) }), "ok");
  } catch (err) {
    tell("sessions-status", () => errorText(err), "error");
  }
  await loadSessions();
}

function parseParticipants(text, tier) {
  const participants = [];
  const seen = new Set();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    const [rep, given, ...rest] = line.split(/[\s,，;；]+/);
    if (rest.length || (given && !TIERS.includes(given))) {
      return { error: ["admin.v.participant_line", { n: i + 1, line }] };
    }
    if (seen.has(rep)) return { error: ["admin.v.participant_twice", { rep }] };
    seen.add(rep);
    participants.push({ rep, tier: given || tier });
  }
  return { participants };
}

async function scheduleSession(ev) {
  ev.preventDefault();
  const status = "session-form-status";
  const body = {
    kind: $("s-kind").value,
    title: $("s-title").value.trim(),
    announcement: $("s-announcement").value.trim(),
    scheduled_start: rfc3339($("s-start").value),
    scheduled_end: rfc3339($("s-end").value),
    audience: $("s-audience").value,
    default_tier: $("s-tier").value,
    moderation: $("s-moderation").value,
  };
  const id = $("s-id").value.trim();
  if (!body.title) return invalid(status, "s-title", "admin.v.title");
  if (!body.scheduled_start) return invalid(status, "s-start", "admin.v.times");
  if (!body.scheduled_end) return invalid(status, "s-end", "admin.v.times");
  if (new Date($("s-end").value) <= new Date($("s-start").value)) return invalid(status, "s-end", "admin.v.order");
  if (id && !ID_PATTERN.test(id)) return invalid(status, "s-id", "admin.v.id");
  if (id) body.id = id;
  if (body.audience === "invited") {
    const parsed = parseParticipants($("s-participants").value, body.default_tier);
    if (parsed.error) return invalid(status, "s-participants", ...parsed.error);
    if (!parsed.participants.length) return invalid(status, "s-participants", "admin.v.participants");
    body.participants = parsed.participants;
  }
  await busy($("s-submit"), async () => {
    tell(status, () => t("admin.working"));
    try {
      const { session } = await api("/api/sessions", { method: "POST", body });
      tell(status, () => t("admin.s.created", { id: session.id, title: session.title }), "ok");
      for (const field of ["s-title", "s-announcement", "s-id", "s-participants"]) $(field).value = "";
      await loadSessions();
    } catch (err) {
      tell(status, () => errorText(err), "error");
    }
  });
}

function showParticipants() {
  $("s-participants-box").hidden = $("s-audience").value !== "invited";
}

// --- roster import ----------------------------------------------------------------------

function renderRoster() {
  const report = page.roster;
  $("roster-report").hidden = !report;
  if (!report) return;
  const line = (key, value) => h("tr", {}, h("th", { scope: "row" }, t(key)), h("td", {}, String(value)));
  $("roster-summary-rows").replaceChildren(
    line("admin.roster.total", report.total_rows),
    line("admin.roster.imported", report.imported),
    line("admin.roster.created", report.created),
    line("admin.roster.updated", report.updated),
    line("admin.roster.rejected", report.rejected.length),
    line("admin.roster.committed", t(report.committed ? "admin.yes" : "admin.no")),
  );
  const rows = report.rejected.map((r) => h("tr", { dataset: { row: r.row } },
    h("td", {}, String(r.row)),
    h("td", {}, r.id || "—"),
    h("td", {}, h("ul", {}, ...r.errors.map((e) => h("li", {}, e))))));
  $("roster-rejected-rows").replaceChildren(...(rows.length ? rows : [emptyRow(3, t("admin.roster.no_rejected"))]));
}

async function importRoster(ev) {
  ev.preventDefault();
  const file = $("roster-file").files[0];
  if (!file) return invalid("roster-status", "roster-file", "admin.roster.choose");
  const xlsx = /\.xlsx$/i.test(file.name) || file.type === XLSX;
  const csv = /\.csv$/i.test(file.name) || file.type === "text/csv";
  if (!xlsx && !csv) return invalid("roster-status", "roster-file", "admin.roster.type");
  const skip = $("roster-skip").checked;
  await busy($("roster-submit"), async () => {
    tell("roster-status", () => t("admin.roster.uploading", { name: file.name }));
    try {
      const { report } = await api(`/api/roster/import?skip_invalid=${skip}`, {
        method: "POST", raw: file, type: xlsx ? XLSX : "text/csv",
      });
      page.roster = report;
      const vars = { ...report, rejected: report.rejected.length };
      tell("roster-status", () => t(vars.rejected ? "admin.roster.done_skipped" : "admin.roster.done", vars), "ok");
    } catch (err) {
      const report = err.details && Array.isArray(err.details.rejected) ? err.details : null;
      page.roster = report;
      if (report) {
        const vars = { total: report.total_rows, rejected: report.rejected.length };
        tell("roster-status", () => t("admin.roster.refused", vars), "error");
      } else {
        tell("roster-status", () => errorText(err), "error");
      }
    }
    renderRoster();
  });
}

// --- feeds and stream keys --------------------------------------------------------------

function feedRow(f) {
  return h("tr", { dataset: { feed: f.id } },
    h("th", { scope: "row" }, h("code", {}, f.id)),
    h("td", {}, h("span", { class: `badge ${f.state}` }, t(`admin.feed.state.${f.state}`))),
    h("td", {}, String(f.key_version ?? "—")),
    h("td", {}, f.rotated_at ? fmtDateTime(f.rotated_at) : "—"),
    h("td", {}, twoStep(h("button", { type: "button" }), "admin.feeds.rotate", () => rotateKey(f.id))));
}

function renderFeeds() {
  const rows = page.feeds.map(feedRow);
  $("feed-rows").replaceChildren(...(rows.length ? rows : [emptyRow(5, t("admin.feeds.none"))]));
  renderKey();
}

function renderKey() {
  $("key-box").hidden = !page.key;
  if (!page.key) {
    $("key-whip").value = "";
    $("key-value").value = "";
    return;
  }
  $("key-h").textContent = t("admin.feeds.key_for", { id: page.key.id });
  $("key-whip").value = new URL(page.key.whip, location.href).href;
  $("key-value").value = page.key.key;
}

function showKey(id, key, whip) {
  page.key = { id, key, whip };
  renderKey();
  $("key-value").focus();
  $("key-value").select();
}

async function loadFeeds() {
  const session = $("feed-session").value;
  page.feeds = [];
  if (session) {
    try {
      page.feeds = (await api(`/api/sessions/${enc(session)}/feeds`)).feeds;
    } catch (err) {
      tell("feed-status", () => errorText(err), "error");
    }
  }
  renderFeeds();
}

async function createFeed(ev) {
  ev.preventDefault();
  const session = $("feed-session").value;
  const id = $("feed-id").value.trim();
  if (!session) return invalid("feed-status", "feed-session", "admin.pick_session");
  if (!ID_PATTERN.test(id)) return invalid("feed-status", "feed-id", "admin.v.feed_id");
  const delay = Number($("feed-delay").value || 0);
  if (!Number.isInteger(delay) || delay < 0 || delay > 300) return invalid("feed-status", "feed-delay", "admin.v.delay");
  await busy($("feed-submit"), async () => {
    try {
      const upstream = $("feed-upstream").value.trim() || undefined;
      const created = await api("/api/feeds", { method: "POST", body: { id, session, delay, upstream } });
      if (created.key) {
        showKey(created.feed.id, created.key, created.whip);
        tell("feed-status", () => t("admin.feeds.created", { id }), "ok");
      } else {
        tell("feed-status", () => t("admin.feeds.relayed", { id }), "ok");
      }
      await loadFeeds();
    } catch (err) {
      tell("feed-status", () => errorText(err), "error");
    }
  });
}

async function rotateKey(id) {
  try {
    const { feed, key } = await api(`/api/feeds/${enc(id)}/key`, { method: "POST" });
    showKey(feed.id, key, `/whip/${enc(feed.id)}`);
    tell("feed-status", () => t("admin.feeds.rotated", { id }), "ok");
    await loadFeeds();
  } catch (err) {
    tell("feed-status", () => errorText(err), "error");
  }
}

// --- sensitive words --------------------------------------------------------------------

async function loadWords() {
  try {
    const { words } = await api("/api/sensitive-words");
    $("words-text").value = words.join("\n");
    tell("words-status", () => t("admin.words.count", { n: words.length }));
  } catch (err) {
    tell("words-status", () => errorText(err), "error");
  }
}

async function saveWords(ev) {
  ev.preventDefault();
  const words = [...new Set($("words-text").value.split("\n").map((w) => w.trim()).filter(Boolean))];
  const long = words.find((w) => [...w].length > 50);
  if (long) return invalid("words-status", "words-text", "admin.v.word_long", { word: long });
  await busy($("words-submit"), async () => {
    try {
      const change = await api("/api/sensitive-words", { method: "PUT", body: { words } });
      $("words-text").value = change.words.join("\n");
      tell("words-status", () => {
        const parts = [t("admin.words.saved", { n: change.words.length })];
        const list = (xs) => xs.join(t("admin.sep"));
        if (change.added.length) parts.push(t("admin.words.added", { count: change.added.length, list: list(change.added) }));
        if (change.removed.length) parts.push(t("admin.words.removed", { count: change.removed.length, list: list(change.removed) }));
        if (!change.added.length && !change.removed.length) parts.push(t("admin.words.unchanged"));
        return parts.join(t("admin.sep2"));
      }, "ok");
    } catch (err) {
      tell("words-status", () => errorText(err), "error");
    }
  });
}

// --- reports and exports ----------------------------------------------------------------

async function exportFile(button, what) {
  const session = $("export-session").value;
  if (!session) return invalid("export-status", "export-session", "admin.pick_session");
  const fmt = $("export-format").value;
  const path = what === "report"
    ? `/api/sessions/${enc(session)}/report?format=${fmt}`
    : `/api/sessions/${enc(session)}/comments/export?format=${fmt}`;
  const name = `${what}-${session}.${fmt}`;
  await busy(button, async () => {
    tell("export-status", () => t("admin.exports.preparing", { name }));
    try {
      await download(path, name);
      tell("export-status", () => t("admin.exports.done", { name }), "ok");
    } catch (err) {
      tell("export-status", () => errorText(err), "error");
    }
  });
}

// --- ranking ----------------------------------------------------------------------------

const repName = (r) => h("span", {}, r.name || r.rep, " ", h("code", { class: "hint" }, r.rep));

function renderRanking() {
  const found = page.rank;
  $("rank-result").hidden = !found;
  if (!found) return;
  const { scores, top } = found;
  const podium = top.top.map((r) => h("li", { dataset: { rep: r.rep } },
    h("span", { class: "badge" }, t("admin.rank.place", { rank: r.rank })), " ",
    h("strong", {}, r.name || r.rep), r.delegation ? h("span", { class: "hint" }, ` · ${r.delegation}`) : null, " ",
    h("span", { class: "rate" }, t("admin.rank.points", { points: num(r.points) }))));
  $("top3").replaceChildren(...(podium.length ? podium : [h("li", { class: "hint" }, t("admin.rank.none"))]));
  const meta = [t("admin.rank.meta", {
    label: scores.period.label, ranked: scores.ranked, version: scores.version, at: fmtDateTime(scores.scored_at),
  })];
  if (scores.ranked > scores.rankings.length) meta.push(t("admin.rank.more", { shown: scores.rankings.length }));
  $("rank-meta").textContent = meta.join(" ");
  const rows = scores.rankings.map((r) => h("tr", { dataset: { rep: r.rep } },
    h("td", {}, String(r.rank)),
    h("th", { scope: "row" }, repName(r)),
    h("td", {}, r.delegation || "—"),
    h("td", {}, r.level ? t(`admin.level.${r.level}`) : "—"),
    h("td", {}, num(r.points)),
    h("td", {}, Object.entries(r.by_activity || {})
      .map(([k, v]) => `${t(`admin.activity.${k}`)} ${num(v)}`).join(t("admin.sep")) || "—")));
  $("rank-rows").replaceChildren(...(rows.length ? rows : [emptyRow(6, t("admin.rank.none"))]));
}

async function loadRanking(ev) {
  ev.preventDefault();
  const period = $("rank-period").value.trim() || "year";
  await busy($("rank-submit"), async () => {
    tell("rank-status", () => t("admin.working"));
    try {
      const [scores, top] = await Promise.all([
        api(`/api/scores?period=${enc(period)}&limit=500`),
        api(`/api/scores/top?period=${enc(period)}`),
      ]);
      page.rank = { scores, top };
      tell("rank-status", () => t("admin.rank.loaded", { label: scores.period.label }), "ok");
    } catch (err) {
      page.rank = null;
      tell("rank-status", () => errorText(err), "error");
    }
    renderRanking();
  });
}

// --- reminders --------------------------------------------------------------------------

function renderReminders() {
  const found = page.reminders;
  $("remind-result").hidden = !found;
  if (!found) return;
  const rows = found.reminders.map((r) => h("tr", { dataset: { rep: r.rep } },
    h("th", { scope: "row" }, repName(r)),
    h("td", {}, r.delegation || "—"),
    h("td", {}, num(r.points)),
    h("td", {}, r.reasons.map((x) => t(`admin.reason.${x}`)).join(t("admin.sep"))),
    h("td", {}, r.last_activity ? fmtDateTime(r.last_activity) : t("admin.never")),
    h("td", {}, t("admin.absences", { absent: r.absent, excused: r.excused }))));
  $("remind-rows").replaceChildren(...(rows.length ? rows : [emptyRow(6, t("admin.remind.none"))]));
}

const remindQuery = () => {
  const period = $("remind-period").value.trim();
  return period ? `?period=${enc(period)}` : "";
};

async function loadReminders(ev) {
  if (ev) ev.preventDefault();
  await busy($("remind-submit"), async () => {
    tell("remind-status", () => t("admin.working"));
    try {
      const found = await api(`/api/scores/reminders${remindQuery()}`);
      page.reminders = found;
      const vars = { label: found.period.label, n: found.reminders.length };
      tell("remind-status", () => t("admin.remind.count", vars), "ok");
    } catch (err) {
      page.reminders = null;
      tell("remind-status", () => errorText(err), "error");
    }
    renderReminders();
  });
}

async function sendReminders() {
  await busy($("remind-send"), async () => {
    tell("remind-status", () => t("admin.working"));
    try {
      const { sent, period } = await api(`/api/scores/reminders${remindQuery()}`, { method: "POST" });
      tell("remind-status", () => t("admin.remind.sent", { n: sent, label: period.label }), "ok");
    } catch (err) {
      tell("remind-status", () => errorText(err), "error");
    }
  });
}

// --- the page ---------------------------------------------------------------------------

function renderAll() {
  document.title = `${t("admin.title")} · Tribune`;
  if (page.me) $("who").textContent = t("admin.who", { name: page.me.name || page.me.rep });
  fillKinds();
  renderSessions();
  renderFeeds();
  renderRoster();
  renderRanking();
  renderReminders();
  for (const [id, note] of notes) say(id, note.text(), note.kind);
}

async function main() {
  setupPage(renderAll);
  fillKinds();
  const start = new Date();
  start.setHours(start.getHours() + 1, 0, 0, 0);
  $("s-start").value = localInput(start);
  $("s-end").value = localInput(new Date(start.getTime() + 2 * 3600 * 1000));
  document.title = `${t("admin.title")} · Tribune`;
  try {
    await signIn();
    page.me = await api("/api/me");
  } catch (err) {
    tell("status", () => errorText(err), "error");
    return;
  }
  if (!page.me.roles.includes("admin")) {
    const roles = page.me.roles.join(", ");
    tell("status", () => t("admin.not_admin", { roles: roles || t("admin.no_roles") }), "error");
    return;
  }
  $("who").textContent = t("admin.who", { name: page.me.name || page.me.rep });
  $("session-form").addEventListener("submit", scheduleSession);
  $("s-audience").addEventListener("change", showParticipants);
  $("sessions-refresh").addEventListener("click", () => busy($("sessions-refresh"), loadSessions));
  $("roster-form").addEventListener("submit", importRoster);
  $("feed-session").addEventListener("change", loadFeeds);
  $("feed-form").addEventListener("submit", createFeed);
  $("key-hide").addEventListener("click", () => { page.key = null; renderKey(); $("feed-id").focus(); });
  $("words-form").addEventListener("submit", saveWords);
  $("export-report").addEventListener("click", (ev) => exportFile(ev.currentTarget, "report"));
  $("export-comments").addEventListener("click", (ev) => exportFile(ev.currentTarget, "comments"));
  $("rank-form").addEventListener("submit", loadRanking);
  $("remind-form").addEventListener("submit", loadReminders);
  twoStep($("remind-send"), "admin.remind.send", sendReminders);
  showParticipants();
  renderAll();
  $("panels").hidden = false;
  await Promise.all([loadSessions(), loadWords()]);
  document.body.dataset.ready = "true";
}

main();
