"""Long work (learning from people) as a background process that outlives the page that started it.

One protocol: `start(kind, "module:function", kwargs)` runs the function in a child process with an `on_progress(done,
total, message)` callback; the child writes every step to the kind's status file (state, done, total, message,
result or error) and its output to a log of its own. One job of a kind runs at a time: the child holds the kind's
lock for as long as it lives, so a job killed without a word (the OOM killer) frees it and is reported failed with
the last lines of its log. Only a child this process started can be cancelled: a PID read back from disk is never
signalled.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ..config import PROJECT_ROOT, missing_extra, settings

STATES = ("running", "done", "failed", "cancelled")
_CHILDREN: dict[str, subprocess.Popen] = {}  # kind -> the child this process started


class JobError(RuntimeError):
    """A job that cannot be started or cancelled, with the reason."""


def status_file(kind: str) -> Path:
    return settings().cache_dir / "jobs" / f"{kind}.json"


def _lock_path(status: Path) -> Path:
    return status.with_suffix(".lock")


def _try_lock(status: Path) -> int | None:
    """An fd holding the kind's lock, or None when a job of that kind holds it."""
    status.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(status), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_running(status: Path) -> bool:
    """Whether a job of this kind is alive (its child holds the lock)."""
    fd = _try_lock(status)
    if fd is None:
        return True
    os.close(fd)
    return False


def write_status(path: Path, **status) -> None:
    """Replace the status file atomically (readers never see half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**status, "updated": time.time()}))
    tmp.replace(path)


def _log_tail(log: str | None, lines: int = 3) -> str:
    try:
        text = Path(log).read_text(errors="replace").strip().splitlines() if log else []
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def read_status(path: Path) -> dict | None:
    """The job's last status with 'running' set from its lock (the status file is advice, never trusted): a job
    gone without a final status is 'failed' with the end of its log. None when no job of this kind has run or
    the file is not a status this module wrote."""
    child = _CHILDREN.get(path.stem)
    if child is not None and child.poll() is not None:  # reap it: no zombie
        _CHILDREN.pop(path.stem, None)
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = None
    if not isinstance(status, dict) or status.get("state") not in STATES:
        return None
    for key in ("done", "total"):
        if not isinstance(status.get(key), (int, float)):
            status[key] = 0
    status["running"] = status["state"] == "running" and is_running(path)
    if status["state"] == "running" and not status["running"]:
        tail = _log_tail(status.get("log"))
        status.update(state="failed", message="the job stopped without reporting why (killed?)"
                      + (f"; its log ends: {tail}" if tail else ""))
    return status


def start(kind: str, function: str, kwargs: dict) -> Path:
    """Run `function` ("module:name") with `kwargs` (JSON values) and an `on_progress` callback in a child process
    of its own session; JobError when a job of this kind is running. Returns the status file."""
    path = status_file(kind)
    fd = _try_lock(path)
    if fd is None:
        raise JobError(f"a {kind} job is already running; wait for it or cancel it")
    try:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        log = path.with_name(f"{kind}-{stamp}.log")
        write_status(path, state="running", started=time.time(), done=0, total=0, message="starting",
                     log=str(log))
        with open(log, "w") as out:  # the child keeps its own handle
            proc = subprocess.Popen([sys.executable, "-m", "roomvision.learning.jobs", str(path), function],
                                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, pass_fds=(fd,),
                                    start_new_session=True, cwd=PROJECT_ROOT,
                                    env={**os.environ, "TQDM_MININTERVAL": "10"})
        proc.stdin.write(json.dumps(kwargs).encode())
        proc.stdin.close()
    finally:
        os.close(fd)  # the child's copy keeps the lock for as long as it lives
    _CHILDREN[kind] = proc
    return path


def cancel(path: Path) -> str:
    """Stop the job of this kind that this process started; says what happened."""
    child = _CHILDREN.get(path.stem)
    if child is None or child.poll() is not None:
        return "no job started here is running" if not is_running(path) else \
            "this job was started by another process; cancel it there"
    os.killpg(child.pid, signal.SIGTERM)
    child.wait(timeout=30)
    _CHILDREN.pop(path.stem, None)
    status = read_status(path) or {}
    write_status(path, **{**status, "state": "cancelled", "message": "cancelled; finished work is kept"})
    return "cancelled"


def _error_message(exc: BaseException) -> str:
    """One line a person can act on."""
    return missing_extra(exc) if isinstance(exc, ModuleNotFoundError) else f"{type(exc).__name__}: {exc}"


def _run(path: Path, function: str, kwargs: dict) -> int:
    """The child's side: call the function, report progress and the outcome in the status file."""
    started = time.time()
    log = (json.loads(path.read_text()) if path.is_file() else {}).get("log")

    steps = {"done": 0, "total": 0}

    def on_progress(done: int, total: int, message: str = "") -> None:
        steps.update(done=done, total=total)
        write_status(path, state="running", started=started, log=log, message=message or f"{done}/{total}", **steps)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        module, name = function.split(":")
        result = getattr(importlib.import_module(module), name)(**kwargs, on_progress=on_progress)
    except BaseException as exc:  # every way out is reported, a missing dependency included
        traceback.print_exc()
        if not (isinstance(exc, SystemExit) and exc.code == 143):
            write_status(path, state="failed", started=started, log=log, message=_error_message(exc), **steps)
        return 1
    result = {k: str(v) if isinstance(v, Path) else v for k, v in (result or {}).items()}
    write_status(path, state="done", started=started, log=log, message="done", result=result, **steps)
    return 0


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1]), sys.argv[2], json.loads(sys.stdin.read())))
