"""The label store: concurrent appends, crash recovery, path safety, undo, CSV-injection-safe export."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from roomvision.learning.queue import relabel_queue
from roomvision.learning.stores import LabelError, LabelStore
from roomvision.tables import export_csv


def _write_many(path: str, writer: str, n: int) -> None:
    store = LabelStore(path)
    for i in range(n):
        store.append(f"photos/{writer}/{i}.jpg", "GOOD" if i % 2 else "BAD", sha256=f"{writer}-{i}", annotator=writer)


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "labels.csv")
    procs = [mp.get_context("spawn").Process(target=_write_many, args=(path, f"p{i}", 500)) for i in range(4)]
    threads = [threading.Thread(target=_write_many, args=(path, f"t{i}", 500)) for i in range(4)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    raw = LabelStore(path).read_raw()
    assert len(raw) == 4000
    assert raw["sha256"].nunique() == 4000
    lines = open(path, "rb").read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4002  # header + 4000 rows, each a complete line
    assert sorted(raw["annotator"].unique()) == sorted([f"p{i}" for i in range(4)] + [f"t{i}" for i in range(4)])


def test_sigkill_mid_burst_keeps_every_acknowledged_row(tmp_path):
    path = tmp_path / "labels.csv"
    ack = tmp_path / "ack.txt"
    script = textwrap.dedent(f"""
        import sys
        from roomvision.learning.stores import LabelStore
        store = LabelStore({str(path)!r})
        with open({str(ack)!r}, "a", buffering=1) as ack:
            for i in range(100000):
                store.append(f"photos/{{i}}.jpg", "GOOD", sha256=str(i))
                ack.write(f"{{i}}\\n")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    deadline = time.time() + 60
    while time.time() < deadline and (not ack.exists() or ack.read_text().count("\n") < 300):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acknowledged = {line for line in ack.read_text().split("\n") if line}
    assert len(acknowledged) >= 300
    raw = LabelStore(path).read_raw()
    assert acknowledged <= set(raw["sha256"])
    assert raw["sha256"].is_unique
    # a torn tail (simulated) is ignored with a warning and the next append starts on a fresh line
    with open(path, "ab") as f:
        f.write(b"photos/torn.jpg,abc,GO")
    with pytest.warns(UserWarning, match=r"line \d+: 3 fields, expected 8 \(a torn"):
        before = len(LabelStore(path).read_raw())
    LabelStore(path).append("photos/after.jpg", "BAD", sha256="after")
    with pytest.warns(UserWarning):
        again = LabelStore(path).read_raw()
    assert len(again) == before + 1 and again.iloc[-1]["sha256"] == "after"


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs/file.jpg", "a/../../b.jpg", "C:/x.jpg", ""])
def test_paths_escaping_the_root_are_rejected_on_write(tmp_path, bad):
    with pytest.raises(LabelError):
        LabelStore(tmp_path / "l.csv").append(bad, "GOOD")


def test_unsafe_rows_are_ignored_on_read(tmp_path):
    path = tmp_path / "l.csv"
    store = LabelStore(path)
    store.append("ok/a.jpg", "GOOD", sha256="a")
    with open(path, "a") as f:
        f.write("../../secret.jpg,b,,GOOD,,,2026-01-01,\n")
    with pytest.warns(UserWarning, match="ignored 1"):
        assert list(store.read_raw()["path"]) == ["ok/a.jpg"]


def test_bad_label_or_rating_is_rejected(tmp_path):
    store = LabelStore(tmp_path / "l.csv")
    with pytest.raises(LabelError, match="label must be"):
        store.append("a.jpg", "MAYBE")
    with pytest.raises(LabelError, match="rating"):
        store.append("a.jpg", "GOOD", rating=7)


def test_latest_decision_wins_and_undo_is_an_appended_row(tmp_path):
    path = tmp_path / "l.csv"
    store = LabelStore(path)
    store.append("a.jpg", "GOOD", sha256="A", rating=4)
    store.append("a.jpg", "BAD", sha256="A")
    store.append("b.jpg", "BAD", sha256="B")
    store.append("b.jpg", "UNDO", sha256="B")
    store.append("c.jpg", "SKIP", sha256="C")
    size_before = path.stat().st_size
    merged = store.merged()
    assert merged.set_index("path")["human_label"].to_dict() == {"a.jpg": "BAD"}
    assert store.decided_keys() == {"A", "C"}
    store.append("a.jpg", "UNDO", sha256="A")
    assert store.merged().iloc[0]["human_label"] == "GOOD" and store.merged().iloc[0]["rating"] == 4
    assert path.stat().st_size > size_before and len(store.read_raw()) == 6  # never rewritten


def test_export_neutralises_formulas(tmp_path):
    store = LabelStore(tmp_path / "l.csv")
    store.append("=HYPERLINK(x).jpg", "GOOD", annotator="+cmd|calc", sha256="-1")
    store.append("@sum.jpg", "BAD", annotator="normal")
    text = export_csv(store.merged()).decode()
    assert "'=HYPERLINK" in text and "'+cmd" in text and "'@sum" in text and "'-1" in text
    assert "\n=" not in text and ",=" not in text and ",+" not in text


def test_relabel_queue_orders():
    manifest = pd.DataFrame({"source": "s", "path": [f"{i}.jpg" for i in range(5)], "sha256": list("abcde"),
                             "quality_label": ["GOOD", "GOOD", "BAD", "GOOD", "GOOD"]})
    p_good = pd.Series({"a": 0.9, "b": 0.52, "c": 0.95, "d": 0.1, "e": 0.7})
    q = relabel_queue(manifest, p_good, 0.5, decided={"e"})
    assert list(q["sha256"]) == ["d", "c", "b", "a"]  # disagreements (nearest first), then nearest the threshold
    assert list(relabel_queue(manifest, p_good, 0.5, {"e"}, include_labelled=True, order="file")["sha256"]) == \
        list("abcde")
    assert sorted(relabel_queue(manifest, None, 0.5, set(), order="random")["sha256"]) == list("abcde")


def test_informative_queue_before_any_score_is_a_random_draw():
    """No scores and no labels yet: photos come in a seeded random order, not one folder after another."""
    classes = ["Bathroom", "Bedroom", "Dining", "Kitchen", "Livingroom"]
    manifest = pd.DataFrame({"source": "s", "path": [f"{c}/{i:03d}.jpg" for c in classes for i in range(40)],
                             "sha256": [f"{k:064d}" for k in range(200)], "quality_label": "GOOD"})
    first = relabel_queue(manifest, None, 0.5, set())["path"].head(30)
    assert first.str.split("/").str[0].nunique() == 5
    assert first.tolist() == relabel_queue(manifest, None, 0.5, set())["path"].head(30).tolist()  # reproducible


@pytest.mark.parametrize("field", ["annotator", "path", "sha256", "model_version"])
@pytest.mark.parametrize("evil", ["mallory\nk/1.jpg,,GOOD,BAD,5,alice", "a\rb", "x\x00y", "line\u2028sep"])
def test_control_characters_cannot_forge_a_row(tmp_path, field, evil):
    store = LabelStore(tmp_path / "l.csv")
    args = {"path": "k/0.jpg", "sha256": "s0", "annotator": "mallory", "model_version": "m", field: evil}
    with pytest.raises(LabelError, match="line breaks or control characters"):
        store.append(args.pop("path"), "GOOD", **args)
    assert store.read_raw().empty


def test_a_quoted_line_break_in_the_file_forges_nothing(tmp_path):
    """A file edited by hand (or written by an older version) with a line break inside a quoted field."""
    path = tmp_path / "l.csv"
    store = LabelStore(path)
    store.append("k/0.jpg", "GOOD", sha256="s0", annotator="ana")
    with open(path, "a", newline="") as f:
        f.write('k/9.jpg,s9,GOOD,GOOD,,"mallory\nk/1.jpg,s1,GOOD,BAD,5,alice",2026-01-01T00:00:00Z,m\n')
    store.append("k/2.jpg", "BAD", sha256="s2", annotator="ana")
    with pytest.warns(UserWarning, match="malformed or unsafe"):
        raw = store.read_raw()
    assert list(raw["path"]) == ["k/0.jpg", "k/2.jpg"] and "alice" not in set(raw["annotator"])


@pytest.mark.parametrize("lead", ["", " ", "\u00a0", "\u200b", "\ufeff", " \t"])
def test_formulas_behind_invisible_characters_are_neutralised(lead):
    df = pd.DataFrame({"path": [lead + '=HYPERLINK("http://x","y")', "kitchen/=1.jpg"], "n": [-1.5, 2.0]})
    out = export_csv(df).decode()
    assert f"'{lead}=HYPERLINK" in out
    assert "kitchen/=1.jpg" in out and "-1.5" in out  # plain text and numbers untouched


def test_history_agreement_and_claims(tmp_path):
    import time
    from roomvision.learning.stores import ClaimBoard, annotator_agreement, photo_history
    store = LabelStore(tmp_path / "q.csv")
    ana, ben = ["GOOD", "BAD", "GOOD", "BAD", "GOOD"], ["GOOD", "BAD", "BAD", "BAD", "GOOD"]
    for i, (a, b) in enumerate(zip(ana, ben)):
        store.append(f"x/{i}.jpg", a, sha256=f"{i:064d}", annotator="ana", proxy_label="GOOD")
        store.append(f"x/{i}.jpg", b, sha256=f"{i:064d}", annotator="ben", proxy_label="GOOD")
    store.append("x/5.jpg", "GOOD", sha256=f"{5:064d}", annotator="ana", proxy_label="GOOD")  # ana alone
    agreement = annotator_agreement(store.read_raw()).iloc[0]
    # observed 4/5; by chance 0.6 x 0.4 + 0.4 x 0.6 = 0.48; kappa (0.8 - 0.48) / (1 - 0.48)
    assert agreement["annotators"] == "ana / ben" and agreement["photos"] == 5
    assert agreement["agreement"] == pytest.approx(0.8) and agreement["kappa"] == pytest.approx(0.32 / 0.52)
    store.append("x/2.jpg", "UNDO", sha256=f"{2:064d}", annotator="ben")
    past = photo_history(store.read_raw(), f"{2:064d}", "x/2.jpg")
    assert past[["who", "before", "after", "decision"]].values.tolist() == [
        ["ana", "GOOD", "GOOD", "GOOD"], ["ben", "GOOD", "BAD", "BAD"], ["ben", "BAD", "GOOD", "UNDO"]]

    board = ClaimBoard(store.path, seconds=0.5)
    assert board.claim("p1", "ana") == {"p1"} and board.claim("p1", "ben") == set()
    assert board.held_by_others("ben") == {"p1"} and board.held_by_others("ana") == set()
    assert board.claim("p2", "ana") == {"p2"} and board.held_by_others("ben") == {"p2"}  # what is on her screen now
    time.sleep(0.6)
    assert board.claim("p2", "ben") == {"p2"}  # expired
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert ClaimBoard(blocker / "q.csv").claim("p1", "ana") == {"p1"}  # best effort: unwritable keeps nobody out


def test_undo_takes_back_only_the_undoers_own_decision(tmp_path):
    """Latest wins among each annotator's standing decision; an UNDO retracts the undoer's own latest one."""
    from roomvision.learning.stores import annotator_agreement, photo_history
    store = LabelStore(tmp_path / "q.csv")
    store.append("x/1.jpg", "GOOD", sha256="s1", annotator="alice", proxy_label="GOOD")
    store.append("x/1.jpg", "BAD", sha256="s1", annotator="bob", proxy_label="GOOD")
    assert store.merged()["human_label"].tolist() == ["BAD"]  # latest wins
    store.append("x/1.jpg", "UNDO", sha256="s1", annotator="alice")
    merged = store.merged()
    assert merged[["human_label", "annotator"]].values.tolist() == [["BAD", "bob"]]  # bob's BAD still stands
    past = photo_history(store.read_raw(), "s1", "x/1.jpg")
    assert past[["who", "before", "after", "decision"]].values.tolist() == [
        ["alice", "GOOD", "GOOD", "GOOD"], ["bob", "GOOD", "BAD", "BAD"], ["alice", "BAD", "BAD", "UNDO"]]
    assert annotator_agreement(store.read_raw())["photos"].tolist() == [0]  # alice no longer has a decision
    store.append("x/1.jpg", "UNDO", sha256="s1", annotator="bob")
    assert store.merged().empty and store.decided_keys() == set()
    store.append("x/1.jpg", "GOOD", sha256="s1", annotator="alice")
    store.append("x/1.jpg", "SKIP", sha256="s1", annotator="bob")  # a later skip does not hide a label
    assert store.merged()["human_label"].tolist() == ["GOOD"]


def test_one_person_one_annotator_name(tmp_path):
    """NFC and NFD spellings, zero-width and byte-order-mark characters name the same annotator everywhere."""
    from roomvision.learning.stores import ClaimBoard, normalise_annotator
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    assert normalise_annotator(nfd) == normalise_annotator(nfc) == nfc
    assert normalise_annotator("alice\u200b") == normalise_annotator("\ufeffalice ") == "alice"
    store = LabelStore(tmp_path / "q.csv")
    store.append("x/1.jpg", "GOOD", sha256="s1", annotator=nfd)
    store.append("x/1.jpg", "UNDO", sha256="s1", annotator=nfc)
    assert store.merged().empty and set(store.read_raw()["annotator"]) == {nfc}
    board = ClaimBoard(store.path)
    board.claim("p1", "alice")
    assert board.claim("p1", "alice\u200b") == {"p1"} and board.held_by_others("alice\u2060") == set()


@pytest.mark.parametrize("content", ['[1, 2]', '"text"', '{"p1": "ana"}', '{"p1": {"until": "tomorrow"}}',
                                     '{"p1": {"annotator": "ana", "until": null}}', '{"p1": {"annotator": "ana"}}',
                                     '{"p1": {"until": 1e30}}', '{"p1": {"annotator": 7, "until": 1e30}}',
                                     '{"p1": {"annotator": "ana", "until": Infinity}}',
                                     '{"p1": {"annotator": "ana", "until": NaN}}',
                                     '{"p1": {"annotator": "ana", "until": true}}',
                                     '{"p1": {"annotator": "ana", "until": 1e30}}', '{not json', '\xff\xfe'])
def test_a_damaged_claims_file_blocks_nobody_and_never_crashes(tmp_path, content):
    from roomvision.learning.stores import ClaimBoard
    board = ClaimBoard(tmp_path / "q.csv")
    board.path.write_text(content, encoding="utf-8", errors="surrogateescape")
    assert board.held_by_others("ben") == set()
    assert board.claim("p1", "ben") == {"p1"}  # the claim of another shape (or one that never ends) is gone
    assert board.held_by_others("ana") == {"p1"}


def test_grid_claims_every_photo_on_screen(tmp_path):
    from roomvision.learning.stores import ClaimBoard
    board = ClaimBoard(tmp_path / "q.csv")
    assert board.claim([f"p{i}" for i in range(12)], "ana") == {f"p{i}" for i in range(12)}
    assert board.claim([f"p{i}" for i in range(8, 20)], "ben") == {f"p{i}" for i in range(12, 20)}
    assert board.held_by_others("ben") == {f"p{i}" for i in range(12)}
    board.claim(["p0"], "ana")  # her next screen: the others are free again
    assert board.held_by_others("ben") == {"p0"}


def _read_warned(path):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = LabelStore(path).read_raw()
    return raw, " ".join(str(w.message) for w in caught)


HEADER = "path,sha256,proxy_label,human_label,rating,annotator,timestamp,model_version"


@pytest.mark.parametrize("encoding,newline,final", [("utf-8", "\n", True), ("cp1252", "\n", True),
                                                     ("utf-8", "\r", True), ("utf-8", "\r\n", True),
                                                     ("utf-8", "\n", False), ("cp1252", "\r", False),
                                                     ("utf-8-sig", "\r\n", False)])
def test_a_hand_edited_label_file_reads_every_row(tmp_path, encoding, newline, final):
    """Excel on Windows (cp1252), old Mac line endings (CR), a byte-order mark, no final newline: every row."""
    lines = [HEADER, "k/1.jpg,s1,GOOD,BAD,2,Jos\u00e9,2026-01-01T00:00:00Z,m",
             "k/2.jpg,s2,GOOD,GOOD,,ana,2026-01-01T00:00:01Z,m"]
    path = tmp_path / "l.csv"
    path.write_bytes((newline.join(lines) + (newline if final else "")).encode(encoding))
    raw, warned = _read_warned(path)
    assert raw[["path", "human_label", "rating", "annotator"]].values.tolist() == [
        ["k/1.jpg", "BAD", "2", "Jos\u00e9"], ["k/2.jpg", "GOOD", "", "ana"]]
    assert warned == ""
    LabelStore(path).append("k/3.jpg", "GOOD", sha256="s3")  # the next append starts on a line of its own
    assert LabelStore(path).read_raw()["path"].tolist() == ["k/1.jpg", "k/2.jpg", "k/3.jpg"]


@pytest.mark.parametrize("rating", ["99", "0", "6", "inf", "1e300", "2.5", "-1", "nan"])
def test_a_rating_out_of_range_in_the_file_is_named_and_skipped(tmp_path, rating):
    path = tmp_path / "l.csv"
    path.write_text(f"{HEADER}\nk/1.jpg,s1,GOOD,GOOD,{rating},ana,t,m\nk/2.jpg,s2,GOOD,GOOD,5,ana,t,m\n")
    raw, warned = _read_warned(path)
    assert raw["path"].tolist() == ["k/2.jpg"]
    assert f"line 2: rating must be an integer from 1 to 5, not '{rating}'" in warned
    assert LabelStore(path).merged()["rating"].tolist() == [5]


def test_a_path_too_long_is_refused_on_write_and_named_on_read(tmp_path):
    store = LabelStore(tmp_path / "l.csv")
    with pytest.raises(LabelError, match="path longer than 4096 characters"):
        store.append("a/" + "x" * 140_000 + ".jpg", "GOOD")
    with open(store.path, "a") as f:
        f.write(f"{HEADER}\n{'y' * 140_000}.jpg,s1,GOOD,GOOD,,ana,t,m\nk/2.jpg,s2,GOOD,BAD,,ana,t,m\n")
    raw, warned = _read_warned(store.path)
    assert raw["path"].tolist() == ["k/2.jpg"] and "line 2:" in warned
