"""One ``psctl run`` of the default job, in its own process with its own Ray and dashboard, shared by the
tests of what a newcomer sees: the command's output and summary (tests/test_cli.py), the dashboard while the
job runs (tests/test_dashboard.py), the plots and events it leaves (tests/test_report.py).

The workers are slowed a little (``debug.slow_workers``: steps and accuracy are the default job's), so the
job still runs while a headless Chromium looks at the dashboard. The look happens as soon as the dashboard's
URL is printed, in a thread of its own, whichever test asked for the run first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from tests.browser import chromium, snapshot

SLOW_S = 0.03  # per step per worker: the default job's 690 steps then take about 20 s
ACTORS = ["ps-shard-0", "ps-shard-1", "worker-0", "worker-1"]


def ray_token() -> str:
    """The token Ray's token authentication uses on this machine (Ray writes it on first start)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip()


class DefaultRun:
    def __init__(self, where: Path):
        self.out = where / "run"
        self.shot = where / "dashboard-actors.png"
        self.lines: list[str] = []
        self.url: str | None = None
        self.dashboard_text: str | None = None  # what the browser saw; None if it could not look
        self.dashboard_error: str | None = None
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rayps", "run", "--set", f"debug.slow_workers={{0: {SLOW_S}, 1: {SLOW_S}}}",
             "--output", str(self.out)],
            cwd=where, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._looked = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", line)
            if match and self.url is None:
                self.url = match.group(1)
                threading.Thread(target=self._look, daemon=True).start()
        if self.url is None:
            self._looked.set()

    def _look(self) -> None:
        try:
            if chromium() is not None:
                self.dashboard_text = snapshot(f"{self.url}/#/actors", self.shot,
                                               {"ray-authentication-token": ray_token()}, ACTORS)
        except Exception as e:  # noqa: BLE001 - the dashboard test reports it
            self.dashboard_error = f"{type(e).__name__}: {e}"
        finally:
            self._looked.set()

    def looked(self, timeout: float = 180) -> None:
        """Wait until the browser has looked at the dashboard (or could not)."""
        self._looked.wait(timeout)

    def finished(self, timeout: float = 240) -> tuple[int, str]:
        """The job's exit code and everything it printed, once it ended."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        self.looked()
        return self.proc.returncode, "".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
