"""Long commands show a bar with rows per second on a terminal and nothing elsewhere.

`install` (its baseline snapshot) and `snapshot` run as real processes, once on a
pseudo-terminal (stderr a tty: the bars appear, counting every row) and once with stderr a
pipe (nothing but the command's own output).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import sqlite3
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.helpers import ROOT, cli_process, write_config

PARENTS, CHILDREN = 3_000, 22_000


def _source(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE parents (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE);"
            "CREATE TABLE children (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
            "parent_id INTEGER REFERENCES parents(id));"
        )
        conn.executemany(
            "INSERT INTO parents VALUES (?, ?)", ((i, f"p{i}") for i in range(PARENTS))
        )
        conn.executemany(
            "INSERT INTO children VALUES (?, ?, ?)",
            ((i, f"c{i}", i % PARENTS) for i in range(CHILDREN)),
        )
    return f"sqlite:///{path}"


def _on_a_terminal(config: Path, *args: str) -> tuple[int, str]:
    """Run the command with stdin, stdout and stderr on a pseudo-terminal; its exit code and
    everything it wrote there."""
    leader, follower = pty.openpty()
    # a terminal 120 columns wide (a new pseudo-terminal has none: tqdm would draw nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "nkdaemon", "--config", str(config), *args],
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def _counted(screen: str, title: str) -> int:
    """The last count a bar titled ``title`` showed."""
    counts = re.findall(rf"{title}: (\d+) rows", screen)
    assert counts, screen[-2000:]
    return int(counts[-1])


def test_install_and_snapshot_draw_bars_on_a_terminal_only(tmp_path: Path) -> None:
    config = write_config(tmp_path, _source(tmp_path / "app.db"))
    code, screen = _on_a_terminal(config, "install")
    assert code == 0, screen
    assert _counted(screen, "indexing referenced rows") == PARENTS  # pass one: parents only
    assert _counted(screen, "snapshot rows") == PARENTS + CHILDREN
    assert "rows/s" in screen

    code, screen = _on_a_terminal(config, "snapshot", "--force")
    assert code == 0, screen
    assert _counted(screen, "snapshot rows") == PARENTS + CHILDREN

    piped = cli_process(config, "snapshot", "--force")
    assert piped.returncode == 0, piped.stderr
    assert "rows/s" not in piped.stderr + piped.stdout
    assert "snapshot rows" not in piped.stderr + piped.stdout
