"""Two online backups started together must both give a good archive of their own."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import trio

from tests.calls_support import run_call, start_calls_server
from tests.conftest import api_key_for

SUCCESS = b'{"success":true}'


async def test_two_backups_in_the_same_second_give_two_good_archives(nursery: trio.Nursery, data_dir: Path) -> None:
    """storage/backup.py names the snapshot hearth-<second>.db and its temporary file .<name>.tmp-<pid>:
    two backups in the same second (two admins, a cron job and a click) share both, and the archive too
    (hearth-<second>.tar.partial): one fails or both report the same archive, the second overwriting the first."""
    server = await start_calls_server(nursery, data_dir)
    key = await api_key_for(server, "ada", "admin")
    if time.time() % 1 > 0.3:  # start both early in one second
        await trio.sleep(1 - time.time() % 1)
    outs: list[object] = []

    async def one() -> None:
        outs.append(await run_call(server, key, "backup"))

    async with trio.open_nursery() as both:
        both.start_soon(one)
        both.start_soon(one)
    assert [out.binaries for out in outs] == [[SUCCESS], [SUCCESS]]  # type: ignore[attr-defined]
    archives = {Path(out.texts[-1]) for out in outs}  # type: ignore[attr-defined]
    assert len(archives) == 2, f"two backups, one archive: {archives}"
    for archive in archives:
        with tarfile.open(archive) as tar:
            assert "hearth.db" in tar.getnames()
