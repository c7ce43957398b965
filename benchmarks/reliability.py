"""Reliability figures: hostile inputs, concurrent label writes, recovery after SIGKILL.

python benchmarks/reliability.py [--weights weights/roomvision-default.pt]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from image_corpus import make_corpus  # noqa: E402
from roomvision.config import DEFAULT_WEIGHTS, MAX_UPLOAD_BYTES  # noqa: E402
from roomvision.images import ImageDecodeError, load_image  # noqa: E402
from roomvision.inference import Predictor  # noqa: E402
from roomvision.labels import LabelStore  # noqa: E402


def hostile_inputs(weights: Path) -> None:
    predictor = Predictor(weights, device="cpu")
    corpus = make_corpus(MAX_UPLOAD_BYTES)
    scored = clear = crashes = wrong = 0
    for name, data, expect_ok in corpus:
        try:
            predictor.predict_images([load_image(data)])
            scored += 1
            wrong += not expect_ok
        except ImageDecodeError:
            clear += 1
            wrong += expect_ok
        except Exception as exc:  # anything else is a crash of the serving path
            crashes += 1
            print(f"  CRASH {name}: {type(exc).__name__}: {exc}")
    print(f"inputs tried {len(corpus)} | scored {scored} | clear errors {clear} | crashes {crashes} "
          f"| unexpected outcome {wrong}")


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
            from roomvision.labels import LabelStore
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hostile_inputs(args.weights)
        concurrency(Path(tmp))
        sigkill(Path(tmp))


if __name__ == "__main__":
    main()
