"""Retention: `flask purge` removes (and archives) what is older than N days, in batches."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from app import db
from app.keys import callback_key
from app.models import Event, RejectedDelivery, utcnow
from tests import events as ev
from tests.conftest import AUTH, SECRET, create
from tests.events import T0, deliver, life

SHARED = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"


def age(app: Flask, table: type, days: int, *where: object) -> None:
    with app.app_context():
        session = db.write_session()
        old = utcnow() - timedelta(days=days)
        values = ({"first_received_at": old, "last_received_at": old} if table is Event
                  else {"minute": old.replace(second=0, microsecond=0)})
        session.execute(update(table).where(*where).values(**values))
        session.commit()


def test_purge_archives_then_removes_only_what_is_old(app: Flask, client: FlaskClient,
                                                      tmp_path: Path) -> None:
    ended = create(client, tag="ended")  # completed in 2024 by its own events
    for event in life(ended["conferenceId"], tag="ended"):
        deliver(client, ended["callbackUrl"], event)
    live = create(client, tag="live")
    cid = live["conferenceId"]
    deliver(client, live["callbackUrl"], ev.conference(cid, "created", tag="live"))
    deliver(client, live["callbackUrl"],
            ev.member(cid, "m-1", "active", "2024-05-01T10:00:05Z", active=1, tag="live"))
    client.post(SHARED, json=ev.media("speak", "conf-unknown", "done", T0))
    client.post(SHARED.replace(SHARED.rsplit("/", 1)[1], "A" * 24), json={})  # rejected
    age(app, Event, 40, Event.conference_id.in_(["conf-unknown"]))
    age(app, Event, 40, Event.conference_id == cid, Event.event_type == "conference")
    age(app, RejectedDelivery, 40)

    runner = app.test_cli_runner()
    dry = runner.invoke(args=["purge", "--older-than-days", "30", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "1 conferences, 2 members, 14 events, 1 rejected-delivery minutes" in dry.output
    assert client.get(f"/api/v1/conferences/{ended['id']}", headers=AUTH).status_code == 200

    archive = tmp_path / "archive.ndjson.gz"
    result = runner.invoke(args=["purge", "--older-than-days", "30", "--batch-size", "1",
                                 "--archive", str(archive)])
    assert result.exit_code == 0, result.output
    assert "1 conferences, 2 members, 14 events, 1 rejected-delivery minutes" in result.output
    lines = [json.loads(line) for line in gzip.decompress(archive.read_bytes()).splitlines()]
    conferences = [line for line in lines if line["kind"] == "conference"]
    assert [c["id"] for c in conferences] == [ended["id"]]
    assert {m["memberId"] for m in conferences[0]["members"]} == {"m-1", "m-2"}
    archived_events = [line for line in lines if line["kind"] == "event"]
    assert len(archived_events) == 14 and all("payload" in e for e in archived_events)

    assert client.get(f"/api/v1/conferences/{ended['id']}", headers=AUTH).status_code == 404
    view = client.get(f"/api/v1/conferences/{live['id']}", headers=AUTH).get_json()
    assert view["state"] == "active" and view["activeMembers"] == 1  # the view stays
    kept = client.get("/api/v1/events", headers=AUTH).get_json()["data"]
    assert [(e["eventType"], e["conferenceId"]) for e in kept] == [("conference-member", cid)]
    assert client.get("/api/v1/stats", query_string={"since": "2000-01-01T00:00:00Z"},
                      headers=AUTH).get_json()["rejectedDeliveries"]["total"] == 0

    again = runner.invoke(args=["purge", "--older-than-days", "30"])
    assert "0 conferences, 0 members, 0 events" in again.output


def test_purge_refuses_nonsense(app: Flask) -> None:
    runner = app.test_cli_runner()
    assert runner.invoke(args=["purge", "--older-than-days", "0"]).exit_code == 2
    assert runner.invoke(args=["purge"]).exit_code == 2


def test_an_event_arriving_while_its_conference_is_purged_is_not_left_matched(
        app: Flask, client: FlaskClient) -> None:
    """A late delivery commits while purge deletes its conference: no orphaned "matched" row.

    On PostgreSQL the purge's delete waits for the delivery's transaction, and then clears the
    new event's link (ON DELETE SET NULL): the event is kept, as unmatched. On SQLite writers
    take turns, so the purge that comes after the delivery deletes the event with the rest.
    """
    import threading
    import time

    from sqlalchemy import select

    from app import retention
    from app.delivery import filing
    from app.delivery.interpret import Received, interpret
    from app.statements import Runner
    from tests.conftest import POSTGRES_URL

    ended = create(client, tag="ended")
    for event in life(ended["conferenceId"], tag="ended"):
        deliver(client, ended["callbackUrl"], event)
    late = ev.media("speak", ended["conferenceId"], "done", "2024-05-01T10:30:00Z", tag="ended")
    with app.app_context():
        delivery = db.database().writer()
        filing.record(Runner.of(delivery), subject=ended["id"], channel="callback",
                      method="POST", event=interpret(Received(late)))  # not committed yet
        done = threading.Event()
        reports: list[retention.PurgeReport] = []

        def purge() -> None:
            with app.app_context():
                reports.append(retention.purge(db.database().writer,
                                               utcnow() - timedelta(days=30)))
            done.set()

        thread = threading.Thread(target=purge)
        thread.start()
        time.sleep(1.0)  # the purge is now waiting for the delivery's transaction
        delivery.commit()
        delivery.close()
        thread.join(30)
        assert done.is_set()
        with db.database().reader() as session:
            rows = session.execute(select(Event.match, Event.match_reason,
                                          Event.conference_pk)).all()
    assert reports[0].conferences == 1
    assert ("matched", None, None) not in [(m, None, pk) for m, _, pk in rows]
    if POSTGRES_URL:
        assert rows == [("unmatched", "conference_purged", None)]
    else:
        assert rows == []
