"""The provider's own v1 Python client, unchanged, against the emulator."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from app.emulator import EmulatorConfig, create_app
from tests.servers import ThreadedServer
from tests.test_emulator import Receiver

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the old client's own deprecation warnings
    from bandwidth.voice import BandwidthVoiceAPIException, Client


@pytest.fixture
def sdk(receiver: Receiver) -> Iterator[Client]:
    emulator = create_app(EmulatorConfig(user_id="u-sdk", token="tok", secret="sec",
                                         media_ms=10))
    server = ThreadedServer(emulator).start()
    yield Client("u-sdk", "tok", "sec", api_endpoint=server.url)
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.stop()


def test_the_provider_client_drives_a_whole_conference(sdk: Client, receiver: Receiver
                                                       ) -> None:
    api = sdk
    cid = api.create_conference("+19195551212", callback_url=f"{receiver.url}/cb",
                                callback_timeout=2000, tag="sdk")
    conference = api.get_conference(cid)
    assert (conference["id"], conference["state"], conference["tag"]) == (cid, "created", "sdk")
    first = api.create_conference_member(cid, call_id="c-1", join_tone=True)
    second = api.create_conference_member(cid, call_id="c-2")
    assert [m["id"] for m in api.list_conference_members(cid)] == [first, second]
    api.mute_conference_member(cid, first, True)
    assert api.get_conference_member(cid, first)["mute"] is True
    api.play_audio_to_conference(cid, sentence="Welcome", voice="kate")
    api.update_conference(cid, hold=True)
    assert api.get_conference(cid)["hold"] is True
    assert api.get_conference(cid)["tag"] == "sdk"  # the client's nulls change nothing
    api.remove_conference_member(cid, second)
    api.terminate_conference(cid)
    conference = api.get_conference(cid)
    assert conference["state"] == "completed" and conference["active_members"] == 0


def test_the_provider_client_sees_errors_with_their_code(sdk: Client) -> None:
    with pytest.raises(BandwidthVoiceAPIException) as info:
        sdk.get_conference("conf-missing")
    assert info.value.status_code == 404
    assert info.value.code == "conference-not-found"
    with pytest.raises(BandwidthVoiceAPIException) as info:
        sdk.create_conference("not-a-number")
    assert info.value.status_code == 400
    assert info.value.code == "invalid-number"
