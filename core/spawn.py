"""Starting a program in a session of its own, with pipes we own (the process groups of core/processes.py).

Why not ``trio.lowlevel.open_process``: its ``Process`` opens a pidfd of its own and reaps in ``wait``, while a
process group needs the leader left unreaped until the group is empty (core/processes.py watches it with its
own pidfd). One pidfd per child, not two: every running action costs one file descriptor less.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence

import trio
from trio.lowlevel import FdStream


class Child:
    """A started program: its ``Popen`` (which collects the exit status) and trio streams for our pipe ends.
    ``stderr`` is None when stderr goes into the stdout pipe."""

    __slots__ = ("_popen", "pid", "stderr", "stdin", "stdout")

    def __init__(self, popen: subprocess.Popen[bytes], stdin: FdStream, stdout: FdStream, stderr: FdStream | None):
        self._popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    def collect(self) -> int:
        """The exit status of a child that has exited (negative: the signal that killed it); reaps it."""
        return self._popen.wait()

    async def aclose_pipes(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                await stream.aclose()


async def spawn_child(
    argv: Sequence[str], *, cwd: str | None, env: Mapping[str, str] | None, merge_stderr: bool
) -> Child:
    """Start ``argv`` in a new session with stdin, stdout and (unless ``merge_stderr``) stderr piped to us;
    OSError when it cannot be started. The fork and exec run on a worker thread, as trio's own spawn does."""
    with contextlib.ExitStack() as ours_on_failure, contextlib.ExitStack() as theirs:
        stdin_theirs, stdin_ours = _pipe(ours_on_failure, theirs, ours_reads=False)
        stdout_ours, stdout_theirs = _pipe(ours_on_failure, theirs, ours_reads=True)
        stderr_ours, stderr_theirs = (
            (None, subprocess.STDOUT) if merge_stderr else _pipe(ours_on_failure, theirs, ours_reads=True)
        )
        popen = await trio.to_thread.run_sync(
            lambda: subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                start_new_session=True,
                stdin=stdin_theirs,
                stdout=stdout_theirs,
                stderr=stderr_theirs,
            )
        )
        ours_on_failure.pop_all()
    return Child(
        popen,
        FdStream(stdin_ours),
        FdStream(stdout_ours),
        None if stderr_ours is None else FdStream(stderr_ours),
    )


def _pipe(ours_on_failure: contextlib.ExitStack, theirs: contextlib.ExitStack, *, ours_reads: bool) -> tuple[int, int]:
    """A pipe as (read end, write end); the child's end is closed here once it is started, ours on failure."""
    read_end, write_end = os.pipe()
    ours, child = (read_end, write_end) if ours_reads else (write_end, read_end)
    ours_on_failure.callback(os.close, ours)
    theirs.callback(os.close, child)
    return read_end, write_end
