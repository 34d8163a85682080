"""The ``flask`` commands the README shows, run as a user runs them."""

from __future__ import annotations

import json

from flask.testing import FlaskCliRunner

from tests.fakeprovider import FakeProvider


def test_create_conference_creates_it_on_the_provider_and_prints_it(
        runner: FlaskCliRunner, provider: FakeProvider) -> None:
    result = runner.invoke(args=["create-conference", "--from", "+19195551212",
                                 "--tag", "standup"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["state"] == "created" and printed["tag"] == "standup"
    assert printed["conferenceId"]
    sent = provider.requests[-1]["json"]
    assert sent["from"] == "+19195551212" and sent["tag"] == "standup"
    assert sent["callbackUrl"].endswith(printed["callbackUrl"].rsplit("/", 3)[-1])


def test_create_conference_refuses_a_bad_number_before_calling_the_provider(
        runner: FlaskCliRunner, provider: FakeProvider) -> None:
    for number in ("19195551212", "+19195551212\n", "+1 919"):
        result = runner.invoke(args=["create-conference", "--from", number])
        assert result.exit_code == 1, (number, result.output)
        assert "from" in result.output
    assert provider.requests == []


def test_shared_callback_url_prints_both_urls(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["shared-callback-url"])
    assert result.exit_code == 0
    assert "callbackUrl: http" in result.output and "/callbacks/fallback/shared/" in \
        result.output


def test_hash_password_prints_a_hash_the_admin_page_accepts(runner: FlaskCliRunner) -> None:
    from werkzeug.security import check_password_hash

    result = runner.invoke(args=["hash-password"], input="a-long-password\na-long-password\n")
    assert result.exit_code == 0, result.output
    assert check_password_hash(result.output.strip().splitlines()[-1], "a-long-password")
