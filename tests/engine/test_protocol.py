"""The protocol's messages, the client's standard-library-only promise, and the service loop
driven in-process with fake jobs (faults that a CPU test machine cannot cause for real:
CUDA out of memory, an exception inside a job)."""

import ast
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flash_engine import protocol as P
from flash_engine.server import Server, read_bounded_line
from tests.support.service_loop import EventSink, FakeEngine, LoopHarness, fake_kind

from tests.conftest import REPO  # noqa: E402


# ---------------------------------------------------------------------------------------
# Messages


def test_request_round_trip():
    line = P.encode(P.make_request("animate", "r1", {"image": "/tmp/é\nx.png", "frames": 3}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one line whatever the paths hold
    assert P.parse_request(line) == {"v": 1, "id": "r1", "type": "animate",
                                     "args": {"image": "/tmp/é\nx.png", "frames": 3}}


@pytest.mark.parametrize("line, code", [
    (b"\xff\xfe\x00garbage", P.BAD_JSON),
    (b"{not json", P.BAD_JSON),
    (b"[1, 2]", P.BAD_JSON),
    (b'{"id": "r1", "type": "status"}', P.VERSION_MISMATCH),
    (b'{"v": 2, "id": "r1", "type": "status"}', P.VERSION_MISMATCH),
    (b'{"v": 1, "id": "r1", "type": "fly"}', P.UNKNOWN_REQUEST),
    (b'{"v": 1, "id": "r1", "type": "status", "args": [1]}', P.BAD_REQUEST),
    (b'{"v": 1, "id": 7, "type": "status"}', P.BAD_REQUEST),
    (b'{"v": 1, "id": "r1", "type": "status", "extra": 1}', P.BAD_REQUEST),
])
def test_bad_requests_are_refused_with_a_code(line, code):
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_request(line)
    assert caught.value.code == code
    assert "\n" not in caught.value.message


def test_request_lines_are_bounded_but_events_are_not():
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_request(b'{"v": 1, "type": "status", "args": {"x": "' + b"y" * P.MAX_LINE_BYTES + b'"}}')
    assert caught.value.code == P.LINE_TOO_LONG
    big = P.result_event("r1", {"frames": ["/f" * 1000] * 1000})  # a long result still reaches the client
    assert P.parse_event(P.encode(big))["data"] == big["data"]


def test_errors_keep_the_request_id_when_there_is_one():
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_request(b'{"v": 9, "id": "r5", "type": "status"}')
    assert caught.value.request_id == "r5"


def test_events_are_checked():
    event = P.parse_event(P.encode(P.progress_event("j1", "denoise", 3, 25, 12.345, request="j1", loss=0.5)))
    assert event == {"v": 1, "type": "progress", "request": "j1", "job": "j1", "phase": "denoise", "step": 3,
                     "total": 25, "eta_s": 12.35, "loss": 0.5}
    with pytest.raises(P.ProtocolError):
        P.parse_event(b'{"v": 1, "type": "progress", "job": "j1"}')  # no phase/step/total
    with pytest.raises(P.ProtocolError):
        P.parse_event(b'{"v": 1, "type": "shout"}')


def test_error_events_are_one_line():
    event = P.error_event("internal", "Traceback\n  line 1\nValueError: x", "see\nthe log")
    assert event["message"] == "Traceback line 1 ValueError: x" and event["hint"] == "see the log"


def test_read_bounded_line_drops_long_lines_without_holding_them():
    stream = io.BytesIO(b"123456\n" + b"x" * 50 + b"\n" + b"1234567\n" + b"tail")
    assert read_bounded_line(stream, 6) == (b"123456\n", False)  # the limit does not count the newline
    assert read_bounded_line(stream, 6) == (None, True)
    assert read_bounded_line(stream, 6) == (None, True)  # one byte over
    assert read_bounded_line(stream, 6) == (b"tail", False)  # a last line without newline
    assert read_bounded_line(stream, 6) == (None, False)


# ---------------------------------------------------------------------------------------
# Standard library only: the add-on runs these in Blender's Python


STDLIB_ONLY = ["flash_engine/protocol.py", "flash_engine/client.py", "flash_engine/setup.py",
               "flash_engine/errors.py"]
ALLOWED_ENGINE_IMPORTS = {"flash_engine", "flash_engine.protocol", "flash_engine.errors"}


@pytest.mark.parametrize("path", STDLIB_ONLY)
def test_stdlib_only_modules_import_only_the_standard_library(path):
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert name in ALLOWED_ENGINE_IMPORTS or (top != "flash_engine" and top in sys.stdlib_module_names), \
                f"{path} imports {name}"


def test_client_imports_no_third_party_module():
    # -S: no site-packages at all, as a bare interpreter would have.
    code = ("import sys; import flash_engine.client, flash_engine.setup; "
            "print(sorted(m for m in sys.modules if m.startswith('flash_engine')))")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.replace("'", '"')) == [
        "flash_engine", "flash_engine.client", "flash_engine.errors", "flash_engine.protocol", "flash_engine.setup"]


# ---------------------------------------------------------------------------------------
# The service loop in-process, with fake jobs and a fake engine (no torch)


def raising(exc):
    def run(engine, args, context):
        context.progress("denoise", 1, 4)
        raise exc
    return run


def test_out_of_memory_is_reported_with_a_hint_and_memory_is_freed():
    class OutOfMemoryError(RuntimeError):  # what torch.cuda raises, by name
        pass

    harness = LoopHarness({"animate": fake_kind(raising(OutOfMemoryError("CUDA out of memory. Tried 2 GiB"))),
                           "train": fake_kind(raising(RuntimeError("MPS backend out of memory (MPS allocated)")))})
    for job in ("j1", "j2"):
        harness.send("animate" if job == "j1" else "train", job)
        error = harness.until(lambda e: e["type"] == "error")
        assert error["job"] == job and error["code"] == P.OUT_OF_MEMORY
        assert "fewer frames" in error["hint"] and "offload" in error["hint"]
    harness.send("status", "s1")
    assert harness.until(lambda e: e["type"] == "result")["data"]["running"] is None
    assert harness.engine.freed == 2
    harness.close()


def test_unexpected_exception_is_internal_and_the_service_carries_on(capfd):
    harness = LoopHarness({"animate": fake_kind(raising(ZeroDivisionError("division by zero")))})
    harness.send("animate", "j1")
    error = harness.until(lambda e: e["type"] == "error")
    assert (error["code"], error["message"], error["job"]) == ("internal", "ZeroDivisionError: division by zero", "j1")
    harness.send("hello", "h1")
    assert harness.until(lambda e: e["type"] == "result")["data"]["device"] == "fake"
    harness.close()
    assert "Traceback" in capfd.readouterr().err  # the traceback goes to the log, not the protocol


def test_queue_is_visible_and_cancel_works_for_running_and_queued_jobs():
    started = threading.Event()

    def run(engine, args, context):
        started.set()
        step = 0
        while not context.should_cancel():
            step += 1
            context.progress("denoise", step, 1000)
            time.sleep(0.01)
        raise type("JobCancelled", (Exception,), {})()

    harness = LoopHarness({"animate": fake_kind(run)})
    harness.send("animate", "a")
    assert harness.next_event()["queue_position"] == 0
    harness.send("animate", "b")
    accepted = harness.until(lambda e: e["type"] == "accepted")
    assert (accepted["job"], accepted["queue_position"]) == ("b", 1)
    harness.send("animate", "b")  # an id already in use
    assert harness.until(lambda e: e["type"] == "error" and e.get("request") == "b")["code"] == P.BAD_REQUEST
    started.wait(10)
    harness.send("status", "s1")
    status = harness.until(lambda e: e.get("request") == "s1")["data"]
    assert status["running"]["job"] == "a" and status["running"]["phase"] == "denoise"
    assert status["queue"] == [{"job": "b", "type": "animate"}]

    harness.send("cancel", "c1", {"job": "b"})
    assert harness.until(lambda e: e.get("request") == "c1")["data"] == {"job": "b", "was": "queued"}
    assert harness.until(lambda e: e["type"] == "error")["job"] == "b"
    harness.send("cancel", "c2", {"job": "a"})
    assert harness.until(lambda e: e.get("request") == "c2")["data"] == {"job": "a", "was": "running"}
    cancelled = harness.until(lambda e: e["type"] == "error")
    assert (cancelled["job"], cancelled["code"]) == ("a", P.CANCELLED)
    harness.send("cancel", "c3", {"job": "a"})
    assert harness.until(lambda e: e.get("request") == "c3")["code"] == P.UNKNOWN_JOB
    harness.send("release", "r1")
    assert harness.until(lambda e: e.get("request") == "r1")["data"]["released"] is True
    harness.close()


def test_stdin_closing_cancels_the_running_job():
    running, cancelled = threading.Event(), threading.Event()

    def run(engine, args, context):
        running.set()
        while not context.should_cancel():
            time.sleep(0.01)
        cancelled.set()
        raise type("JobCancelled", (Exception,), {})()

    harness = LoopHarness({"animate": fake_kind(run)})
    harness.send("animate", "a")
    assert running.wait(10)
    started = time.monotonic()
    harness.close()
    assert cancelled.is_set() and time.monotonic() - started < 5
    events = [harness.sink.events.get_nowait() for _ in range(harness.sink.events.qsize())]
    assert events[-1]["code"] == P.CANCELLED and events[-1]["job"] == "a"


def test_too_long_line_gets_an_error_and_the_next_line_is_read():
    harness = LoopHarness({})
    os.write(harness._write_fd, b'{"v": 1, "id": "x", "type": "status", "args": {"pad": "' + b"x" * 5000 + b'"}}\n')
    assert harness.next_event()["code"] == P.LINE_TOO_LONG
    harness.send("status", "s1")
    assert harness.next_event()["request"] == "s1"
    harness.send("animate", "j1")  # this engine has no animate kind
    assert harness.next_event()["code"] == P.UNAVAILABLE
    harness.close()


def test_train_without_the_training_module_is_unavailable(monkeypatch):
    from flash_engine.server import JOB_KINDS

    monkeypatch.setitem(sys.modules, "flash_engine.training.job", None)  # as if the module did not exist
    import flash_engine.training

    # an earlier import leaves `job` on the package, where `from flash_engine.training import job` looks first
    monkeypatch.delattr(flash_engine.training, "job", raising=False)
    harness = LoopHarness(JOB_KINDS)
    harness.send("train", "t1", {"clips": ["x"], "action": "a", "prompt": "p", "out": "o"})
    error = harness.next_event()
    assert (error["request"], error["code"]) == ("t1", P.UNAVAILABLE) and "job" not in error
    harness.close()


def test_argument_types_are_checked_before_the_job():
    from flash_engine.errors import FlashError
    from flash_engine.requests import parse

    request = parse("animate", {"image": "a.png", "out": "o", "frames": 3, "guidance": 7, "mp4": True})
    assert request.guidance == 7.0 and isinstance(request.guidance, float)
    assert parse("train", {"clips": "c", "action": "a", "prompt": ["p"], "out": "o"}).clips == ["c"]
    for kind, bad in (("animate", {"frames": "3"}), ("animate", {"frames": True}), ("animate", {"guidance": "x"}),
                      ("animate", {"mp4": 1}), ("animate", {"frames": 3.0}), ("train", {"clips": [3]}),
                      ("train", {"options": []}), ("animate", {"image": ""})):
        base = {"image": "a.png", "out": "o"} if kind == "animate" else {"clips": "c", "action": "a", "prompt": "p",
                                                                          "out": "o"}
        with pytest.raises(FlashError) as caught:
            parse(kind, {**base, **bad})
        assert caught.value.code == P.BAD_ARGUMENT, bad
        assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------
# Any line: nesting, numbers, versions


DEEP_LINE = b'{"v":1,"id":"d","type":"status","args":' + b"[" * 3000  # the 3 KB line that aborted serve
HOSTILE_LINES = [
    DEEP_LINE,
    b"[" * 200_000,
    # closed and valid, but nested past any sane request
    b'{"v":1,"id":"d","type":"status","args":{"a":' + b'{"a":' * 2000 + b"1" + b"}" * 2002,
    b'{"v":1,"id":"d","type":"status","args":{"a":' + b'"\\"[' * 3000 + b'"}}',  # brackets in a string are text
    b'{"v":1,"id":"d","type":"status","args":{"x":1' + b"0" * 5000 + b"}}",  # more digits than int() takes
]


@pytest.mark.parametrize("line", HOSTILE_LINES, ids=["deep", "brackets", "deep-valid", "string", "digits"])
def test_no_line_raises_anything_but_a_protocol_error(line):
    for parse in (P.parse_request, P.parse_event):
        try:
            parse(line)
        except P.ProtocolError as err:
            assert err.code in (P.BAD_JSON, P.VERSION_MISMATCH, P.BAD_REQUEST) and "\n" not in err.message
        # any other exception fails the test


def test_brackets_inside_strings_do_not_count_as_nesting():
    args = {"prompt": "[[[[" * 1000 + "{{" * 500, "nested": {"a": [[{"b": [1]}]]}}
    assert P.parse_request(P.encode(P.make_request("status", "s", args)))["args"] == args


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
def test_request_numbers_must_be_finite(value):
    line = b'{"v":1,"id":"r1","type":"animate","args":{"image":"a.png","options":{"rate":[1, ' + value + b"]}}}"
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_request(line)
    err = caught.value
    assert (err.code, err.request_id) == (P.BAD_ARGUMENT, "r1")
    assert "options.rate[1]" in err.message and "finite" in err.message and "\n" not in err.message
    with pytest.raises(P.ProtocolError, match="'guidance'"):
        P.parse_request(b'{"v":1,"id":"r1","type":"animate","args":{"guidance":' + value + b"}}")


def test_every_line_written_is_strict_json():
    event = P.result_event("r1", {"loss": math.nan, "eta": [math.inf, -math.inf, 1.5], "n": {"x": math.nan}})
    line = P.encode(event)
    strict = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} on the wire"))
    assert strict["data"] == {"loss": None, "eta": [None, None, 1.5], "n": {"x": None}}
    progress = P.encode(P.progress_event("j", "unet", 1, 2, math.inf, loss=math.nan))
    assert json.loads(progress, parse_constant=pytest.fail)["loss"] is None
    with pytest.raises(P.ProtocolError, match="'guidance'"):  # the client refuses to send one
        P.make_request("animate", "r1", {"guidance": math.inf})


@pytest.mark.parametrize("version", [b"true", b"1.0", b'"1"', b"[1]"])
def test_only_the_integer_1_is_version_1(version):
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_request(b'{"v":' + version + b',"id":"r1","type":"status"}')
    assert caught.value.code == P.VERSION_MISMATCH
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_event(b'{"v":' + version + b',"type":"log","level":"info","message":"x"}')
    assert caught.value.code == P.VERSION_MISMATCH


def test_a_running_job_survives_hostile_lines_and_ends_with_its_final_event():
    steps_done = []

    def run(engine, args, context):
        for step in range(1, 31):
            context.progress("denoise", step, 30)
            steps_done.append(step)
            time.sleep(0.02)
        return {"steps": len(steps_done)}

    harness = LoopHarness({"animate": fake_kind(run)})
    harness.server.max_line_bytes = 1 << 20  # the real bound: a 200 KB line is a normal line here
    harness.send("animate", "j1")
    harness.until(lambda e: e["type"] == "progress")
    lines = HOSTILE_LINES + [b'{"v":1,"id":"n","type":"status","args":{"x":NaN}}', b'{"v":true,"id":"t","type":"status"}']
    harness.send_raw(b"".join(line + b"\n" for line in lines) + P.encode(P.make_request("status", "s1")))
    errors = []
    status = harness.until(lambda e: (e["type"] == "error" and errors.append(e)) or e.get("request") == "s1")
    assert status["data"]["running"]["job"] == "j1"
    assert [e["code"] for e in errors] == [P.BAD_JSON] * 5 + [P.BAD_ARGUMENT, P.VERSION_MISMATCH]
    final = harness.until(lambda e: e.get("job") == "j1" and e["type"] in P.TERMINAL_EVENTS, timeout=20)
    assert final["type"] == "result" and final["data"] == {"steps": 30}
    harness.close()


def test_an_event_that_cannot_be_encoded_becomes_an_error_and_the_writer_carries_on(capfd):
    def run(engine, args, context):
        context.progress("denoise", 1, 2, loss=math.nan)  # null on the wire
        return {"value": object()}  # not JSON at all

    harness = LoopHarness({"animate": fake_kind(run)})
    harness.send("animate", "j1")
    progress = harness.until(lambda e: e["type"] == "progress")
    assert progress["loss"] is None
    final = harness.until(lambda e: e.get("job") == "j1" and e["type"] in P.TERMINAL_EVENTS)
    assert (final["type"], final["code"]) == ("error", P.INTERNAL)
    harness.send("status", "s1")
    assert harness.until(lambda e: e.get("request") == "s1")["data"]["running"] is None
    harness.close()


# ---------------------------------------------------------------------------------------
# A client that stops reading


class BreakingSink(EventSink):
    """A stdout whose reader goes away when ``broken`` is set: writes fail as on a closed pipe."""

    def __init__(self):
        super().__init__()
        self.broken = threading.Event()

    def write(self, data: bytes) -> int:
        if self.broken.is_set():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


def test_a_closed_stdout_cancels_every_job_and_ends_the_service_though_stdin_stays_open():
    ran, cancelled = [], threading.Event()

    def run(engine, args, context):
        ran.append(args["n"])
        while not context.should_cancel():
            context.progress("denoise", 1, 2)
            time.sleep(0.01)
        cancelled.set()
        raise type("JobCancelled", (Exception,), {})()

    sink = BreakingSink()
    harness = LoopHarness({"animate": fake_kind(run)}, sink=sink)
    harness.send("animate", "a", {"n": 1})
    harness.send("animate", "b", {"n": 2})
    harness.until(lambda e: e["type"] == "accepted" and e["job"] == "b")
    harness.until(lambda e: e["type"] == "progress")
    sink.broken.set()
    harness.thread.join(5)  # stdin is still open: the service must not wait for it
    assert not harness.thread.is_alive()
    assert cancelled.is_set() and ran == [1]  # the running job stopped, the queued one never ran
    os.close(harness._write_fd)


def test_an_idle_service_notices_its_stdout_reader_is_gone():
    read_fd, write_fd = os.pipe()
    stdin_read, stdin_write = os.pipe()
    server = Server(os.fdopen(stdin_read, "rb"), os.fdopen(write_fd, "wb", buffering=0), FakeEngine(), kinds={},
                    exit_grace_s=2)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    os.write(stdin_write, P.encode(P.make_request("status", "s1")))
    with os.fdopen(read_fd, "rb") as stdout:
        assert P.parse_event(stdout.readline())["request"] == "s1"
    thread.join(5)  # no job writes anything: only watching the pipe can tell
    assert not thread.is_alive() and server.output_broken
    os.close(stdin_write)


def test_a_line_of_escaped_quotes_is_refused_at_once():
    """An open string of 400,000 escaped quotes after deep brackets: the depth scan is one
    linear pass (a backtracking one took minutes here, holding every thread of the service)."""
    import time

    line = ('{"v":1,"id":"d","type":"status","args":' + "[" * 70 + '"' + '\\"' * 400_000).encode()
    started = time.perf_counter()
    with pytest.raises(P.ProtocolError) as caught:
        P.parse_request(line)
    assert caught.value.code == P.BAD_JSON and time.perf_counter() - started < 1.0


def test_a_client_that_stops_reading_but_keeps_its_pipe_open_cannot_hang_the_service():
    """Its pipe fills and every write blocks: the events' writer gives up after its timeout,
    the service counts the client as gone, cancels the job and stops (it used to hang in
    stop(), holding the job lock, so even SIGTERM could not end it)."""
    import os
    import threading
    import time

    from flash_engine.server import Server
    from tests.support.service_loop import FakeEngine, fake_kind

    class StuckStdout:
        def __init__(self):
            self.release = threading.Event()

        def write(self, data):
            self.release.wait(60)  # the client never reads again
            return len(data)

        def flush(self):
            pass

    started = threading.Event()

    def chatty_job(engine, prepared, context):
        started.set()
        while not context.should_cancel():
            context.log("still working")
            time.sleep(0.01)
        raise context.check_cancel() or RuntimeError("cancelled")

    read_fd, write_fd = os.pipe()
    stdout = StuckStdout()
    server = Server(os.fdopen(read_fd, "rb"), stdout, FakeEngine(), kinds={"animate": fake_kind(chatty_job)},
                    exit_grace_s=2, write_timeout_s=0.5)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    os.write(write_fd, P.encode(P.make_request("animate", "a1", {})))
    os.write(write_fd, P.encode(P.make_request("status", "s1")))
    begun = time.monotonic()
    thread.join(15)
    try:
        assert not thread.is_alive(), "the service hung on a client that stopped reading"
        assert time.monotonic() - begun < 15 and server.output_broken
    finally:
        stdout.release.set()
        os.close(write_fd)
