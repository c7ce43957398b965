"""Functions the job tests run in a background process (imported there by name)."""
import time


def count(n: int, pause: float, on_progress) -> dict:
    for i in range(n):
        on_progress(i + 1, n, f"step {i + 1}")
        time.sleep(pause)
    return {"counted": n}


def needs_torch(on_progress) -> dict:
    raise ModuleNotFoundError("No module named 'torch'", name="torch")
