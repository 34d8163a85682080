"""Workers killed with SIGKILL while deliveries flow: nothing answered 2xx is lost.
Likewise while SQLite's database is locked by another process, its files are unwritable or
its disk is full.

A short run of ``bench/faults.py`` (the full run is in bench/README.md): the service under
gunicorn with three workers, a worker killed once a fifth of the deliveries were answered and
every 0.25 s after, every acknowledged delivery checked in the database, the rest retried as
the provider would, each event stored exactly once.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import faults

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them


def test_killing_workers_loses_nothing_acknowledged(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    drop = None
    options = ["--events", "1000", "--senders", "8", "--kill-every", "0.25"]
    if POSTGRES_URL:
        from tests.conftest import fresh_postgres_database

        url, drop = fresh_postgres_database()
        options += ["--database-url", url]
    try:
        status = faults.main(options)
    finally:
        if drop:
            drop()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "workers were killed" in out and " 0 workers were killed" not in out


def _immutable_files_supported() -> bool:
    """``chattr +i`` needs root (CAP_LINUX_IMMUTABLE) and a file system that has it."""
    probe = Path(tempfile.mkdtemp(prefix="confhook-chattr-")) / "probe"
    probe.write_bytes(b"")
    try:
        subprocess.run(["chattr", "+i", str(probe)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    subprocess.run(["chattr", "-i", str(probe)], check=True, capture_output=True)
    shutil.rmtree(probe.parent)
    return True


def _tmpfs_mount_allowed() -> bool:
    """Mounting a tmpfs needs root (CAP_SYS_ADMIN), which containers often withhold."""
    probe = Path(tempfile.mkdtemp(prefix="confhook-mount-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "confhook-probe", str(probe)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    subprocess.run(["umount", str(probe)], check=True, capture_output=True)
    probe.rmdir()
    return True


# Each: bench/faults.py's options, what its report says, and what the machine must allow.
SQLITE_FAULTS: dict[str, tuple[list[str], str, Callable[[], bool] | None]] = {
    # Another process holds the write lock for 3 s; writes wait 0.5 s for it, then 503.
    "locked": (["--lock-database", "3", "--busy-timeout-ms", "500"],
               "held the database's lock", None),
    # The database and its log are immutable for 1.5 s: every write fails, even as root, and
    # connections opened meanwhile are read-only.
    "unwritable": (["--unwritable", "1.5"], "files were unwritable",
                   _immutable_files_supported),
    # Its own file system is filled by another file for 1.5 s: SQLITE_FULL, as on a real
    # full disk.
    "full disk": (["--full-disk", "--outage", "1.5"], "disk was full", _tmpfs_mount_allowed),
}


@pytest.mark.parametrize("fault", list(SQLITE_FAULTS))
def test_a_sqlite_fault_is_503_then_the_same_service_stores_again(
        fault: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    if POSTGRES_URL:
        pytest.skip("a SQLite fault: the suite runs on PostgreSQL")
    options, says, needs = SQLITE_FAULTS[fault]
    if needs is not None and not needs():
        pytest.skip(f"{options[0]} needs root (chattr, mount), which this run does not have")
    status = faults.main(["--events", "300", "--senders", "8", *options])
    out = capsys.readouterr().out
    assert status == 0, out  # every 2xx stored, every retry stored once, no restart
    assert says in out
    refused = int(out.split(" of them 503")[0].rsplit("(", 1)[1])
    assert refused > 0, out  # during the fault: 503s, never a 2xx for what was not stored
