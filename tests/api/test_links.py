"""Recording links: signed and expiring, ranges, API-key download, deletion and retention."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.links import (
    link_key,
    link_signature,
    purge_expired_recordings,
    recording_file,
    recording_link,
    verify_link,
)
from dialer.ids import new_id
from dialer.outbox import write_event
from dialer.settings import Secret, Settings
from tests.api.test_notifier import (  # noqa: F401  (receiver is a fixture)
    Receiver,
    add_endpoint,
    emit,
    make_records,
    receiver,
    running,
)
from tests.conftest import Tenant

KEY = link_key("s3cret")
RID = uuid.UUID("01890000-0000-7000-8000-000000000001")
OTHER = uuid.UUID("01890000-0000-7000-8000-000000000002")
AUDIO = b"RIFF" + bytes(range(256)) * 40


@pytest.mark.parametrize(
    ("recording_id", "expires", "tamper", "now", "valid"),
    [
        (RID, 2000, None, 1999.0, True),
        (RID, 2000, None, 2000.0, False),  # expired at the instant
        (RID, 2000, None, 5000.0, False),
        (OTHER, 2000, None, 1000.0, False),  # signed for another recording
        (RID, 2001, None, 1000.0, False),  # expiry moved
        (RID, 2000, "sig", 1000.0, False),
        (RID, 2000, "", 1000.0, False),
    ],
)
def test_verify_link(
    recording_id: uuid.UUID, expires: int, tamper: str | None, now: float, valid: bool
) -> None:
    assert KEY is not None
    sig = link_signature(KEY, RID, 2000)
    if tamper is not None:
        sig = tamper or sig[:-1] + ("A" if sig[-1] != "A" else "B")
    assert verify_link(KEY, recording_id, str(expires), sig, now) is valid


@pytest.mark.parametrize("expires", ["", "-5", "1e9", "١٢٣", "9" * 13])
def test_malformed_expiry_is_refused(expires: str) -> None:
    assert KEY is not None
    assert not verify_link(KEY, RID, expires, link_signature(KEY, RID, 0), 0.0)


def test_link_key_is_dedicated_and_needs_a_secret() -> None:
    assert link_key("") is None
    assert link_key("a") != link_key("b")
    assert KEY is not None and len(KEY) == 32


def test_recording_file_stays_inside_the_directory(tmp_path: Path) -> None:
    assert recording_file(tmp_path, "a/b.wav") == tmp_path.resolve() / "a" / "b.wav"
    assert recording_file(tmp_path, str(tmp_path / "c.wav")) == tmp_path.resolve() / "c.wav"
    assert recording_file(tmp_path, "../escape.wav") is None
    assert recording_file(tmp_path, "/etc/passwd") is None


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        webhook_secret=Secret("s3cret"),
        webhook_allow_hosts=("127.0.0.0/8",),
        public_url="https://dialer.example",
    )


async def make_recording(
    pool: asyncpg.Pool, tenant: Tenant, settings: Settings, *, age_days: int = 0
) -> tuple[uuid.UUID, uuid.UUID, Path]:
    workflow_id, (record_id,) = await make_records(pool, tenant, 1)
    call_id, recording_id = new_id(), new_id()
    relative = f"{tenant.id}/{recording_id}.wav"
    path = settings.recording_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(AUDIO)
    await pool.execute(
        """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state,
               disposition, ended_at)
           VALUES ($1, $2, $3, $4, '+12125550123', 'ended', 'answered', now())""",
        call_id,
        tenant.id,
        record_id,
        workflow_id,
    )
    await pool.execute(
        """INSERT INTO recordings (id, tenant_id, call_id, path, bytes, duration_s, created_at)
           VALUES ($1, $2, $3, $4, $5, 2.5, now() - make_interval(days => $6))""",
        recording_id,
        tenant.id,
        call_id,
        relative,
        len(AUDIO),
        age_days,
    )
    return call_id, recording_id, path


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_signed_link_serves_ranges_and_refuses_tampering(
    client: TestClient, pool: asyncpg.Pool, settings: Settings, tenant: Tenant
) -> None:
    _, recording_id, _ = await make_recording(pool, tenant, settings)
    _, other_id, _ = await make_recording(pool, tenant, settings)
    resp = await client.get(f"/v1/recordings/{recording_id}", headers=tenant.auth)
    info = await resp.json()
    assert info["download_url"].startswith(
        f"https://dialer.example/v1/recordings/{recording_id}/download?expires="
    )
    link = _path_of(info["download_url"])
    whole = await client.get(link)
    assert whole.status == 200
    assert whole.headers["Content-Type"] == "audio/wav"
    assert await whole.read() == AUDIO
    part = await client.get(link, headers={"Range": "bytes=4-13"})
    assert part.status == 206
    assert await part.read() == AUDIO[4:14]
    assert part.headers["Content-Range"] == f"bytes 4-13/{len(AUDIO)}"

    assert KEY is not None
    expired = recording_link("", KEY, recording_id, int(time.time()) - 1)["url"]
    foreign = link.replace(str(recording_id), str(other_id))
    tampered = link[:-2] + ("AA" if not link.endswith("AA") else "BB")
    later = link.replace("expires=", "expires=9")
    for bad in (expired, foreign, tampered, later, f"/v1/recordings/{recording_id}/download?sig=x"):
        resp = await client.get(bad)
        assert resp.status == 403, bad
        assert (await resp.json())["error"]["field"] == "sig"


async def test_download_with_the_api_key_and_isolation(
    client: TestClient,
    pool: asyncpg.Pool,
    settings: Settings,
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    call_id, recording_id, path = await make_recording(pool, tenant, settings)
    download = f"/v1/recordings/{recording_id}/download"
    assert (await client.get(download)).status == 401
    resp = await client.get(download, headers=tenant.auth)
    assert resp.status == 200 and await resp.read() == AUDIO
    for method, url in [
        ("get", download),
        ("get", f"/v1/recordings/{recording_id}"),
        ("delete", f"/v1/recordings/{recording_id}"),
        ("get", f"/v1/calls/{call_id}"),
        ("get", f"/v1/calls/{call_id}/recording"),
    ]:
        resp = await getattr(client, method)(url, headers=other_tenant.auth)
        assert resp.status == 404, url
    assert path.exists()
    listed = await client.get("/v1/recordings?phone=2125550123", headers=other_tenant.auth)
    assert (await listed.json())["items"] == []


async def test_delete_removes_the_file_and_the_link_stops(
    client: TestClient, pool: asyncpg.Pool, settings: Settings, tenant: Tenant
) -> None:
    _, recording_id, path = await make_recording(pool, tenant, settings)
    info = await (await client.get(f"/v1/recordings/{recording_id}", headers=tenant.auth)).json()
    link = _path_of(info["download_url"])
    assert (
        await client.delete(f"/v1/recordings/{recording_id}", headers=tenant.auth)
    ).status == 204
    assert not path.exists()
    assert (await client.get(link)).status == 410
    gone = await client.get(f"/v1/recordings/{recording_id}", headers=tenant.auth)
    body = await gone.json()
    assert body["deleted_at"] is not None and body["download_url"] is None
    again = await client.delete(f"/v1/recordings/{recording_id}", headers=tenant.auth)
    assert again.status == 204


async def test_retention_and_expiry_purge_recordings(
    client: TestClient, pool: asyncpg.Pool, settings: Settings, tenant: Tenant
) -> None:
    _, old_id, old_path = await make_recording(pool, tenant, settings, age_days=3)
    _, new_id_, new_path = await make_recording(pool, tenant, settings)
    _, dated_id, dated_path = await make_recording(pool, tenant, settings)
    resp = await client.put("/v1/recording-retention", json={"days": 2}, headers=tenant.auth)
    assert (await resp.json()) == {"days": 2}
    assert (
        await client.put("/v1/recording-retention", json={"days": 0}, headers=tenant.auth)
    ).status == 422
    resp = await client.patch(
        f"/v1/recordings/{dated_id}",
        json={"expires_at": "2000-01-01T00:00:00Z"},
        headers=tenant.auth,
    )
    assert resp.status == 200, await resp.text()
    assert await purge_expired_recordings(pool, settings.recording_dir) >= 2
    assert not old_path.exists() and not dated_path.exists() and new_path.exists()
    rows = {
        r["id"]: r["deleted_at"]
        for r in await pool.fetch(
            "SELECT id, deleted_at FROM recordings WHERE id = ANY ($1::uuid[])",
            [old_id, new_id_, dated_id],
        )
    }
    assert rows[old_id] is not None and rows[dated_id] is not None and rows[new_id_] is None
    resp = await client.put("/v1/recording-retention", json={"days": None}, headers=tenant.auth)
    assert (await (await client.get("/v1/recording-retention", headers=tenant.auth)).json()) == {
        "days": None
    }


@pytest.mark.parametrize(
    ("expires_at", "status"),
    [
        ("0001-01-01T00:00:00+01:00", 422),  # before year 1 in UTC
        ("9999-12-31T23:59:59-01:00", 422),  # after year 9999 in UTC
        ("9999-12-31T22:59:59-01:00", 200),
        ("2030-01-05T09Z", 200),
    ],
)
async def test_expiry_at_the_edge_of_the_calendar(
    client: TestClient,
    pool: asyncpg.Pool,
    settings: Settings,
    tenant: Tenant,
    expires_at: str,
    status: int,
) -> None:
    _, recording_id, _ = await make_recording(pool, tenant, settings)
    resp = await client.patch(
        f"/v1/recordings/{recording_id}", json={"expires_at": expires_at}, headers=tenant.auth
    )
    assert resp.status == status, await resp.text()
    if status == 422:
        assert (await resp.json())["error"]["field"] == "expires_at"


async def test_call_completed_webhook_carries_a_working_link(
    client: TestClient,
    pool: asyncpg.Pool,
    settings: Settings,
    tenant: Tenant,
    receiver: Receiver,  # noqa: F811
) -> None:
    call_id, recording_id, _ = await make_recording(pool, tenant, settings)
    await add_endpoint(pool, tenant, f"{receiver.base}/calls", receiver=receiver)
    await emit(pool, tenant, None, None, "call.completed", {"call_id": str(call_id)})
    await emit(pool, tenant, None, None, "call.completed", {"call_id": str(new_id())})
    async with running(pool, settings):
        await receiver.wait(lambda: len(receiver.of("/calls")) == 2)
    with_link, without = sorted(
        (h.body["data"] for h in receiver.of("/calls")), key=lambda d: d["recording_url"] is None
    )
    assert without["recording_url"] is None
    assert with_link["recording_id"] == str(recording_id)
    resp = await client.get(_path_of(with_link["recording_url"]))
    assert resp.status == 200 and await resp.read() == AUDIO
    assert receiver.bad_signatures == []
    await pool.execute(
        "UPDATE webhook_endpoints SET enabled = false WHERE tenant_id = $1", tenant.id
    )


async def test_the_live_view_shows_each_event_as_its_webhook_body(
    client: TestClient, pool: asyncpg.Pool, settings: Settings, tenant: Tenant
) -> None:
    # The README promises the stream's data is the webhook body: the timestamp,
    # and the recording link the notifier adds, are there too.
    call_id, recording_id, _ = await make_recording(pool, tenant, settings)
    async with pool.acquire() as conn:
        await write_event(
            conn,
            tenant_id=tenant.id,
            event_type="recording.available",
            payload={"recording_id": str(recording_id), "call_id": str(call_id)},
        )
        await write_event(
            conn,
            tenant_id=tenant.id,
            event_type="call.completed",
            payload={"call_id": str(new_id()), "disposition": "busy"},
        )
    resp = await client.get("/v1/live?after=0", headers=tenant.auth)
    bodies = []
    async with asyncio.timeout(5):
        while len(bodies) < 2:
            line = (await resp.content.readline()).decode()
            if line.startswith("data: "):
                bodies.append(json.loads(line.removeprefix("data: ")))
    resp.close()
    available, completed = bodies
    assert set(available) == {"type", "id", "timestamp", "data"}
    assert available["timestamp"].endswith("Z")
    data = available["data"]
    assert data["recording_id"] == str(recording_id)
    assert data["recording_url_expires_at"]
    got = await client.get(_path_of(data["recording_url"]))
    assert got.status == 200 and await got.read() == AUDIO
    assert completed["data"]["recording_url"] is None
