"""Errors of the video paths, each also one of the wire error kinds in `config.errors`."""

from __future__ import annotations

from config.errors import BadRequest, Conflict, NotFound, TribuneError, Unavailable


class StreamingError(TribuneError):
    """Root of the video paths' errors."""


class BadOffer(StreamingError, BadRequest):
    """An SDP offer that is not one we can answer."""


class FeedBusy(StreamingError, Conflict):
    pass


class FeedNotLive(StreamingError, NotFound):
    pass


class NodeFull(StreamingError, Unavailable):
    pass


class PublicOnHls(StreamingError, Conflict):
    """A delayed or cut feed: the public watches its HLS output, not the live WebRTC one."""
