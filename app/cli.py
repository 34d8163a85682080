"""``flask`` commands: migrate the database, create a conference, show the shared URLs."""

from __future__ import annotations

import gzip
import json
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from alembic import command
from alembic.config import Config
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import make_url
from werkzeug.security import generate_password_hash

from app import catapult, conferences, db, keys, retention
from app.models import utcnow
from app.represent import conference_json
from config.settings import PROJECT_ROOT


def alembic_config(url: str) -> Config:
    """Return Alembic's config for the project's migrations against ``url``."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """Bring the database at ``url`` to the newest revision, creating a SQLite file's folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Apply every database migration (run before starting the service)."""
    upgrade_database(current_app.config["DATABASE_URL"])
    click.echo("database is at the newest revision")


@click.command("create-conference")
@click.option("--from", "from_number", required=True, help="Hosting number, E.164.")
@click.option("--tag", default=None)
@click.option("--method", "callback_method", default=None, type=click.Choice(["GET", "POST"]))
@click.option("--timeout", "callback_timeout", default=None, type=int, help="Milliseconds.")
@with_appcontext
def create_conference_command(from_number: str, tag: str | None, callback_method: str | None,
                              callback_timeout: int | None) -> None:
    """Create a conference on the provider with this service's callback URLs."""
    body: dict[str, object] = {"from": from_number}
    if tag is not None:
        body["tag"] = tag
    if callback_method is not None:
        body["callbackHttpMethod"] = callback_method
    if callback_timeout is not None:
        body["callbackTimeout"] = callback_timeout
    try:
        conference = conferences.create(db.write_session(), catapult.client(), body,
                                        current_app.config)
    except conferences.InvalidRequest as exc:
        raise click.ClickException(f"{exc}: {json.dumps(exc.details)}") from None
    except conferences.ProviderFailed as exc:
        raise click.ClickException(f"provider failed: {exc}") from None
    click.echo(json.dumps(conference_json(conference, []), indent=2))


@click.command("shared-callback-url")
@with_appcontext
def shared_callback_url_command() -> None:
    """Print the shared callback and fallback URLs, for conferences made elsewhere."""
    callback, fallback = keys.callback_urls(current_app.config, keys.SHARED)
    click.echo(f"callbackUrl: {callback}\nfallbackUrl: {fallback}")


@click.command("hash-password")
@click.password_option(help="The admin password (asked twice when not given).")
def hash_password_command(password: str) -> None:
    """Print the hash to set as CONFHOOK_ADMIN_PASSWORD_HASH for an admin password."""
    if len(password) < 12:
        raise click.ClickException("use at least 12 characters")
    click.echo(generate_password_hash(password))


@click.command("purge")
@click.option("--older-than-days", "days", required=True, type=click.IntRange(min=1),
              help="Remove what ended or arrived more than this many days ago.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000),
              help="Rows per transaction.")
@click.option("--archive", "archive_path", type=click.Path(dir_okay=False),
              help="Append what is removed to this NDJSON file first (.gz: compressed).")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@with_appcontext
def purge_command(days: int, batch_size: int, archive_path: str | None, dry_run: bool) -> None:
    """Purge (or archive, then purge) ended conferences and events older than N days."""
    cutoff = utcnow() - timedelta(days=days)
    database = db.database()
    if dry_run:
        with database.reader() as session:
            report = retention.count(session, cutoff)
        click.echo(f"would remove (before {cutoff:%Y-%m-%dT%H:%M:%SZ}): {_summary(report)}")
        return
    opener: Any = nullcontext(None)
    if archive_path:
        # Closed by the with below.
        opener = (gzip.open(archive_path, "ab") if archive_path.endswith(".gz")  # noqa: SIM115
                  else open(archive_path, "ab"))  # noqa: SIM115
    with opener as stream:
        archive = retention.Archive(stream) if stream is not None else None
        report = retention.purge(database.writer, cutoff, batch_size, archive)
    where = f", archived to {archive_path}" if archive_path else ""
    click.echo(f"removed (before {cutoff:%Y-%m-%dT%H:%M:%SZ}){where}: {_summary(report)} "
               f"in {report.batches} transactions")


def _summary(report: Any) -> str:
    return (f"{report.conferences} conferences, {report.members} members, "
            f"{report.events} events, {report.rejected_minutes} rejected-delivery minutes, "
            f"{report.signin_minutes} sign-in-failure minutes")


def init_app(app: Flask) -> None:
    app.cli.add_command(purge_command)
    app.cli.add_command(migrate_command)
    app.cli.add_command(create_conference_command)
    app.cli.add_command(shared_callback_url_command)
    app.cli.add_command(hash_password_command)
