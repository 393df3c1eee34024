"""The shared memory a job's driver leaves behind when it is SIGKILLed, found and removed by the next run.

Shards and workers remove their own shared memory when they stop, and a
process that exits removes its own on the way out; a process killed with
SIGKILL cannot. When the driver dies that way its shards and workers go with
it, and their files (the shards' directories, the published parameters, the
workers' segments: about one model's bytes each) would stay in /dev/shm until
the machine restarts. So the driver notes in the run directory where they are
(``shm.json``) while the job runs, and the next run of that directory
(``psctl run --resume``) removes what is noted there before it starts; a job's
own end sweeps up the same way after actors that died. Only paths this user
owns, directly under the noted root and named as rayps names them, on the
machine that noted them, are touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

from ...ps.transport.shm_files import remove_entry, tagged_entries

log = logging.getLogger(__name__)

RECORD = "shm.json"


def note_shm(run_dir: Path, transport) -> None:
    """Note where ``transport``'s shared memory lies (nothing for another transport)."""
    directories = getattr(transport, "directories", None)
    tag = getattr(transport, "tag", None)
    if getattr(transport, "name", None) != "shm" or not directories:
        return
    record = {"host": socket.gethostname(), "root": os.path.dirname(directories[0]),
              "directories": [os.path.basename(d) for d in directories], "tag": tag}
    (Path(run_dir) / RECORD).write_text(json.dumps(record) + "\n")


def remove_left_shm(run_dir: Path, killed: bool = True) -> list[str]:
    """Remove what is noted in ``run_dir`` and still there, and the note; the paths removed. ``killed``: a dead
    driver's job left them (said in the log); else the job's own end sweeps up after dead actors."""
    path = Path(run_dir) / RECORD
    if not path.exists():
        return []
    try:
        record = json.loads(path.read_text())
        root, host, tag = str(record["root"]), record["host"], record.get("tag")
        names = [str(n) for n in record["directories"]]
    except (ValueError, KeyError, TypeError):
        log.warning("%s is not a record of shared memory; left as it is", path)
        return []
    if host != socket.gethostname():  # another machine's /dev/shm
        return []
    pattern = re.compile(r"rayps-shard\d+-[\w-]+" + (rf"|rayps-{re.escape(tag)}-[\w-]+" if tag else ""))
    candidates = set(names)
    if tag:
        candidates |= {os.path.basename(p) for p in tagged_entries(root, tag)}
    removed = []
    for name in sorted(candidates):
        full = os.path.join(root, name)
        if os.path.basename(name) != name or not pattern.fullmatch(name):
            continue
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        if st.st_uid != os.getuid():
            continue
        remove_entry(full)
        removed.append(full)
    path.unlink(missing_ok=True)
    if removed and killed:
        log.warning("removed the shared memory a killed run left: %s", ", ".join(removed))
    return removed
