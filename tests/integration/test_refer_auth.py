"""A blind transfer's REFER challenged by kamailio (407) gets through with digest credentials.

kamailio (``kamailio.cfg.in``, as ``test_kamailio`` runs it) authenticates
INVITEs and records the route; here it also challenges every in-dialog
REFER, as a carrier's proxy may. SIPp, the callee behind it, accepts the
REFER and reports the transfer by NOTIFY: the transfer succeeds only if our
REFER was sent again with Proxy-Authorization.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dialer.sip.call import TransferSucceeded
from dialer.sip.dialog import LocalMedia
from dialer.trunk import TrunkConfig
from dialer.user_agent import UserAgent
from tests.integration import test_kamailio
from tests.integration.peers import SCENARIOS, Sipp, free_port, require, start_sipp
from tests.integration.test_kamailio import Kamailio, options, proxy  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

_IN_DIALOG = "    if (has_totag()) {\n"
_CHALLENGE_REFER = """    if (has_totag()) {
        if (is_method("REFER")) {
            if (!pv_proxy_authenticate("@REALM@", "@PASSWORD@", "0") || $au != "@USERNAME@") {
                proxy_challenge("@REALM@", "0");
                exit;
            }
            consume_credentials();
        }
"""


@pytest.fixture(autouse=True)
def _refer_challenged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = test_kamailio.CONFIG.read_text()
    assert _IN_DIALOG in config
    patched = tmp_path / "kamailio-refer.cfg.in"
    patched.write_text(config.replace(_IN_DIALOG, _CHALLENGE_REFER, 1))
    monkeypatch.setattr(test_kamailio, "CONFIG", patched)


@pytest.fixture
async def callee(tmp_path: Path) -> AsyncIterator[Sipp]:
    require("sipp")
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    # The stock scenario, its answer copying Record-Route: the dialog's
    # in-dialog requests (the REFER) then go through kamailio.
    scenario = (SCENARIOS / "uas_refer_accept.xml").read_text()
    marker = "[last_CSeq:]\n      Contact: <sip:callee@[local_ip]:[local_port]>\n      Content-Type"
    assert scenario.count(marker) == 1
    copy = tmp_path / "uas_refer_accept_rr.xml"
    scenario = scenario.replace(marker, "[last_CSeq:]\n      [last_Record-Route:]" + marker[12:])
    # And its NOTIFYs take the route set (kept from the INVITE) back through kamailio.
    scenario = scenario.replace('<recv request="INVITE">', '<recv request="INVITE" rrs="true">')
    assert "      Event: refer\n" in scenario
    scenario = scenario.replace("      Event: refer\n", "      [routes]\n      Event: refer\n")
    copy.write_text(scenario)
    sipp = await start_sipp(str(copy), workdir)
    yield sipp
    sipp.kill()


async def test_challenged_refer_is_answered_with_credentials(
    proxy: Kamailio,  # noqa: F811
    callee: Sipp,
) -> None:
    trunk = TrunkConfig.from_uri(proxy.uri, username="alice", password="wonderland")
    async with UserAgent(options(), [trunk]) as agent:
        handle = await agent.place_call("1000", media=LocalMedia("127.0.0.1", 40000))
        media = await asyncio.wait_for(handle.answered(), 10)
        assert media is not None, proxy.log.read_text()[-2000:]
        target = f"sip:agent@127.0.0.1:{free_port()}"
        verdict = await asyncio.wait_for(handle.transfer(target), 10)
        assert isinstance(verdict, TransferSucceeded), (verdict, proxy.log.read_text()[-3000:])
        result = await asyncio.wait_for(handle.ended(), 10)
        assert await agent.drain(5.0)
    assert result.disposition == "transferred"
    # INVITE (407, again), REFER (407, again): two challenges answered, one each.
    assert await callee.finish() == 0, callee.errors()
