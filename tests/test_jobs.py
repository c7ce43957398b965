"""Background jobs with real processes: one per kind, a killed job reported with its log, cancel only what this
process started, every failure shown."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from roomvision.learning import jobs


def wait_until(predicate, seconds: float = 60.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail("timed out")


def test_a_job_reports_progress_and_its_result():
    path = jobs.start("count", "tests.job_targets:count", {"n": 3, "pause": 0.05})
    wait_until(lambda: jobs.read_status(path)["state"] != "running")
    status = jobs.read_status(path)
    assert status["state"] == "done" and status["result"] == {"counted": 3} and status["done"] == 3
    assert not status["running"]
    wait_until(lambda: jobs.read_status(path) and "count" not in jobs._CHILDREN)  # the child is reaped


def test_one_job_of_a_kind_at_a_time_and_cancel_stops_it():
    path = jobs.start("slow", "tests.job_targets:count", {"n": 600, "pause": 0.1})
    with pytest.raises(jobs.JobError, match="a slow job is already running"):
        jobs.start("slow", "tests.job_targets:count", {"n": 1, "pause": 0})
    wait_until(lambda: jobs.read_status(path)["done"] >= 1)
    first_log = jobs.read_status(path)["log"]
    assert jobs.cancel(path) == "cancelled"
    status = jobs.read_status(path)
    assert status["state"] == "cancelled" and not status["running"]
    again = jobs.start("slow", "tests.job_targets:count", {"n": 1, "pause": 0})  # the lock went with the child
    wait_until(lambda: jobs.read_status(again)["state"] == "done")
    assert jobs.read_status(again)["log"] != first_log  # each run logs to a file of its own


def test_a_job_killed_without_a_word_is_failed_with_its_log_and_frees_the_kind():
    path = jobs.start("oom", "tests.job_targets:count", {"n": 600, "pause": 0.1})
    wait_until(lambda: jobs.read_status(path)["done"] >= 1)
    child = jobs._CHILDREN["oom"]
    os.kill(child.pid, signal.SIGKILL)  # as the OOM killer would: no status written
    wait_until(lambda: not jobs.read_status(path)["running"])
    status = jobs.read_status(path)
    assert status["state"] == "failed" and "stopped without reporting why" in status["message"]
    assert child.poll() is not None  # reaped, not a zombie
    done = jobs.start("oom", "tests.job_targets:count", {"n": 1, "pause": 0})
    wait_until(lambda: jobs.read_status(done)["state"] == "done")


def test_a_missing_dependency_says_which_extra_to_install():
    path = jobs.start("torchless", "tests.job_targets:needs_torch", {})
    wait_until(lambda: jobs.read_status(path)["state"] != "running")
    message = jobs.read_status(path)["message"]
    assert jobs.read_status(path)["state"] == "failed"
    assert "this needs PyTorch (torch is not installed)" in message and "pip install -e '.[train]'" in message


@pytest.mark.parametrize("content", ['{"state": "running", "pid": "12x"}', '[1, 2]', '{"state": "running"}',
                                     '{"state": "exploded"}', '{"state": "done", "done": "a lot"}', 'not json'])
def test_a_status_file_naming_another_process_is_never_signalled(content):
    """cancel() trusts no PID read from disk: a file naming another process group leaves it alone; odd contents
    never crash the reader."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        path = jobs.status_file("foreign")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content.replace("12x", str(bystander.pid)) if "12x" in content else content)
        status = jobs.read_status(path)
        assert status is None or (not status["running"] and isinstance(status["done"], (int, float)))
        path.write_text(json.dumps({"state": "running", "pid": bystander.pid}))
        assert jobs.cancel(path) == "no job started here is running"
        time.sleep(0.2)
        assert bystander.poll() is None  # still alive
    finally:
        bystander.kill()
        bystander.wait()
