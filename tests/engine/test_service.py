"""The engine service through a real ``python -m flash_engine serve --model tiny`` process.

Sizes are tiny (64×48, 3 frames, 2 steps) so each job takes a second or two; the jobs
that must be caught mid-way get many steps and are cancelled (or killed) early.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from flash_engine import protocol as P
from flash_engine.client import EngineClient, EngineDied, EngineError
from tests.conftest import draw_scene

from tests.conftest import REPO  # noqa: E402
SERVE_ARGS = ["--model", "tiny"]
LONG_STEPS = 200  # long enough to be caught mid-way on any machine; the jobs are stopped early


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "reference.png"
    draw_scene().save(path)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One service for the module: warm-model tests rely on it living across jobs."""
    client = EngineClient(sys.executable, SERVE_ARGS, engine_path=REPO, cwd=tmp_path_factory.mktemp("cwd"))
    client.start()
    yield client
    assert client.close() == 0, client.stderr_tail()
    assert client.bad_lines == 0  # nothing but protocol lines came out on stdout


def clip(reference, out, **overrides) -> dict:
    return {"image": str(reference), "out": str(out), "prompt": "a person is jumping.", "frames": 3, "steps": 2,
            "width": 64, "height": 48, "seed": 5, **overrides}


def wait_for_event(client, job_id, predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.job(job_id)
        for event in state.events:
            if predicate(event):
                return event
        if state.finished:
            raise AssertionError(f"job {job_id} ended ({state.state}: {state.error}) before the event")
        time.sleep(0.02)
    raise AssertionError(f"no such event from job {job_id} within {timeout}s")


def mid_denoise(event) -> bool:
    return event["type"] == "progress" and event["phase"] == "denoise" and event["step"] >= 1


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_hello_reports_versions_device_and_weights(engine):
    hello = engine.hello_info
    assert hello["protocol"] == P.PROTOCOL_VERSION and hello["pid"] == engine.pid
    assert hello["torch"] and hello["diffusers"] and hello["python"].startswith("3.")
    assert hello["device"] == "cpu" and hello["default_model"] == "tiny"
    assert set(hello["weights"]) >= {"folder", "found"}
    assert hello["job_types"]["animate"] is True


def test_animate_returns_the_frames_and_their_metadata(engine, reference, tmp_path):
    events = []
    result = engine.animate(clip(reference, tmp_path / "take1"), timeout=300, on_event=events.append)
    assert [e["type"] for e in events][0] == "accepted" and events[-1]["type"] == "result"
    denoise = [e for e in events if e["type"] == "progress" and e["phase"] == "denoise"]
    assert [e["step"] for e in denoise] == [0, 1, 2] and {e["total"] for e in denoise} == {2}
    assert all("eta_s" in e for e in denoise)
    out = tmp_path / "take1"
    assert result["out"] == str(out)
    assert result["frames"] == [str(out / f"frame_{i:04d}.png") for i in (1, 2, 3)]
    for frame in result["frames"]:
        with Image.open(frame) as image:
            assert image.size == (64, 48)
    assert result["metadata"] == json.loads((out / "flash.json").read_text())
    assert result["metadata"]["settings"]["num_frames"] == 3 and result["metadata"]["model"]["source"] == "tiny"


def test_a_second_animate_does_not_load_the_model_again(engine, reference, tmp_path):
    engine.animate(clip(reference, tmp_path / "a"), timeout=300)
    engine.animate(clip(reference, tmp_path / "b", action="soccer_shoot", prompt=None, seed=9), timeout=300)
    status = engine.status()
    assert status["loads"] == 1
    assert status["model"]["model"] == "tiny" and status["device"] == "cpu"
    assert status["running"] is None and status["queue"] == []


def test_a_pose_take_through_the_service_keeps_its_controlnet_warm(engine, reference, tmp_path):
    from tests.support.controls import save_tiny_controlnet, write_poses

    controlnet = save_tiny_controlnet(tmp_path / "controlnet")
    poses = write_poses(tmp_path / "take.pose.json", 3, 64, 48)
    engine.animate(clip(reference, tmp_path / "plain"), timeout=300)  # the model is warm
    loads = engine.status()["loads"]
    args = clip(reference, tmp_path / "posed", pose=str(poses), pose_controlnet=str(controlnet), pose_strength=0.8)
    result = engine.animate(args, timeout=300)
    (control,) = result["metadata"]["control"]
    assert control["control"] == "pose" and control["source"]["pose"] == str(poses.resolve())
    assert control["strength"] == 0.8 and control["controlnet"]["folder"] == str(controlnet.resolve())
    assert len(result["frames"]) == 3
    assert engine.status()["loads"] == loads + 1  # the ControlNet, once
    engine.animate({**args, "out": str(tmp_path / "again"), "seed": 6}, timeout=300)
    assert engine.status()["loads"] == loads + 1  # warm: not loaded again
    with pytest.raises(EngineError) as caught:  # poses for another take: refused before it is accepted
        engine.animate(clip(reference, tmp_path / "bad", frames=4, pose=str(poses), pose_controlnet=str(controlnet)),
                       timeout=60)
    assert caught.value.code == "bad_pose" and "\n" not in caught.value.message
    assert not (tmp_path / "bad").exists()


def test_cancel_mid_job_stops_it_and_leaves_no_output(engine, reference, tmp_path):
    out = tmp_path / "cancelled"
    job = engine.submit("animate", clip(reference, out, steps=LONG_STEPS))
    wait_for_event(engine, job, mid_denoise)
    asked = time.monotonic()
    assert engine.cancel(job) == {"job": job, "was": "running"}
    with pytest.raises(EngineError) as caught:
        engine.wait(job, timeout=60)
    assert caught.value.code == P.CANCELLED
    assert time.monotonic() - asked < 30  # within a step or two, even on a busy 2-core machine
    state = engine.job(job)
    assert state.state == "cancelled" and state.step < LONG_STEPS
    assert not out.exists() and leftovers(tmp_path) == []  # no output, no hidden staging folder
    assert engine.status()["running"] is None


def test_a_queued_job_is_visible_and_cancel_removes_it(engine, reference, tmp_path):
    first = engine.submit("animate", clip(reference, tmp_path / "first", steps=LONG_STEPS))
    second = engine.submit("animate", clip(reference, tmp_path / "second"))
    wait_for_event(engine, second, lambda e: e["type"] == "accepted")
    assert engine.job(second).state == "queued" and engine.job(second).queue_position == 1
    status = engine.status()
    assert status["queue"] == [{"job": second, "type": "animate"}]
    assert engine.cancel(second) == {"job": second, "was": "queued"}
    with pytest.raises(EngineError, match="cancelled"):
        engine.wait(second, timeout=30)
    assert engine.status()["queue"] == []
    engine.cancel(first)
    with pytest.raises(EngineError):
        engine.wait(first, timeout=60)
    assert not (tmp_path / "first").exists() and not (tmp_path / "second").exists()


def test_bad_lines_and_requests_get_errors_and_the_service_carries_on(engine, reference, tmp_path):
    engine.poll_events()  # forget earlier events
    engine.send_raw(b"\x00\xff\xfe not json at all \x81\n")
    engine.send_raw(b'{"v": 1, "id": "pad", "type": "status", "args": {"x": "' + b"y" * (P.MAX_LINE_BYTES + 10)
                    + b'"}}\n')
    engine.send_raw(b'{"v": 1, "id": "u1", "type": "teleport"}\n')
    engine.send_raw(b'{"v": 99, "id": "v1", "type": "status"}\n')
    engine.send_raw(b'{"v":1,"id":"d","type":"status","args":' + b"[" * 3000 + b"\n")  # aborted serve once
    engine.send_raw(b'{"v": 1, "id": "n1", "type": "status", "args": {"x": [1e999]}}\n')
    errors = []
    deadline = time.monotonic() + 60
    while len(errors) < 6 and time.monotonic() < deadline:
        errors += [e for e in engine.poll_events(timeout=1) if e["type"] == "error"]
    assert [e["code"] for e in errors] == [P.BAD_JSON, P.LINE_TOO_LONG, P.UNKNOWN_REQUEST, P.VERSION_MISMATCH,
                                           P.BAD_JSON, P.BAD_ARGUMENT]
    assert errors[2]["request"] == "u1" and errors[3]["request"] == "v1" and errors[5]["request"] == "n1"

    bad_args = [
        (clip(reference, tmp_path / "x", frames="three"), P.BAD_ARGUMENT),
        (clip(reference, tmp_path / "x", colour="red"), P.BAD_ARGUMENT),
        (clip(tmp_path / "missing.png", tmp_path / "x"), None),  # a FlashError code of its own
        (clip(reference, tmp_path / "x", width=63), None),
    ]
    for args, code in bad_args:
        with pytest.raises(EngineError) as caught:
            engine.animate(args, timeout=60)
        assert caught.value.code != P.INTERNAL and (code is None or caught.value.code == code), caught.value
        assert caught.value.message and "\n" not in caught.value.message
    with pytest.raises(EngineError) as caught:
        engine.cancel("no-such-job")
    assert caught.value.code == P.UNKNOWN_JOB
    assert engine.status()["running"] is None  # still alive and answering
    assert not (tmp_path / "x").exists()


def test_release_frees_the_model_and_the_next_job_loads_it_again(engine, reference, tmp_path):
    loads = engine.status()["loads"]
    assert engine.release(timeout=60)["released"] is True
    status = engine.status()
    assert status["model"] is None and status["loads"] == loads
    engine.animate(clip(reference, tmp_path / "after"), timeout=300)
    assert engine.status()["loads"] == loads + 1


def test_train_then_animate_with_the_new_action(engine, reference, tmp_path):
    from tests.support.clipgen import make_clips

    clips = make_clips(tmp_path / "clips", count=2, frames=8)
    events = []
    trained = engine.train({"clips": [str(clips)], "action": "disc", "prompt": "a disc is moving.",
                            "out": str(tmp_path / "disc"), "steps": 2, "decoder_steps": 1, "resolution": "64",
                            "frames": 6, "stride": 1},  # serve's --model tiny is the default: animate's base
                           timeout=300, on_event=events.append)
    assert Path(trained["action"]) == tmp_path / "disc" and (tmp_path / "disc" / "action.toml").is_file()
    steps = [e for e in events if e["type"] == "progress" and e["phase"] == "unet"]
    assert steps and steps[-1]["step"] == 2 and "loss" in steps[-1]
    result = engine.animate(clip(reference, tmp_path / "with-action", weights=str(tmp_path / "disc"), prompt=None),
                            timeout=300)
    assert result["metadata"]["action"]["base_model_only"] is False


def test_serve_defaults_reach_training_requests(tmp_path):
    from flash_engine.server import Engine, prepare_train
    from tests.support.clipgen import make_clips

    clips = make_clips(tmp_path / "clips", count=1, frames=8)
    args = {"clips": [str(clips)], "action": "disc", "prompt": "a disc", "out": str(tmp_path / "disc"), "frames": 6,
            "stride": 1}
    engine = Engine({"model": "tiny", "device": "cpu", "precision": "fp32", "offload": True})
    job = prepare_train(engine, args)
    assert job.model == "tiny" and (job.request.device, job.request.precision) == ("cpu", "fp32")
    assert prepare_train(engine, {**args, "model": "sd15-random"}).model == "sd15-random"  # a request's own wins


def test_kill_9_mid_job_is_reported_and_a_restart_works(reference, tmp_path):
    client = EngineClient(sys.executable, SERVE_ARGS, engine_path=REPO, cwd=tmp_path)
    client.start()
    try:
        job = client.submit("animate", clip(reference, tmp_path / "killed", steps=LONG_STEPS))
        wait_for_event(client, job, mid_denoise)
        first_pid = client.pid
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(EngineDied) as caught:
            client.wait(job, timeout=30)
        assert caught.value.death.signal == "SIGKILL" and "SIGKILL" in caught.value.message
        assert caught.value.death.expected is False and not client.alive
        assert "restart" in caught.value.hint
        assert any(e["type"] == "error" and e["code"] == P.ENGINE_DIED and "job" not in e
                   for e in client.poll_events())
        with pytest.raises(EngineDied):
            client.status()
        assert not (tmp_path / "killed").exists()  # only a hidden staging folder can be left by a kill

        hello = client.restart()
        assert client.pid != first_pid and hello["pid"] == client.pid
        assert client.status()["loads"] == 0 and client.death is None

        # Closing stdin (Blender quit or crashed) ends an idle service within seconds.
        client.process.stdin.close()
        assert client.process.wait(timeout=15) == 0
    finally:
        client.kill()


def test_closing_stdin_mid_job_ends_the_service_and_stdout_stays_pure(reference, tmp_path):
    """Driven without the client: every byte on stdout must parse as a protocol event."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flash_engine", "serve", *SERVE_ARGS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    try:
        def send(request_type, request_id, args=None):
            proc.stdin.write(P.encode(P.make_request(request_type, request_id, args)))
            proc.stdin.flush()

        lines = []

        def read_until(predicate):
            while True:
                line = proc.stdout.readline()
                assert line, "the service ended early"
                lines.append(line)
                event = P.parse_event(line)
                if predicate(event):
                    return event

        send("hello", "h")
        read_until(lambda e: e.get("request") == "h")
        # mp4: the ffmpeg child process writes too; none of it may reach our stdout
        send("animate", "whole", clip(reference, tmp_path / "whole", mp4=True))
        assert read_until(lambda e: e.get("job") == "whole" and e["type"] in ("result", "error"))["type"] == "result"
        send("animate", "long", clip(reference, tmp_path / "long", steps=LONG_STEPS))
        read_until(lambda e: e.get("job") == "long" and mid_denoise(e))
        closed = time.monotonic()
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - closed < 20
        lines += proc.stdout.read().splitlines(keepends=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [P.parse_event(line) for line in lines]  # raises on any line that is not an event
    assert all(line.endswith(b"\n") for line in lines)
    assert (tmp_path / "whole" / "flash.mp4").is_file()
    assert not (tmp_path / "long").exists()
    assert leftovers(tmp_path) == []  # the cancelled job cleaned its staging folder before exit
    assert events[-1]["job"] == "long" and events[-1]["code"] == P.CANCELLED


def shim(folder: Path, body: str) -> str:
    path = folder / "python-shim"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_an_engine_that_cannot_start_says_why(tmp_path):
    python = shim(tmp_path, "echo 'Fatal Python error: init_fs_encoding: failed to get the Python codec' >&2; exit 1")
    client = EngineClient(python, engine_path=REPO, cwd=tmp_path)
    with pytest.raises(EngineDied) as caught:
        client.start(timeout=30)
    assert caught.value.death.returncode == 1 and "exited with code 1" in caught.value.message
    assert "init_fs_encoding" in caught.value.hint


def test_a_missing_engine_python_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError) as caught:
        EngineClient(tmp_path / "no-env" / "bin" / "python").start()
    assert caught.value.code == "engine_unstartable" and "no-env" in caught.value.message


def test_an_engine_python_without_the_requirements_gets_a_clear_error(tmp_path):
    # -S: no site-packages, so flash_engine (on PYTHONPATH) loads but torch and diffusers do not
    client = EngineClient(shim(tmp_path, f'exec "{sys.executable}" -S "$@"'), SERVE_ARGS, engine_path=REPO,
                          cwd=tmp_path)
    with pytest.raises(EngineError) as caught:
        client.start(timeout=60)
    # an 'environment' error from hello, or (when the command line imports a library before
    # serving) a death whose hint quotes the ModuleNotFoundError
    error = caught.value
    assert error.code in (P.ENVIRONMENT, P.ENGINE_DIED)
    assert "No module named" in f"{error.message} {error.hint}"
    assert not client.alive  # not left running


def test_the_engine_never_writes_into_its_install_folder(reference, tmp_path, monkeypatch):
    """As installed: the engine's code in a folder of its own, started from an environment like
    Blender's (which does not ask Python to skip bytecode caches)."""
    import shutil

    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    installed = tmp_path / "extension"
    shutil.copytree(REPO / "flash_engine", installed / "flash_engine", ignore=shutil.ignore_patterns("__pycache__"))
    client = EngineClient(sys.executable, SERVE_ARGS, engine_path=installed, cwd=tmp_path)
    client.start()
    try:
        client.animate(clip(reference, tmp_path / "take"), timeout=120)  # imports the pipeline and the model
    finally:
        assert client.close() == 0, client.stderr_tail()
    assert (tmp_path / "take" / "flash.json").is_file()
    written = sorted(str(p.relative_to(installed)) for p in installed.rglob("*")
                     if p.name == "__pycache__" or p.suffix == ".pyc")
    assert written == []


class ServeProcess:
    """``serve --model tiny`` driven without the client, so a test can close or signal any end."""

    def __init__(self, folder: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = folder.parent / f"{folder.name}-serve.log"  # outside the folder whose leftovers are checked
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "flash_engine", "serve", *SERVE_ARGS],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=folder,
                                         env=env)
        self.events = []

    def send(self, request_type, request_id, args=None):
        self.proc.stdin.write(P.encode(P.make_request(request_type, request_id, args)))
        self.proc.stdin.flush()

    def read_until(self, predicate):
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the service ended early: {self.log.read_text()[-2000:]}"
            event = P.parse_event(line)
            self.events.append(event)
            if predicate(event):
                return event

    def start_two_jobs(self, reference, folder):
        """A long job caught mid-denoise, and one queued behind it."""
        self.send("hello", "h")
        self.read_until(lambda e: e.get("request") == "h")
        self.send("animate", "long", clip(reference, folder / "long", steps=LONG_STEPS))
        self.send("animate", "queued", clip(reference, folder / "queued"))
        self.read_until(lambda e: e.get("job") == "long" and mid_denoise(e))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def test_a_client_that_stops_reading_stops_the_service_within_seconds(reference, tmp_path):
    serve = ServeProcess(tmp_path)
    try:
        serve.start_two_jobs(reference, tmp_path)
        closed = time.monotonic()
        serve.proc.stdout.close()  # stdin stays open: only the closed stdout tells
        assert serve.proc.wait(timeout=20) == 0
        assert time.monotonic() - closed < 20
    finally:
        serve.close()
    assert not (tmp_path / "long").exists() and not (tmp_path / "queued").exists()
    assert leftovers(tmp_path) == []  # the running job cleaned its staging folder; the queued one never ran
    assert "stdout closed" in serve.log.read_text()


def test_sigterm_cancels_every_job_with_its_event_and_cleans_up(reference, tmp_path):
    serve = ServeProcess(tmp_path)
    try:
        serve.start_two_jobs(reference, tmp_path)
        signalled = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        rest = []
        reader = threading.Thread(target=lambda: rest.extend(serve.proc.stdout.readlines()), daemon=True)
        reader.start()
        assert serve.proc.wait(timeout=20) == -signal.SIGTERM  # cleaned up, then ended by the signal
        assert time.monotonic() - signalled < 20
        reader.join(10)
    finally:
        serve.close()
    events = serve.events + [P.parse_event(line) for line in rest]
    finals = {e["job"]: e for e in events if e.get("job") and e["type"] in P.TERMINAL_EVENTS}
    assert {job: e["code"] for job, e in finals.items()} == {"long": P.CANCELLED, "queued": P.CANCELLED}
    assert not (tmp_path / "long").exists() and not (tmp_path / "queued").exists()
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Train jobs read their clips on the worker, not on the thread that reads requests


@pytest.fixture
def blocked_clip_reader(monkeypatch):
    """Every clip read blocks until ``gate`` is set, then fails; no model may load."""
    from flash_engine.models import loading
    from flash_engine.training import clips

    gate, reading, calls = threading.Event(), threading.Event(), []

    def read_video(path):
        calls.append(path.name)
        reading.set()
        gate.wait(30)
        raise ValueError("not a readable video (test reader)")

    monkeypatch.setattr(clips, "read_video", read_video)
    monkeypatch.setattr(loading, "load_base", lambda *a, **k: pytest.fail("a model was loaded"))
    return gate, reading, calls


def train_harness(tmp_path, clip_count=4):
    from flash_engine.server import JOB_KINDS, Engine
    from tests.support.service_loop import LoopHarness

    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(clip_count):
        (folder / f"clip{i}.mp4").write_bytes(b"not read: the test reader stands in")
    harness = LoopHarness({"train": JOB_KINDS["train"]}, engine=Engine({"model": "tiny", "device": "cpu"}))
    harness.send("status", "warm")  # the first status imports the engine's torch side
    harness.until(lambda e: e.get("request") == "warm", timeout=120)
    args = {"clips": [str(folder)], "action": "x", "prompt": "a person is x.", "out": str(tmp_path / "x"),
            "frames": 6, "stride": 1, "resolution": "64", "steps": 1, "decoder_steps": 0}
    return harness, args


def test_train_reads_its_clips_in_the_job_while_requests_are_answered_at_once(tmp_path, blocked_clip_reader):
    gate, reading, calls = blocked_clip_reader
    harness, args = train_harness(tmp_path)
    harness.send("train", "t1", args)
    assert harness.until(lambda e: e.get("request") == "t1", timeout=5)["type"] == "accepted"
    assert reading.wait(5)
    waits = []
    for i in range(3):
        sent = time.monotonic()
        harness.send("status", f"s{i}")
        status = harness.until(lambda e: e.get("request") == f"s{i}", timeout=5)["data"]
        waits.append(time.monotonic() - sent)
    assert status["running"]["job"] == "t1" and calls == ["clip0.mp4"]  # still on its first clip
    assert sorted(waits)[1] < 0.1 and max(waits) < 1, waits
    gate.set()
    logs = []
    final = harness.until(lambda e: e.get("job") == "t1" and (e["type"] in P.TERMINAL_EVENTS or logs.append(e)),
                          timeout=30)
    assert (final["type"], final["code"]) == ("error", "no_clips") and "4 skipped" in final["message"]
    skipped = [e["message"] for e in logs if e["type"] == "log" and e["message"].startswith("skipped")]
    assert skipped == [f"skipped {tmp_path / 'clips' / f'clip{i}.mp4'}: not a readable video (test reader)"
                       for i in range(4)]
    assert not (tmp_path / "x").exists()
    harness.close()


def test_cancel_is_seen_between_clips(tmp_path, blocked_clip_reader):
    gate, reading, calls = blocked_clip_reader
    harness, args = train_harness(tmp_path)
    harness.send("train", "t1", args)
    assert reading.wait(5)
    harness.send("cancel", "c1", {"job": "t1"})
    assert harness.until(lambda e: e.get("request") == "c1", timeout=2)["data"] == {"job": "t1", "was": "running"}
    gate.set()
    final = harness.until(lambda e: e.get("job") == "t1" and e["type"] in P.TERMINAL_EVENTS, timeout=30)
    assert final["code"] == P.CANCELLED and calls == ["clip0.mp4"]  # no clip read after the cancel
    harness.close()


def test_train_checks_that_need_no_reading_still_come_before_accepted(tmp_path, blocked_clip_reader):
    harness, args = train_harness(tmp_path)
    for bad, code in [({"clips": [str(tmp_path / "nowhere")]}, "bad_clips"), ({"prompt": [7]}, P.BAD_ARGUMENT),
                      ({"action": " "}, P.BAD_ARGUMENT), ({"steps": 0, "decoder_steps": 0}, P.BAD_ARGUMENT)]:
        harness.send("train", "bad", {**args, **bad})
        error = harness.until(lambda e: e.get("request") == "bad", timeout=5)
        assert (error["type"], error["code"], "job" in error) == ("error", code, False), error
    assert blocked_clip_reader[2] == []  # none of them read a clip
    harness.close()


# ---------------------------------------------------------------------------------------
# Queued jobs hold what they need, not decoded pixels

LARGE_BYTES = 256 * 1024  # a decoded 2000x1500 reference is 9 MB; paths, numbers and settings are bytes


def large_objects(root, limit=LARGE_BYTES) -> list[str]:
    """Where in ``root``'s attributes and containers an image, array, tensor or buffer over ``limit`` bytes sits."""
    import numpy as np

    torch = sys.modules.get("torch")
    found, seen, stack = [], set(), [("prepared", root, 0)]
    while stack:
        where, value, depth = stack.pop()
        if id(value) in seen or depth > 12 or value is None or isinstance(value, (str, int, float, Path)):
            continue
        seen.add(id(value))
        if isinstance(value, Image.Image):
            size = value.width * value.height * len(value.getbands())
        elif isinstance(value, np.ndarray):
            size = value.nbytes
        elif torch is not None and isinstance(value, torch.Tensor):
            size = value.numel() * value.element_size()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            size = len(value)
        else:
            size = 0
            if isinstance(value, dict):
                children = [(f"{where}[{k!r}]", v) for k, v in value.items()]
            elif isinstance(value, (list, tuple, set, frozenset)):
                children = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            else:
                children = [(f"{where}.{k}", v) for k, v in getattr(value, "__dict__", {}).items()]
            stack += [(name, child, depth + 1) for name, child in children]
        if size > limit:
            found.append(f"{where}: {type(value).__name__} of {size} bytes")
    return found


def test_large_objects_finds_a_decoded_image():  # the check below can fail
    from dataclasses import dataclass

    @dataclass
    class Held:
        settings: dict

    assert large_objects(Held({"a": [Image.new("RGB", (400, 300))]})) == [
        "prepared.settings['a'][0]: Image of 360000 bytes"]
    assert large_objects(Held({"a": [Image.new("RGB", (40, 30)), "x" * 10**6]})) == []


def test_a_queued_animate_holds_no_decoded_reference(tmp_path):
    from flash_engine.server import JobKind, Engine, prepare_animate
    from tests.support.service_loop import LoopHarness

    image = tmp_path / "big.png"
    Image.new("RGB", (2000, 1500), (90, 120, 200)).save(image)
    gate = threading.Event()

    def blocker(engine, prepared, context):
        context.progress("unet", 0, 1)
        gate.wait(30)
        return {}

    harness = LoopHarness({"train": JobKind(lambda engine, args, report: args, blocker),
                           "animate": JobKind(prepare_animate, lambda engine, prepared, context: {"ran": True})},
                          engine=Engine({"model": "tiny", "device": "cpu"}))
    try:
        harness.send("train", "blocker")
        harness.until(lambda e: e["type"] == "progress", timeout=30)
        harness.send("animate", "a1", {"image": str(image), "out": str(tmp_path / "take"), "prompt": "a person.",
                                       "frames": 2, "steps": 1, "width": 64, "height": 48})
        assert harness.until(lambda e: e.get("request") == "a1", timeout=120)["type"] == "accepted"
        (queued,) = harness.server.queue
        assert large_objects(queued.prepared) == []
    finally:
        gate.set()
    assert harness.until(lambda e: e.get("job") == "a1" and e["type"] in P.TERMINAL_EVENTS)["data"] == {"ran": True}
    assert queued.prepared is None  # a finished job drops what it held
    harness.close()


def test_hello_reports_the_default_models_limits():
    from flash_engine.models.loading import model_limits
    from flash_engine.server import Engine

    assert Engine({"model": "tiny"}).hello()["model_limits"] == model_limits("tiny")
    assert Engine({"model": "mannequin"}).hello()["model_limits"]["width"] == 64
    assert Engine({"model": "/nowhere/weights"}).hello()["model_limits"] is None  # said, not fatal


def test_hello_reports_the_default_models_own_actions(tmp_path):
    from flash_engine.models.loading import model_card_actions
    from flash_engine.server import Engine

    reported = Engine({"model": "mannequin"}).hello()["model_actions"]
    assert reported == model_card_actions("mannequin").to_report()
    assert {"id": "arm_wave", "prompt": "a person is waving an arm."} in reported["learned"]
    assert Engine({"model": "tiny"}).hello()["model_actions"] is None
    (tmp_path / "mannequin.json").write_text('{"train_actions": "broken"}')
    assert Engine({"model": str(tmp_path)}).hello()["model_actions"] is None  # said in the log, not fatal
