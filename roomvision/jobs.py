"""Long work (learning from people, feature caching) as a background process that outlives the page that started it:
it writes its progress to a status file that any page can read, and can be cancelled. Work already saved (finished
parts of the feature cache) is reused by the next run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import settings


def status_file(name: str) -> Path:
    return settings().cache_dir / "jobs" / f"{name}.json"


def write_status(path: Path | None, **status) -> None:
    """Replace the status file atomically (readers never see half of it)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**status, "updated": time.time()}))
    tmp.replace(path)


def read_status(path: Path) -> dict | None:
    """The job's last status, with 'running' False when its process has gone."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid")
    alive = False
    if pid and status.get("state") == "running":
        try:
            os.kill(pid, 0)
            alive = True
        except OSError:
            status.update(state="failed", message=status.get("message") or "the job stopped unexpectedly")
    status["running"] = alive
    return status


def start(name: str, args: list[str]) -> Path:
    """Start `python -m roomvision ARGS --status FILE` in its own process session; returns the status file."""
    path = status_file(name)
    current = read_status(path)
    if current and current["running"]:
        raise RuntimeError(f"a {name} job is already running")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".log"), "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "roomvision", *args, "--status", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent,
                                env={**os.environ, "TQDM_MININTERVAL": "10"})  # progress goes to the status file
    write_status(path, state="running", pid=proc.pid, started=time.time(), done=0, total=0, message="starting")
    return path


def cancel(path: Path) -> None:
    status = read_status(path)
    if status and status["running"]:
        os.killpg(status["pid"], signal.SIGTERM)
        write_status(path, **{**status, "state": "cancelled", "message": "cancelled; finished work is kept"})
