"""With DIALER_METRICS_TOKEN set, /metrics asks for it; the tenants' keys do not open it."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp.test_utils import TestClient

from dialer.settings import Secret, Settings
from tests.conftest import Tenant


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, metrics_token=Secret("scrape-me"))


async def test_metrics_need_the_token(client: TestClient, tenant: Tenant) -> None:
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=tenant.auth)).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer scrape-you"})
    assert wrong.status == 401 and "scrape-me" not in await wrong.text()
    right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert right.status == 200 and "dialer_active_calls" in await right.text()


def test_the_token_is_read_from_the_environment_and_never_shown() -> None:
    settings = Settings.from_env({"DIALER_METRICS_TOKEN": "scrape-me"})
    assert settings.metrics_token.value == "scrape-me"
    assert "scrape-me" not in repr(settings) and "scrape-me" not in str(settings.describe())
