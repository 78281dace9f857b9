"""How ``dialer up`` shares ports and the broker between its worker processes."""

from __future__ import annotations

import itertools

import pytest

from dialer.settings import HostPort, Settings
from dialer.worker_processes import child_environments, parent_rtp_range, worker_count


def test_each_child_gets_its_own_sip_port_and_rtp_slice() -> None:
    settings = Settings(sip_listen=HostPort("127.0.0.1", 5070), rtp_port_min=20000,
                        rtp_port_max=29999)  # fmt: skip
    envs = child_environments(
        settings, 3, database_url="postgresql://db/x", trunk_uri="sip:t", broker_socket="/s"
    )
    assert [e["DIALER_SIP_LISTEN"] for e in envs] == [
        "127.0.0.1:5071",
        "127.0.0.1:5072",
        "127.0.0.1:5073",
    ]
    slices = [parent_rtp_range(settings, 3)] + [
        (int(e["DIALER_RTP_PORT_MIN"]), int(e["DIALER_RTP_PORT_MAX"])) for e in envs
    ]
    assert slices[0] == (20000, 22499)
    for (low, high), (next_low, _) in itertools.pairwise(slices):
        assert low % 2 == 0 and high == next_low - 1  # even starts, no overlap, no gap
    assert slices[-1][1] <= 29999
    # Without RabbitMQ the children reach the parent's broker on its socket.
    assert all(e["DIALER_BROKER_SOCKET"] == "/s" and "DIALER_AMQP_URL" not in e for e in envs)
    assert all(e["DIALER_DATABASE_URL"] == "postgresql://db/x" for e in envs)


def test_with_rabbitmq_the_children_use_it() -> None:
    settings = Settings(amqp_url="amqp://guest:guest@127.0.0.1:5672/")
    (env,) = child_environments(
        settings, 1, database_url="postgresql://db/x", trunk_uri="sip:t", broker_socket=None
    )
    assert env["DIALER_AMQP_URL"] == settings.amqp_url
    assert "DIALER_BROKER_SOCKET" not in env


def test_a_range_too_small_to_share_is_refused_and_the_count_defaults_to_cores() -> None:
    with pytest.raises(ValueError, match="too small"):
        child_environments(
            Settings(rtp_port_min=20000, rtp_port_max=20003),
            3,
            database_url="postgresql://db/x",
            trunk_uri="sip:t",
            broker_socket=None,
        )
    assert worker_count(Settings(workers=3)) == 3
    assert worker_count(Settings()) >= 1
    assert Settings.from_env({"DIALER_WORKERS": "4"}).workers == 4
