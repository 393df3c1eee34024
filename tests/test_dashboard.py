"""A person opens the Ray dashboard of a running job and sees its actors by name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import chromium, snapshot

pytestmark = [pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ray_token() -> str:
    """The token Ray's token authentication uses on this machine (Ray writes it on first start)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip()


def test_dashboard_of_a_running_job_lists_shards_and_workers_by_name(tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A job slowed enough (~12 s of training) to still be running while the browser looks.
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayps", "run", "--set", "epochs=10",
         "--set", "debug.slow_workers={0: 0.05, 1: 0.05}", "--output", str(tmp_path / "run")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:
            match = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
                break
        assert url, "psctl run printed no dashboard URL"
        shot = tmp_path / "dashboard-actors.png"
        names = ["ps-shard-0", "ps-shard-1", "worker-0", "worker-1"]
        text = snapshot(f"{url}/#/actors", shot, {"ray-authentication-token": ray_token()}, names)
        for name in names:
            assert name in text, text[:2000]
        assert "ALIVE" in text
        assert shot.read_bytes()[:8] == PNG_MAGIC
        rest = proc.stdout.read()  # let the job finish on its own: its Ray stops with it
        assert proc.wait(timeout=180) == 0, rest[-3000:]
        assert "test accuracy" in rest
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
