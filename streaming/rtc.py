"""WebRTC plumbing shared by ingest and viewing: ICE settings, the checks every SDP offer
passes before a peer connection exists, and the codecs Tribune sends.

Host addresses: aioice gathers candidates on every interface (and never on 127.0.0.1);
`webrtc_host_addresses` replaces that list, which is how the tests keep ICE on loopback.
"""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCRtpTransceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.sdp import SessionDescription

from config.settings import Settings
from streaming.errors import BadOffer

SDP_TYPE = "application/sdp"
MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA = 4  # m-lines in one offer
MAX_CODECS = 64  # payload types in one m-line

_stock_host_addresses = aioice.ice.get_host_addresses


def limit_host_addresses(addresses: tuple[str, ...]) -> None:
    """Gather ICE host candidates only on `addresses` (all interfaces when empty)."""
    if not addresses:
        aioice.ice.get_host_addresses = _stock_host_addresses
        return
    chosen = list(addresses)

    def only_these(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = only_these


def configuration(settings: Settings) -> RTCConfiguration:
    """ICE servers from settings; none by default (aiortc's own default is a public STUN host)."""
    servers = []
    for url in settings.ice_servers:
        if url.startswith("turn"):
            servers.append(
                RTCIceServer(
                    urls=url,
                    username=settings.turn_username or None,
                    credential=settings.turn_password or None,
                )
            )
        else:
            servers.append(RTCIceServer(urls=url))
    return RTCConfiguration(iceServers=servers)


def read_offer(body: bytes, content_type: str, *, want_video: bool = False) -> tuple[str, set[str]]:
    """The offer as text and the media kinds it offers, or BadOffer saying what is wrong with
    it. Nothing is built before this passes, so a bad offer leaves no peer connection behind."""
    if content_type != SDP_TYPE:
        raise BadOffer(f"send the SDP offer with Content-Type: {SDP_TYPE}, not {content_type or 'none'}")
    if len(body) > MAX_SDP_BYTES:
        raise BadOffer(f"the SDP offer is {len(body)} bytes; at most {MAX_SDP_BYTES} are accepted")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadOffer("the SDP offer is not UTF-8 text") from None
    if not text.startswith("v=0"):
        raise BadOffer("that is not an SDP offer: it must start with v=0")
    try:
        parsed = SessionDescription.parse(text)
    except Exception as exc:
        raise BadOffer(f"the SDP offer does not parse: {exc.__class__.__name__}: {exc}") from None
    media = parsed.media
    if not media:
        raise BadOffer("the SDP offer has no m-lines: offer one audio and/or one video track")
    if len(media) > MAX_MEDIA:
        raise BadOffer(f"the SDP offer has {len(media)} m-lines; at most {MAX_MEDIA} are accepted")
    kinds = [m.kind for m in media]
    for kind in ("audio", "video"):
        if kinds.count(kind) > 1:
            raise BadOffer(f"the SDP offer has {kinds.count(kind)} {kind} m-lines; one is accepted")
    for m in media:
        if m.kind not in ("audio", "video"):
            raise BadOffer(f"the SDP offer has an unsupported {m.kind} m-line; offer only audio and video")
        if len(m.rtp.codecs) > MAX_CODECS:
            raise BadOffer(f"the {m.kind} m-line lists {len(m.rtp.codecs)} codecs; at most {MAX_CODECS}")
        if m.ice is None or not m.ice.usernameFragment or not m.dtls or not m.dtls.fingerprints:
            raise BadOffer(f"the {m.kind} m-line lacks ICE credentials or a DTLS fingerprint")
    if want_video and "video" not in kinds:
        raise BadOffer("the offer has no video m-line: add a video transceiver (recvonly)")
    return text, set(kinds)


def prefer_sent_codecs(transceiver: RTCRtpTransceiver) -> None:
    """What Tribune sends: H.264 (packetization-mode 1) with RTX for video, Opus for audio.
    Set before the remote offer is applied, so the answer carries only these."""
    capabilities = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    if transceiver.kind == "video":
        chosen = [
            c
            for c in capabilities
            if (c.mimeType == "video/H264" and c.parameters.get("packetization-mode") == "1")
            or c.mimeType == "video/rtx"
        ]
    else:
        chosen = [c for c in capabilities if c.mimeType == "audio/opus"]
    transceiver.setCodecPreferences(chosen)
