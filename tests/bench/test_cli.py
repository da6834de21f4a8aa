"""`python -m bench` refuses at once what it could only fail at minutes in."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from bench.__main__ import REPO_ROOT, missing_modules

HAS_PEER = importlib.util.find_spec("eventsourcing") is not None


def test_the_served_groups_need_no_extra() -> None:
    assert missing_modules(["served", "long", "catchup"]) == []


@pytest.mark.skipif(HAS_PEER, reason="the bench extra is installed here")
def test_the_peer_group_without_its_extra_is_refused_before_anything_runs() -> None:
    assert missing_modules(["served", "peer"]) == ["eventsourcing"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "peer", "--out", "/nonexistent/out"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "eventsourcing is not installed: install the bench extra" in done.stderr
    assert "(peer) with --only" in done.stderr
    assert not re.search(r"\[bench \d\d:", done.stderr)  # no progress: nothing was measured


@pytest.mark.skipif(not HAS_PEER, reason="needs the bench extra")
def test_the_peer_group_with_its_extra_is_let_through() -> None:
    assert missing_modules(["peer"]) == []
