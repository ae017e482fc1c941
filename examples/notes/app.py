"""A small notes service in plain ASGI, with its own tests in test_app.py.

Run it with ``triasgi examples.notes.app:app``.

    GET  /notes                  every note, as JSON
    POST /notes                  {"text": "..."} -> 201 and the new note
    GET  /notes/{id}             one note, or 404
    GET  /notes/wait?after={id}  long poll: the notes newer than {id}, as soon
                                 as there are any, or 204 after 30 seconds
    GET  /stats                  how many notes, how many clients waiting
    WS   /notes/feed             every new note, as a JSON text message

The notes live in a store the lifespan startup creates; a long poll or a
feed whose client goes away stops waiting at once.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import trio

LONG_POLL_SECONDS = 30
MAX_BODY = 10 * 1024


class NoteStore:
    """Notes in memory, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.waiting = 0
        self._changed = trio.Event()

    def add(self, text: str) -> dict[str, Any]:
        note = {"id": len(self.notes) + 1, "text": text}
        self.notes.append(note)
        self._changed.set()
        self._changed = trio.Event()
        return note

    def newer_than(self, note_id: int) -> list[dict[str, Any]]:
        return self.notes[note_id:]

    async def wait_newer_than(self, note_id: int) -> list[dict[str, Any]]:
        self.waiting += 1
        try:
            while not self.newer_than(note_id):
                await self._changed.wait()
        finally:
            self.waiting -= 1
        return self.newer_than(note_id)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket" and scope["path"] == "/notes/feed":
        await feed(scope["state"]["store"], receive, send)


async def lifespan(scope, receive, send):
    await receive()
    scope["state"]["store"] = NoteStore()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


async def http(scope, receive, send):
    store: NoteStore = scope["state"]["store"]
    method, parts = scope["method"], scope["path"].strip("/").split("/")
    note_id = parts[1] if len(parts) == 2 and parts[0] == "notes" else ""
    if method == "GET" and parts == ["notes"]:
        await respond(send, 200, store.notes)
    elif method == "POST" and parts == ["notes"]:
        await create(store, receive, send)
    elif method == "GET" and parts == ["notes", "wait"]:
        query = parse_qs(scope["query_string"].decode())
        await long_poll(store, int(query.get("after", ["0"])[0]), receive, send)
    elif method == "GET" and note_id.isdigit():
        index = int(note_id) - 1
        if 0 <= index < len(store.notes):
            await respond(send, 200, store.notes[index])
        else:
            await respond(send, 404, {"error": "no such note"})
    elif method == "GET" and parts == ["stats"]:
        await respond(send, 200, {"notes": len(store.notes), "waiting": store.waiting})
    else:
        await respond(send, 404, {"error": "not found"})


async def create(store, receive, send):
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            await respond(send, 413, {"error": "note too long"})
            return
        if not message.get("more_body"):
            break
    try:
        text = json.loads(body)["text"]
        if not isinstance(text, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        await respond(send, 400, {"error": 'send {"text": "..."}'})
        return
    await respond(send, 201, store.add(text))


async def long_poll(store, after, receive, send):
    notes = None
    client_gone = False
    async with trio.open_nursery() as nursery:

        async def watch_for_disconnect():
            nonlocal client_gone
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_for_disconnect)
        with trio.move_on_after(LONG_POLL_SECONDS):
            notes = await store.wait_newer_than(after)
        nursery.cancel_scope.cancel()
    if client_gone:
        return
    if notes is None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})
    else:
        await respond(send, 200, notes)


async def feed(store, receive, send):
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    seen = len(store.notes)
    async with trio.open_nursery() as nursery:

        async def watch_for_disconnect():
            while (await receive())["type"] != "websocket.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_for_disconnect)
        while True:
            for note in await store.wait_newer_than(seen):
                await send({"type": "websocket.send", "text": json.dumps(note)})
                seen = note["id"]


async def respond(send, status, data):
    body = json.dumps(data).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json")],
    })
    await send({"type": "http.response.body", "body": body})
