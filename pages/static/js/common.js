// What every page shares: the sign-in token, the HTTP API, safe DOM building, the
// language switch and the names of things. Text from users is only ever set with
// textContent (through `h`), never parsed as HTML.
import { t, applyI18n, setLang, lang } from "./i18n.js";

export { t, applyI18n, lang };

export const $ = (id) => document.getElementById(id);

// The platform hands the token over in the URL fragment (never sent to a server); the page
// keeps it for this tab and removes it from the address bar.
export function takeToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("tribune.token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return fromHash || sessionStorage.getItem("tribune.token");
}

export const sessionId = () => decodeURIComponent(location.pathname.split("/")[2] || "");

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "internal";
    this.details = error.details;
  }
}

let TOKEN = null;
export function useToken(token) { TOKEN = token; }

// JSON in, JSON out; a non-2xx answer throws ApiError with the node's message.
export async function api(path, { method = "GET", body, raw, type } = {}) {
  const headers = { Authorization: `Bearer ${TOKEN}` };
  let payload;
  if (raw !== undefined) { payload = raw; headers["Content-Type"] = type; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const res = await fetch(path, { method, headers, body: payload });
  const data = (res.headers.get("Content-Type") || "").includes("json") ? await res.json() : null;
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || {});
  return data;
}

// Downloads a file the API serves to the caller only (the token is a header, so a plain
// link cannot carry it).
export async function download(path, filename) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (!res.ok) {
    const data = await res.json().catch(() => ({}));
    throw new ApiError(res.status, data.error || {});
  }
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// h("button", {class: "x", onclick: f, dataset: {id: 1}}, "text", child…): an element built
// without parsing HTML. Strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const fmtTime = (iso) =>
  iso ? new Date(iso).toLocaleTimeString(lang(), { hour: "2-digit", minute: "2-digit" }) : "";
export const fmtDateTime = (iso) =>
  iso ? new Date(iso).toLocaleString(lang(), { dateStyle: "medium", timeStyle: "short" }) : "";
// The session heading the pages share: title (the tab's too), kind, state and time, in
// whichever of #head, #title, #kind, #state and #when the page has.
export function showSession(s) {
  const el = (id) => $(id) || { hidden: false, textContent: "", className: "" };
  el("head").hidden = false;
  el("title").textContent = s.title;
  document.title = `${s.title} · Tribune`;
  el("kind").textContent = t(`kind.${s.kind}`);
  el("state").textContent = t(`state.${s.state}`);
  el("state").className = `badge ${s.state}`;
  el("when").textContent = `${fmtDateTime(s.scheduled_start)} – ${fmtTime(s.scheduled_end)}`;
}

export const pct = (x) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(1)}%`);

export const key = () =>
  (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`).slice(0, 64);

// Shows a message in the page's live region (role=status or alert).
export function say(id, text, kind = "info") {
  const el = $(id);
  if (!el) return;
  el.textContent = text;
  el.dataset.kind = kind;
}

export function errorText(err) {
  if (err instanceof ApiError) return err.message;
  return `${t("error.generic")}: ${err && err.message ? err.message : err}`;
}

// The header every page has: title, language switch. Calls `rerender` after a switch.
export function setupPage(rerender) {
  applyI18n(document);
  const button = $("lang");
  if (button) {
    button.addEventListener("click", () => {
      setLang(lang() === "zh-CN" ? "en" : "zh-CN");
      applyI18n(document);
      if (rerender) rerender();
    });
  }
}

export async function signIn() {
  const token = takeToken();
  if (!token) throw new ApiError(401, { code: "unauthorized", message: t("error.no_token") });
  useToken(token);
  return token;
}

export const KIND_KEYS = [
  "committee_meeting", "special_inquiry", "court_hearing",
  "procuratorate_open_day", "lecture", "consultation",
];
