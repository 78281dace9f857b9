"""The ``dialer`` command end to end: migrate, apikey create, up (embedded PostgreSQL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dialer(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dialer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env.update(extra)
    return env


def test_bad_setting_exits_2_naming_the_variable() -> None:
    result = _dialer("migrate", env=_clean_env(DIALER_API_LISTEN="nowhere"))
    assert result.returncode == 2
    assert "DIALER_API_LISTEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_against_configured_database(database_url: str) -> None:
    result = _dialer("migrate", env=_clean_env(DIALER_DATABASE_URL=database_url))
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout  # the session fixture already migrated it


async def test_up_on_embedded_postgres_serves_the_api(tmp_path: Path) -> None:
    port = _free_port()
    env = _clean_env(DIALER_DATA_DIR=str(tmp_path), DIALER_API_LISTEN=f"127.0.0.1:{port}")
    created = _dialer("apikey", "create", "--tenant", "acme", env=env, timeout=120)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dk_") and len(created.stdout.strip().splitlines()) == 1
    assert "embedded PostgreSQL" in created.stderr and str(tmp_path) in created.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "dialer.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "dialer up did not start"
                time.sleep(0.2)
            async with http.post(
                f"{base}/v1/workflows",
                json={"template": "call-then-sms"},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                assert resp.status == 201
                assert len((await resp.json())["workflow_key"]) == 6
            async with http.get(f"{base}/v1/workflows", headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert (tmp_path / "pgdata").is_dir()


def test_scheduler_runs_on_rabbitmq_and_stops_on_sigterm(database_url: str) -> None:
    env = _clean_env(
        DIALER_DATABASE_URL=database_url,
        DIALER_AMQP_URL=os.environ.get(
            "DIALER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dialer.cli", "scheduler"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "scheduler running" in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert code == 0, proc.stderr.read() if proc.stderr else ""
    alone = _dialer("scheduler", env=_clean_env(DIALER_DATABASE_URL=database_url))
    assert alone.returncode == 2 and "DIALER_AMQP_URL" in alone.stderr
