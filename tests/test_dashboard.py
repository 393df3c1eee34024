"""A person opens the Ray dashboard of a running job and sees its actors by name (the shared default run)."""

from __future__ import annotations

import os

import pytest

from tests.browser import chromium
from tests.default_run import ACTORS

pytestmark = [pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_dashboard_of_a_running_job_lists_shards_and_workers_by_name(default_run):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    default_run.looked()  # the browser looked while the job ran (tests/default_run.py)
    assert default_run.url, "psctl run printed no dashboard URL"
    text = default_run.dashboard_text
    assert text is not None, default_run.dashboard_error
    for name in ACTORS:
        assert name in text, text[:2000]
    assert "ALIVE" in text
    assert default_run.shot.read_bytes()[:8] == PNG_MAGIC
    code, stdout = default_run.finished()  # the job finishes on its own: its Ray stops with it
    assert code == 0, stdout[-3000:]
    assert "test accuracy" in stdout
