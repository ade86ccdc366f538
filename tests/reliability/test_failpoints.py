"""ray_migrate.failpoints on its own: parsing, matching, after, once, and each action (kill in a
child process, so the test survives it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_migrate import failpoints
from ray_migrate.errors import TerminalError, TransientError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clear():
    yield
    failpoints.configure(None)


def test_unset_does_nothing():
    failpoints.configure(None)
    assert failpoints.hit("copy.batch_written", unit="u") is None
    assert failpoints._points == {}


def test_raise_matches_every_given_key_and_counts_after():
    failpoints.configure(json.dumps({"p": {"action": "raise", "unit": "a", "after": 2,
                                           "error": "TerminalError", "message": "boom"}}))
    failpoints.hit("p", unit="b")  # another unit: no match, not counted
    failpoints.hit("p", unit="a")
    failpoints.hit("p", unit="a")
    with pytest.raises(TerminalError, match="boom"):
        failpoints.hit("p", unit="a", method="x")  # keys the spec does not name are free
    failpoints.hit("q", unit="a")  # another point


def test_builtin_error_and_default_transient():
    failpoints.configure(json.dumps({"p": [{"action": "raise", "method": "scan",
                                            "error": "OSError"},
                                           {"action": "raise", "method": "fetch"}]}))
    with pytest.raises(OSError):
        failpoints.hit("p", method="scan")
    with pytest.raises(TransientError):
        failpoints.hit("p", method="fetch")
    assert failpoints.hit("p", method="upsert") is None
    assert failpoints.hit("p") is None  # a key the spec names but the hit does not give


def test_once_fires_once_over_processes(tmp_path):
    marker = tmp_path / "fired"
    failpoints.configure(json.dumps({"p": {"action": "return", "value": 7,
                                           "once": str(marker)}}))
    assert failpoints.hit("p") == 7
    assert json.loads(marker.read_text())["pid"] == os.getpid()
    failpoints.configure(json.dumps({"p": {"action": "return", "once": str(marker)}}))
    assert failpoints.hit("p") is None  # as a restarted process: the marker is there


def test_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(failpoints.time, "sleep", slept.append)
    failpoints.configure(json.dumps({"p": {"action": "sleep", "seconds": 2.5}}))
    assert failpoints.hit("p") is None and slept == [2.5]


def test_wait_holds_until_the_file_exists_and_is_bounded(tmp_path, monkeypatch):
    """``wait`` polls for its file: the code goes on once a poll finds it, or at the bound
    (an injected clock: no real waiting)."""
    now, polls, makes = [0.0], [], [True]
    ready = tmp_path / "ready"

    def sleep(s: float) -> None:  # the third poll finds the file another process made
        polls.append(s)
        now[0] += s
        if len(polls) == 3 and makes.pop():
            ready.touch()

    monkeypatch.setattr(failpoints.time, "sleep", sleep)
    monkeypatch.setattr(failpoints.time, "monotonic", lambda: now[0])
    failpoints.configure(json.dumps({"p": {"action": "wait", "wave": 1, "path": str(ready),
                                           "seconds": 10}}))
    assert failpoints.hit("p", wave=2) is None and polls == []  # another wave: not held
    assert failpoints.hit("p", wave=1) is None and len(polls) == 3
    ready.unlink()
    polls.clear()
    makes.append(False)
    start = now[0]
    assert failpoints.hit("p", wave=1) is None  # never made: held for the bound, then on
    assert now[0] - start >= 10 and len(polls) == pytest.approx(10 / failpoints.WAIT_POLL_S,
                                                                abs=2)


@pytest.mark.parametrize("doc", ['["p"]', '{"p": {"action": "explode"}}', '{"p": [1]}',
                                 '{"p": {"action": "wait"}}'])
def test_bad_specs_are_refused(doc):
    with pytest.raises(ValueError, match="RAY_MIGRATE_FAILPOINTS"):
        failpoints.configure(doc)


def test_kill_from_the_environment(tmp_path):
    """Read once at import from the environment; ``kill`` is a SIGKILL of the process."""
    marker = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), failpoints.ENV: json.dumps(
        {"p": {"action": "kill", "unit": "u", "once": str(marker)}})}
    code = ("from ray_migrate import failpoints\n"
            "failpoints.hit('p', unit='v')\nprint('alive', flush=True)\n"
            "failpoints.hit('p', unit='u')\nprint('survived')\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == -9, res.stderr
    assert res.stdout == "alive\n" and "failpoint p fired (kill)" in res.stderr
    assert marker.exists()
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "alive\nsurvived\n"
