"""Reliability figures: hostile inputs through the CLI, the Predict page and the API (time and peak memory per
input, each path in its own process), the API under concurrent clients, concurrent label writes, recovery after
SIGKILL, attempts to forge labels, and a team at work (two annotators with undo, grid claims, two jobs at once, a
killed job, a damaged version, 1,000-part uploads, /health under 48 clients, slow headers).

python benchmarks/reliability.py [--weights weights/roomvision-default.pt]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from image_corpus import make_corpus  # noqa: E402
from roomvision.config import DEFAULT_WEIGHTS, MAX_UPLOAD_BYTES  # noqa: E402
from roomvision.learning.stores import LabelError, LabelStore  # noqa: E402

HANG_S = 10
MEMORY_LIMIT_MB = 1024

# Runs in a child process: each input through one entry point's own code path, with that process's peak memory
# reset before every input (Linux /proc/self/clear_refs), printing one JSON line per input.
CHILD = textwrap.dedent("""
    import hashlib, json, sys, time
    sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
    from image_corpus import make_corpus
    from roomvision.config import MAX_UPLOAD_BYTES
    from roomvision.inference import Predictor
    from roomvision.webapp import score_upload

    def peak_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

    predictor, folder = Predictor(sys.argv[2], device="cpu"), sys.argv[4]
    for name, data, _ in make_corpus(MAX_UPLOAD_BYTES):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        started = time.monotonic()
        try:
            if sys.argv[1] == "cli":
                (row,) = predictor.predict_paths([f"{folder}/{name}"])
            else:
                row = score_upload(predictor.version, hashlib.sha256(data).hexdigest(), predictor, data)
            outcome = {"error": row.get("error", "")}
        except Exception as exc:
            outcome = {"crash": f"{type(exc).__name__}: {exc}"[:200]}
        print(json.dumps({"name": name, "seconds": time.monotonic() - started, "peak_mb": peak_mb(), **outcome}),
              flush=True)
""")


def _judge(label: str, corpus: list, results: dict) -> None:
    scored = clear = crashes = unexpected = 0
    for name, _, expected in corpus:
        r = results.get(name, {"crash": "no answer"})
        if "crash" in r:
            crashes += 1
            print(f"  {label} CRASH {name}: {r['crash']}")
        elif r["error"]:
            clear += 1
            unexpected += expected is None or expected not in r["error"]
        else:
            scored += 1
            unexpected += expected is not None
    slowest = max(results.values(), key=lambda r: r["seconds"])
    peak = max(results.values(), key=lambda r: r["peak_mb"])
    hangs = sum(r["seconds"] > HANG_S for r in results.values())
    print(f"{label:<13} {len(corpus):>6} {scored:>6} {clear:>6} {crashes:>7} {unexpected:>10} {hangs:>5} "
          f"{slowest['seconds']:>8.2f} ({slowest['name']}) {peak['peak_mb']:>7.0f} ({peak['name']})")


def hostile_inputs(weights: Path, folder: Path) -> None:
    corpus = make_corpus(MAX_UPLOAD_BYTES)
    for name, data, _ in corpus:
        (folder / name).write_bytes(data)
    print(f"hostile or odd inputs: {len(corpus)} ({sum(e is not None for _, _, e in corpus)} must be refused); "
          f"hang = over {HANG_S} s; peak = resident memory high-water mark of the serving process during one input")
    print(f"{'path':<13} {'inputs':>6} {'scored':>6} {'clear':>6} {'crashes':>7} {'unexpected':>10} {'hangs':>5} "
          f"{'slowest s':>8} {'peak MB':>7}")
    for path in ("cli", "predict-page"):
        done = subprocess.run([sys.executable, "-c", CHILD, path, str(weights), str(ROOT), str(folder)],
                              capture_output=True, text=True, timeout=1800)
        results = {r["name"]: r for r in map(json.loads, done.stdout.splitlines()) if r}
        _judge({"cli": "CLI predict", "predict-page": "Predict page"}[path], corpus, results)
    api_results, concurrent = _api(weights, corpus)
    _judge("API", corpus, api_results)
    print(concurrent)


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _api(weights: Path, corpus: list) -> tuple[dict, str]:
    """Each input as its own request to a real server, then 8 concurrent clients with 30% bad files."""
    import httpx
    server, url = _serve(weights)
    try:
        results = {}
        for name, data, _ in corpus:
            with open(f"/proc/{server.pid}/clear_refs", "w") as f:
                f.write("5")
            started = time.monotonic()
            try:
                r = httpx.post(f"{url}/v1/predict", files=[("files", (name, data, "application/octet-stream"))],
                               timeout=120)
                body = r.json()
                outcome = ({"error": body["results"][0]["error"]} if r.status_code == 200 else
                           {"error": f"HTTP {r.status_code}: {body.get('detail')}"} if r.status_code < 500 else
                           {"crash": f"HTTP {r.status_code}"})
                if r.status_code == 413:
                    outcome["error"] += " too large"
            except httpx.HTTPError as exc:
                outcome = {"crash": f"{type(exc).__name__}: {exc}"}
            results[name] = {"seconds": time.monotonic() - started, "peak_mb": _rss_mb(server.pid, "VmHWM"),
                             "name": name, **outcome}
        good = [(n, d) for n, d, e in corpus if e is None and len(d) < 2_000_000]
        bad = [(n, d) for n, d, e in corpus if e is not None and len(d) < 2_000_000]
        statuses: list[int] = []

        def client(seed: int, requests: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(timeout=120) as c:
                for _ in range(requests):
                    files = [("files", rng.choice(bad if rng.random() < 0.3 else good)) for _ in range(8)]
                    r = c.post(f"{url}/v1/predict", files=[(k, (n, d, "image/jpeg")) for k, (n, d) in files])
                    statuses.append(r.status_code)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client(i, 3), range(8)))  # warm-up
        warm = _rss_mb(server.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client(100 + i, 12), range(8)))
        end = _rss_mb(server.pid)
        errors = sum(s >= 500 for s in statuses)
        return results, (f"API, 8 concurrent clients x 15 requests of 8 files (30% bad): {len(statuses)} requests in "
                         f"{time.monotonic() - started:.0f} s after warm-up | 5xx answers {errors} | resident memory "
                         f"{warm:.0f} MB after warm-up -> {end:.0f} MB at the end")
    finally:
        server.terminate()
        server.wait(30)


def forging(folder: Path) -> None:
    """Attempts to smuggle a second row through a field, and a hand-edited file with a quoted line break."""
    store = LabelStore(folder / "forge.csv")
    attempts = refused = 0
    for field in ("annotator", "path", "sha256", "model_version"):
        for evil in ("m\nk/1.jpg,,GOOD,BAD,5,alice", "m\rk/1.jpg,,GOOD,BAD,5,alice", "m\u2028x", "m\x00"):
            attempts += 1
            args = {"path": "k/0.jpg", "sha256": "s0", "annotator": "mallory", "model_version": "v", field: evil}
            try:
                store.append(args.pop("path"), "GOOD", **args)
            except LabelError:
                refused += 1
    with open(store.path, "a", newline="") as f:
        f.write('k/9.jpg,s9,GOOD,GOOD,,"mallory\nk/1.jpg,s1,GOOD,BAD,5,alice",2026-01-01T00:00:00Z,v\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forged = int((LabelStore(store.path).read_raw()["annotator"] == "alice").sum())
    print(f"label forging: {attempts} attempts through fields, {refused} refused | forged rows read back from a "
          f"hand-edited file: {forged}")


def _writer(path: str, tag: str, n: int) -> None:
    store = LabelStore(path)
    for i in range(n):
        store.append(f"photos/{tag}/{i}.jpg", "GOOD", sha256=f"{tag}-{i}")


def concurrency(folder: Path, writers: int = 8, per_writer: int = 500) -> None:
    path = str(folder / "concurrent.csv")
    t0 = time.time()
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, f"p{i}", per_writer))
             for i in range(writers // 2)]
    threads = [threading.Thread(target=_writer, args=(path, f"t{i}", per_writer)) for i in range(writers - writers // 2)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    raw = LabelStore(path).read_raw()
    expected = writers * per_writer
    print(f"labels written {expected} by {writers} writers in {time.time() - t0:.1f} s | read back {len(raw)} "
          f"| lost {expected - raw['sha256'].nunique()} | duplicated {len(raw) - raw['sha256'].nunique()}")


def sigkill(folder: Path, rounds: int = 5) -> None:
    recovered = 0
    lost_total = 0
    for r in range(rounds):
        path, ack = folder / f"kill{r}.csv", folder / f"ack{r}.txt"
        script = textwrap.dedent(f"""
            from roomvision.learning.stores import LabelStore
            store = LabelStore({str(path)!r})
            with open({str(ack)!r}, "a", buffering=1) as ack:
                for i in range(10**6):
                    store.append(f"p/{{i}}.jpg", "BAD", sha256=str(i))
                    ack.write(f"{{i}}\\n")
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
        time.sleep(1.5 + 0.3 * r)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acked = {x for x in ack.read_text().split("\n") if x}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = set(LabelStore(path).read_raw()["sha256"])
        lost = len(acked - stored)
        lost_total += lost
        recovered += lost == 0
    print(f"SIGKILL mid-burst: {rounds} runs | file parsed and every acknowledged row present in {recovered}/{rounds} "
          f"| acknowledged rows lost {lost_total}")


def _serve(weights: Path) -> tuple[subprocess.Popen, str]:
    """`roomvision serve` on a free loopback port, once it answers."""
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "roomvision", "serve", "--port", str(port), "--weights",
                               str(weights), "--device", "cpu"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    return server, url


def team_labels(folder: Path) -> None:
    """Two annotators with undo; two annotators in grid mode on the same queue."""
    from roomvision.learning.stores import ClaimBoard
    store = LabelStore(folder / "team.csv")
    store.append("k/1.jpg", "GOOD", sha256="s1", annotator="alice")
    store.append("k/1.jpg", "BAD", sha256="s1", annotator="bob")
    store.append("k/1.jpg", "UNDO", sha256="s1", annotator="alice")
    merged = store.merged().iloc[0]
    print(f"Team: alice GOOD, bob BAD, alice undo -> label {merged['human_label']} by {merged['annotator']} "
          "(expected BAD by bob)")
    board = ClaimBoard(store.path)
    queue = [f"p{i}" for i in range(30)]
    alice = board.claim(queue[:12], "alice")
    bob = board.claim([k for k in queue if k not in board.held_by_others("bob")][:12], "bob")
    print(f"Team: grid mode, 12 photos each from one queue -> alice {len(alice)}, bob {len(bob)}, "
          f"shared {len(alice & bob)}")


def team_jobs(weights: Path, folder: Path) -> None:
    """Two jobs of one kind at once, a job killed without a word, a damaged model version."""
    import os
    import torch
    from roomvision.learning import jobs
    from roomvision.modelinfo import CheckpointError
    from roomvision.inference import Predictor
    os.environ["ROOMVISION_CACHE_DIR"] = str(folder / "cache")
    os.environ["PYTHONPATH"] = str(ROOT / "tests")  # the child imports the test job's function from there
    path = jobs.start("bench", "job_targets:count", {"n": 600, "pause": 0.1})
    try:
        jobs.start("bench", "job_targets:count", {"n": 1, "pause": 0})
        second = "started too (lost work likely)"
    except jobs.JobError as exc:
        second = f"refused: {exc}"
    while jobs.read_status(path)["done"] < 1:
        time.sleep(0.1)
    os.kill(jobs._CHILDREN["bench"].pid, signal.SIGKILL)
    started = time.monotonic()
    while jobs.read_status(path)["running"]:
        time.sleep(0.05)
    status = jobs.read_status(path)
    print(f"Jobs: second start while one runs -> {second}; SIGKILLed job -> '{status['state']}' after "
          f"{time.monotonic() - started:.2f} s ({status['message'][:70]}…)")
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], float("nan"))
    torch.save(payload, folder / "damaged.pt")
    try:
        Predictor(folder / "damaged.pt", device="cpu")
        print("Damaged version: LOADED (a defect)")
    except CheckpointError as exc:
        print(f"Damaged version: refused at load: {exc}")


def team_api(weights: Path) -> None:
    """1,000-part uploads, /health under 48 predicting clients, 50 slow-header connections."""
    import httpx
    import statistics
    from PIL import Image
    import io
    server, url = _serve(weights)
    try:
        base = _rss_mb(server.pid)
        parts = [("files", (f"{i}.jpg", b"x" * 400_000, "image/jpeg")) for i in range(1000)]
        started = time.monotonic()
        codes = []
        with ThreadPoolExecutor(3) as pool:
            for r in pool.map(lambda _: httpx.post(f"{url}/v1/predict", files=parts, timeout=120), range(3)):
                codes.append(r.status_code)
        print(f"API: three 1,000-part uploads of 400 kB at once -> {codes} in {time.monotonic() - started:.1f} s, "
              f"server memory {base:.0f} -> peak {_rss_mb(server.pid, 'VmHWM'):.0f} MB")
        buf = io.BytesIO()
        Image.new("RGB", (1600, 1200), (120, 110, 100)).save(buf, "JPEG")
        photo = [("files", (f"{i}.jpg", buf.getvalue(), "image/jpeg")) for i in range(4)]
        statuses, stop = [], threading.Event()

        def client() -> None:
            with httpx.Client(timeout=120) as c:
                while not stop.is_set():
                    r = c.post(f"{url}/v1/predict", files=photo)
                    statuses.append(r.status_code)
                    if r.status_code == 503:
                        time.sleep(float(r.headers.get("Retry-After", 1)))
        threads = [threading.Thread(target=client) for _ in range(48)]
        for t in threads:
            t.start()
        time.sleep(3)
        waits = []
        for _ in range(20):
            t0 = time.perf_counter()
            httpx.get(f"{url}/health", timeout=30)
            waits.append(time.perf_counter() - t0)
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(180)
        print(f"API: /health under 48 predicting clients -> median {statistics.median(waits) * 1000:.0f} ms, "
              f"max {max(waits) * 1000:.0f} ms; predict answers {statuses.count(200)} x 200, "
              f"{statuses.count(503)} x 503 (Retry-After), {sum(s >= 500 and s != 503 for s in statuses)} other 5xx")
        conns = []
        for _ in range(50):
            s = socket.create_connection((url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])))
            s.sendall(b"G")
            conns.append(s)
        started, closed = time.monotonic(), set()
        while time.monotonic() - started < 20 and len(closed) < len(conns):
            for i, s in enumerate(conns):
                if i in closed:
                    continue
                try:
                    s.sendall(b"E")
                    s.setblocking(False)
                    if s.recv(1) == b"":
                        closed.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(i)
                finally:
                    s.setblocking(True)
            time.sleep(1)
        for s in conns:
            s.close()
        print(f"API: 50 connections sending one header byte a second -> {len(closed)} closed by the server within "
              f"{time.monotonic() - started:.0f} s (header deadline 10 s)")
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "corpus").mkdir()
        hostile_inputs(args.weights, Path(tmp) / "corpus")
        concurrency(Path(tmp))
        sigkill(Path(tmp))
        forging(Path(tmp))
        team_labels(Path(tmp))
        team_jobs(args.weights, Path(tmp))
        team_api(args.weights)


if __name__ == "__main__":
    main()
