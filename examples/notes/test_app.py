"""Tests of the notes service, written with triasgi's fixtures.

``triasgi_client`` runs the app in the real server with in-memory
connections, so ``autojump_clock`` turns the 30 second long poll into an
instant; ``triasgi_server`` serves it on a real port for any client.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from .app import LONG_POLL_SECONDS, app


@pytest.fixture
async def client(triasgi_client):
    return await triasgi_client(app)


async def test_a_new_note_is_listed(client):
    response = await client.post("/notes", json={"text": "buy milk"})
    assert response.status_code == 201
    assert response.json() == {"id": 1, "text": "buy milk"}
    assert (await client.get("/notes")).json() == [{"id": 1, "text": "buy milk"}]
    assert (await client.get("/notes/1")).json()["text"] == "buy milk"
    assert (await client.get("/notes/2")).status_code == 404


@pytest.mark.parametrize("body", [b"not json", b'{"txt": "x"}', b'{"text": 3}'])
async def test_a_malformed_note_is_refused(client, body):
    response = await client.post("/notes", content=body)
    assert response.status_code == 400
    assert (await client.get("/stats")).json()["notes"] == 0


async def test_a_note_too_long_is_refused(client):
    response = await client.post("/notes", json={"text": "x" * 20_000})
    assert response.status_code == 413


async def test_long_poll_answers_as_soon_as_a_note_arrives(client, autojump_clock):
    answers = []

    async def poll():
        # Like any httpx client, this one gives up after 5 seconds unless told.
        response = await client.get("/notes/wait?after=0", timeout=60)
        answers.append(response.json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(10)
        assert (await client.get("/stats")).json()["waiting"] == 1
        await client.post("/notes", json={"text": "hello"})
    assert answers == [[{"id": 1, "text": "hello"}]]
    assert trio.current_time() == pytest.approx(10)


async def test_long_poll_gives_up_after_thirty_seconds(client, autojump_clock):
    response = await client.get("/notes/wait?after=0", timeout=LONG_POLL_SECONDS + 5)
    assert response.status_code == 204
    assert trio.current_time() == pytest.approx(LONG_POLL_SECONDS)


async def test_a_client_that_gives_up_stops_its_long_poll(client, autojump_clock):
    with trio.move_on_after(5):
        await client.get("/notes/wait?after=0")
    # Let the server notice the disconnect and the app stop waiting.
    await trio.testing.wait_all_tasks_blocked()
    assert (await client.get("/stats")).json()["waiting"] == 0


async def test_the_feed_pushes_each_new_note(client):
    async with client.open_websocket("/notes/feed") as feed:
        await client.post("/notes", json={"text": "first"})
        await client.post("/notes", json={"text": "second"})
        assert json.loads(await feed.receive_text()) == {"id": 1, "text": "first"}
        assert json.loads(await feed.receive_text()) == {"id": 2, "text": "second"}
    # Closing the feed stops its wait.
    await trio.testing.wait_all_tasks_blocked()
    assert (await client.get("/stats")).json()["waiting"] == 0


async def test_served_on_a_real_port(triasgi_server):
    server = await triasgi_server(app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/notes", json={"text": "over TCP"})
        response = await client.get("/notes")
    assert response.json() == [{"id": 1, "text": "over TCP"}]
