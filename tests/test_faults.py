"""Workers killed with SIGKILL while deliveries flow: nothing answered 2xx is lost.
Likewise while SQLite's database is locked by another process, its files are unwritable or
its disk is full.

A short run of ``bench/faults.py`` (the full run is in bench/README.md): the service under
gunicorn with three workers, a worker killed every 0.4 s, every acknowledged delivery checked
in the database, the rest retried as the provider would, each event stored exactly once.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench import faults


def test_killing_workers_loses_nothing_acknowledged(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    drop = None
    options = ["--events", "400", "--senders", "8", "--kill-every", "0.4"]
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


def test_sqlite_locked_by_another_process_is_503_then_recovers(
        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    if POSTGRES_URL:
        pytest.skip("a SQLite fault: the suite runs on PostgreSQL")
    # Another process holds the write lock for 3 s; writes wait 0.5 s for it, then 503.
    status = faults.main(["--events", "300", "--senders", "8", "--lock-database", "3",
                          "--busy-timeout-ms", "500"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "held the database's lock" in out
    refused = int(out.split(" of them 503")[0].rsplit("(", 1)[1])
    assert refused > 0, out  # while locked: 503s, never a 2xx for what was not stored


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


def test_sqlite_files_unwritable_is_503_then_recovers(
        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    if POSTGRES_URL:
        pytest.skip("a SQLite fault: the suite runs on PostgreSQL")
    if not _immutable_files_supported():
        pytest.skip("chattr +i is not available here (needs root and ext4 or the like)")
    # The database and its log are immutable for 1.5 s: every write fails (even as root), and
    # connections opened meanwhile are read-only. Then the same service must store again.
    status = faults.main(["--events", "300", "--senders", "8", "--unwritable", "1.5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "files were unwritable" in out
    refused = int(out.split(" of them 503")[0].rsplit("(", 1)[1])
    assert refused > 0, out  # while unwritable: 503s, never a 2xx for what was not stored


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


def test_sqlite_full_disk_is_503_then_recovers(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    if POSTGRES_URL:
        pytest.skip("a SQLite fault: the suite runs on PostgreSQL")
    if not _tmpfs_mount_allowed():
        pytest.skip("cannot mount a tmpfs here (needs root)")
    # The database's own file system is filled by another file for 1.5 s: SQLITE_FULL, as on
    # a real full disk. Then the file goes, and the same service must store again.
    status = faults.main(["--events", "300", "--senders", "8", "--full-disk",
                          "--outage", "1.5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "disk was full" in out
    refused = int(out.split(" of them 503")[0].rsplit("(", 1)[1])
    assert refused > 0, out  # while full: 503s, never a 2xx for what was not stored
