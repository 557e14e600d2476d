// WebRTC video on the pages: WHEP to watch a feed, WHIP to publish one (docs/protocol.md,
// "Video"). Offers carry every ICE candidate (no trickle), as the node expects.

function gathered(pc) {
  return new Promise((ok) => {
    if (pc.iceGatheringState === "complete") return ok();
    const done = () => pc.iceGatheringState === "complete" && ok();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(ok, 5000); // send what was gathered rather than wait for ever
  });
}

async function exchange(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const res = await fetch(url, {
    method: "POST",
    body: pc.localDescription.sdp,
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
  });
  if (res.status !== 201) {
    const body = await res.json().catch(() => ({}));
    const err = new Error((body.error && body.error.message) || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  const location = new URL(res.headers.get("Location"), res.url).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  return location;
}

function ended(pc, onEnd) {
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") onEnd(pc.connectionState);
  });
}

// Sends the offer of `pc` to `url`; the session to stop (DELETE on its Location).
async function open(pc, url, token, onEnd) {
  ended(pc, onEnd);
  let location;
  try {
    location = await exchange(pc, url, token);
  } catch (err) {
    pc.close();
    throw err;
  }
  return {
    pc,
    async stop() {
      pc.close();
      await fetch(location, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
    },
  };
}

// Plays `feed` in `video`; resolves once the offer is answered. `onEnd` is called when the
// connection fails (the page then retries or shows why).
export async function watch(feed, token, video, onEnd) {
  const pc = new RTCPeerConnection();
  const vt = pc.addTransceiver("video", { direction: "recvonly" });
  const h264 = RTCRtpReceiver.getCapabilities("video").codecs.filter(
    (c) => c.mimeType === "video/H264" && /packetization-mode=1/.test(c.sdpFmtpLine || ""),
  );
  if (h264.length) vt.setCodecPreferences(h264);
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (ev) => {
    stream.addTrack(ev.track);
    video.srcObject = stream;
    video.play().catch(() => {});
  });
  return open(pc, `/whep/${encodeURIComponent(feed)}`, token, onEnd);
}

// Publishes the tracks of `stream` to `feed` with the host's token.
export async function publish(feed, token, stream, onEnd) {
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  return open(pc, `/whip/${encodeURIComponent(feed)}`, token, onEnd);
}

// Bits per second sent (kind "outbound-rtp") or received ("inbound-rtp") since the last call.
export function rateMeter(pc, type) {
  let last = null;
  return async () => {
    const stats = await pc.getStats();
    let bytes = 0;
    let frames = 0;
    for (const s of stats.values()) {
      if (s.type === type && s.kind === "video") {
        bytes += type === "outbound-rtp" ? s.bytesSent || 0 : s.bytesReceived || 0;
        frames += type === "outbound-rtp" ? s.framesEncoded || 0 : s.framesDecoded || 0;
      }
    }
    const now = performance.now();
    const bps = last ? ((bytes - last.bytes) * 8 * 1000) / (now - last.at) : 0;
    last = { bytes, at: now };
    return { bps, frames };
  };
}
