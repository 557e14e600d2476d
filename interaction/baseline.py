"""The baseline the comment benchmark is compared with: stock python-socketio, one
`emit(room=…)` per event, as a naive implementation would publish. Not used by nodes.

    python -m interaction.baseline PORT
"""

from __future__ import annotations

import sys
import time
from typing import Any

import socketio
from aiohttp import web

ROOM = "session"


def create_baseline_app() -> web.Application:
    sio = socketio.AsyncServer(
        async_mode="aiohttp", serializer="msgpack", logger=False, engineio_logger=False
    )
    app = web.Application()
    sio.attach(app)
    state = {"seq": 0}

    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        await sio.enter_room(sid, ROOM)
        await sio.emit("hello", {"seq": state["seq"]}, to=sid)
        await sio.emit("snapshot", {"seq": state["seq"], "comments": []}, to=sid)

    async def publish(sid: str, data: Any) -> dict[str, Any]:
        state["seq"] += 1
        event = {"seq": state["seq"], "type": "comment.published", "at": time.time(), "data": data}
        await sio.emit("events", [event], room=ROOM)
        return {"ok": True, "seq": state["seq"]}

    sio.on("connect", connect)
    sio.on("publish", publish)
    return app


if __name__ == "__main__":
    web.run_app(create_baseline_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
