// The live channel (docs/protocol.md, "Socket.IO"): one connection, the session's state kept
// gap-free across reconnects. After a drop the client reconnects with `since` = the last seq
// it applied, so the node replays what was missed; a jump in seq triggers `resync`.
import { io, msgpackParser } from "/static/vendor/vendor.js";
import { $, key, t } from "./common.js";

export class Live extends EventTarget {
  constructor(token, session) {
    super();
    this.token = token;
    this.session = session;
    this.epoch = null;
    this.seq = 0;
    this.you = null;
    this.comments = new Map(); // id → Comment, published ones only
    this.polls = new Map(); // id → PollState
    this.queue = new Map(); // id → QueuedComment (staff)
    this.tallies = new Map(); // poll id → tally
    this.presence = 0;
    this.sessionState = null;
    this.feeds = new Map(); // feed id → {live, reason}
    this.status = "connecting";
    this._resyncing = null;
  }

  connect() {
    this.socket = io({
      parser: msgpackParser,
      transports: ["websocket"],
      reconnectionDelayMax: 5000,
      auth: (cb) =>
        cb({
          token: this.token,
          session: this.session,
          since: this.epoch ? { epoch: this.epoch, seq: this.seq } : null,
        }),
    });
    const s = this.socket;
    s.on("connect", () => this._status("live"));
    s.on("disconnect", () => this._status("reconnecting"));
    s.on("connect_error", (err) => {
      const code = err.data && err.data.code;
      if (code === "unauthorized" || code === "not_found" || code === "forbidden") {
        s.disconnect();
        this._status("refused", err.message);
      } else this._status("reconnecting");
    });
    s.on("hello", (m) => {
      this.you = m.you;
      if (m.epoch !== this.epoch) this.epoch = null; // a snapshot follows
      this._emit("hello", m);
    });
    s.on("snapshot", (snap) => this._snapshot(snap));
    s.on("events", (list) => this._events(list));
    s.on("presence", (m) => { this.presence = m.online; this._emit("presence", m); });
    s.on("tally", (m) => { this.tallies.set(m.poll, m); this._emit("tally", m); });
    s.on("nudge", (m) => this._emit("nudge", m));
    s.on("queue", (m) => {
      if (m.full) this.queue.clear();
      for (const c of m.pending || m.added || []) this.queue.set(c.id, c);
      for (const id of m.removed || []) this.queue.delete(id);
      this._emit("queue", m);
    });
    return this;
  }

  // Sends a message and waits for its acknowledgement. A message that gets no answer (the
  // connection dropped) is sent again with the same payload, and so the same key, so the
  // node records it once.
  async request(event, payload, { attempts = 20, timeout = 8000 } = {}) {
    for (let i = 0; ; i++) {
      try {
        const ack = await this.socket.timeout(timeout).emitWithAck(event, payload);
        if (ack && ack.ok === false && ack.error && ack.error.code === "unavailable" && i < attempts) {
          await new Promise((ok) => setTimeout(ok, 1000));
          continue;
        }
        return ack;
      } catch (err) {
        if (i >= attempts) throw err;
        this._status(this.socket.connected ? "live" : "reconnecting");
      }
    }
  }

  sendComment(text, commentKey = key()) {
    return this.request("comment.send", { text, key: commentKey });
  }

  vote(poll, answers, voteKey = key()) {
    return this.request("vote.cast", { poll, answers, key: voteKey });
  }

  _status(status, message) {
    this.status = status;
    this.statusMessage = message || "";
    this._emit("status", { status, message });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _snapshot(snap) {
    this.epoch = snap.epoch;
    this.seq = snap.seq;
    this.comments.clear();
    for (const c of [...snap.comments, ...snap.pinned]) this.comments.set(c.id, c);
    this.polls.clear();
    for (const p of snap.polls) this.polls.set(p.id, p);
    this._emit("reset", snap);
  }

  async _events(list) {
    if (this._resyncing) await this._resyncing;
    for (const ev of list) {
      if (ev.seq <= this.seq) continue; // already applied
      if (ev.seq > this.seq + 1) {
        this._resyncing = this._resync();
        await this._resyncing;
        this._resyncing = null;
        if (ev.seq <= this.seq) continue;
      }
      this._apply(ev);
    }
  }

  async _resync() {
    for (;;) {
      const ack = await this.request("resync", { since: { epoch: this.epoch, seq: this.seq } });
      if (!ack || !ack.ok) return;
      for (const ev of ack.events) if (ev.seq === this.seq + 1) this._apply(ev);
      if (!ack.more) return;
    }
  }

  _apply(ev) {
    this.seq = ev.seq;
    const d = ev.data;
    switch (ev.type) {
      case "session.scheduled":
        this.sessionState = d.state;
        break;
      case "session.state":
        this.sessionState = d.state;
        break;
      case "comment.published":
        this.comments.set(d.id, d);
        break;
      case "comment.updated": {
        const c = this.comments.get(d.id);
        if (c) Object.assign(c, d);
        break;
      }
      case "comment.removed":
        this.comments.delete(d.id);
        break;
      case "poll.opened":
        this.polls.set(d.poll.id, { ...d.poll, mine: (this.polls.get(d.poll.id) || {}).mine || {} });
        break;
      case "poll.closed": {
        const p = this.polls.get(d.poll);
        if (p) { p.state = "closed"; if (d.results) p.results = d.results; }
        break;
      }
      case "poll.results": {
        const p = this.polls.get(d.poll);
        if (p) { p.state = "published"; p.results = d.results; }
        else this.polls.set(d.poll, { id: d.poll, state: "published", results: d.results, questions: [] });
        break;
      }
      case "feed.live":
        this.feeds.set(d.feed, { live: true, since: d.since });
        break;
      case "feed.ended":
        this.feeds.set(d.feed, { live: false, reason: d.reason });
        break;
      default:
        break;
    }
    this._emit("event", ev);
  }
}

// The page header's connection state (#conn) and presence count (#presence), kept current;
// returns the function that draws them, to call again after a language switch.
export function showConnection(live) {
  const draw = () => {
    const conn = $("conn");
    conn.dataset.state = live.status;
    conn.textContent = live.status === "refused"
      ? t("conn.refused", { message: live.statusMessage }) : t(`conn.${live.status}`);
    const presence = $("presence");
    if (presence) presence.textContent = t("presence", { n: live.presence });
  };
  live.addEventListener("status", draw);
  live.addEventListener("presence", draw);
  draw();
  return draw;
}
