"""Several engines on one machine (``flash_batch.py --devices``), with plain pytest: the
device list's parsing and resolution, the CUDA probe, and the queue that shares the shots
between engines, driven with the real EngineManager and AnimateJob over fake engines."""

from __future__ import annotations

import os
import sys
import time

import pytest

from flash_blender import batch
from flash_blender.batch import BatchError, Shot, ShotResult
from flash_blender.engine import EngineConfig, EngineManager
from flash_blender.errors import PlanError
from flash_blender.progress import AnimateJob
from flash_blender.shot_queue import Engine, ShotJob, run_shots
from flash_engine.client import EngineError, cuda_device_count
from tests.support.fake_client import FakeClient


# ---------------------------------------------------------------------------------------
# --devices: parsing


def test_a_device_list_parses_into_its_devices():
    assert batch.parse_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert batch.parse_devices(" cuda:1 , CUDA:0 ") == ["cuda:1", "cuda:0"]
    assert batch.parse_devices("auto") == ["auto"]
    assert batch.parse_devices("cuda") == ["cuda:0"]  # the first GPU, as torch takes it
    assert batch.parse_devices("cpu,cpu") == ["cpu", "cpu"]  # the host runs several engines
    assert batch.parse_devices("mps") == ["mps"]
    assert batch.parse_args(["--devices", "cuda:0,cuda:1"]).devices == ["cuda:0", "cuda:1"]
    assert batch.parse_args([]).devices == []  # one engine, on the preferences' device


@pytest.mark.parametrize("text, message", [
    ("cuda:1,cuda:1", "--devices names cuda:1 twice (one engine per GPU: drop the repeat; only cpu may repeat)"),
    ("cuda,cuda:0", "--devices names cuda:0 twice (one engine per GPU: drop the repeat; only cpu may repeat)"),
    ("gpu0", "--devices: unknown device 'gpu0' (pass auto, or a comma-separated list of cpu, mps, cuda or cuda:N)"),
    ("cuda:x", "--devices: unknown device 'cuda:x' (pass auto, or a comma-separated list of cpu, mps, cuda or "
               "cuda:N)"),
    ("auto,cuda:2", "--devices auto stands alone (pass auto, or a list such as cuda:0,cuda:1)"),
    (" , ", "--devices names no device (pass auto, or a comma-separated list of cpu, mps, cuda or cuda:N)"),
])
def test_a_bad_device_list_is_refused_in_one_line_with_the_fix(text, message):
    with pytest.raises(BatchError) as caught:
        batch.parse_devices(text)
    assert str(caught.value) == message


def test_a_bad_device_list_stops_the_script_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as stop:
        batch.parse_args(["--devices", "cuda:1,cuda:1"])
    assert stop.value.code == batch.EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --devices names cuda:1 twice (one engine per GPU: drop the repeat; only cpu may repeat)")


# ---------------------------------------------------------------------------------------
# --devices: which engines run


def test_the_engines_a_batch_runs():
    plan = batch.engine_devices
    assert plan([], 3, "auto").devices == ["auto"]  # no --devices: one engine, as before
    assert plan([], 3, "cpu").note == ""
    assert plan(["auto"], 3, "auto", cuda_count=2).devices == ["cuda:0", "cuda:1"]
    assert plan(["cuda:1", "cuda:0"], 5, "auto", cuda_count=2).devices == ["cuda:1", "cuda:0"]
    assert plan(["cpu", "cpu"], 2, "auto").devices == ["cpu", "cpu"]
    fewer = plan(["auto"], 2, "auto", cuda_count=4)  # more devices than shots: one engine a shot
    assert fewer.devices == ["cuda:0", "cuda:1"]
    assert fewer.note == "4 devices for 2 shots: 2 engines"
    assert plan(["cpu", "cpu", "cpu"], 1, "auto").devices == ["cpu"]
    assert plan(["cpu", "cpu"], 0, "auto").devices == ["cpu"]  # no shot to run: none starts anyway
    none = plan(["auto"], 3, "cpu", cuda_count=0)  # no CUDA here: one engine on the default device
    assert none.devices == ["cpu"]
    assert none.note == "--devices auto: no CUDA GPU here, so one engine on the preferences' device (cpu)"


def test_cuda_devices_that_are_not_there_are_refused_before_any_engine_starts():
    with pytest.raises(BatchError) as caught:
        batch.engine_devices(["cuda:0", "cuda:2"], 3, "auto", cuda_count=2)
    assert str(caught.value) == ("--devices names cuda:2 but the engine sees 2 CUDA GPUs (use cuda:0 to cuda:1, "
                                 "or --devices auto)")
    with pytest.raises(BatchError) as caught:
        batch.engine_devices(["cuda:0"], 3, "auto", cuda_count=0)
    assert str(caught.value) == ("--devices names cuda:0 but the engine sees no CUDA GPU (pass --devices cpu, "
                                 "or install the CUDA build of torch in the engine's environment)")
    assert batch.needs_cuda_count(["auto"]) and batch.needs_cuda_count(["cpu", "cuda:1"])
    assert not batch.needs_cuda_count(["cpu", "cpu"]) and not batch.needs_cuda_count([])


def test_the_cuda_probe_asks_the_engines_own_torch(tmp_path):
    assert cuda_device_count(sys.executable) == 0  # this machine's torch is the CPU build
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    os.chmod(broken, 0o755)
    with pytest.raises(EngineError) as caught:
        cuda_device_count(str(broken))
    assert str(caught.value) == ("cannot ask the engine how many CUDA GPUs it sees: ModuleNotFoundError: No module "
                                 "named torch (check the engine's Python in the add-on's preferences, or set up the "
                                 "engine)")


# ---------------------------------------------------------------------------------------
# The queue: fake engines whose jobs end as each shot's script says


class ScriptedClient(FakeClient):
    """An engine whose jobs run for a number of polls, then end as ``script[camera]`` says:
    ``("ok"|"fail"|"die", polls)``."""

    def __init__(self, config, script: dict, log: list):
        super().__init__(config)
        self.script, self.log, self.polls = script, log, {}

    def submit(self, kind, args):
        job_id = super().submit(kind, args)
        self.polls[job_id] = 0
        self.log.append((args["camera"], self.config.serve_args))
        return job_id

    def poll_events(self, timeout=0.0):
        for job_id, state in list(self.jobs.items()):
            if state.finished:
                continue
            self.polls[job_id] += 1
            camera = self.submitted[int(job_id[1:]) - 1][1]["camera"]
            outcome, polls = self.script.get(camera, ("ok", 2))
            if self.polls[job_id] < polls:
                state.state = "running"
            elif outcome == "ok":
                state.state, state.result = "done", {"frames": ["f1.png", "f2.png"]}
            elif outcome == "fail":
                state.state, state.error = "failed", EngineError("the clip is too long", "use fewer frames",
                                                                 code="bad_request")
            else:
                self.die()
        return super().poll_events()


class Farm:
    """Engines over ScriptedClients, and what the queue asked of them."""

    def __init__(self, devices, script=None, broken=()):
        self.submitted: list = []  # (camera, serve args) in submission order
        self.started: list = []  # (camera, engine number, its engine ready) as start() was called
        self.finished: list = []  # cameras, in the order their takes were finished (imported)
        self.lines: list = []
        self.results: list = []
        script = script or {}

        def factory_for(number):
            def factory(config):
                client = ScriptedClient(config, script, self.submitted)
                if number in broken:
                    client.start_error = EngineError(f"no CUDA device 'cuda:{number + 4}': this machine has 2",
                                                     "use --device cuda", code="bad_device")
                return client
            return factory

        self.engines = [Engine(device, EngineManager(client_factory=factory_for(number)),
                               EngineConfig(python="py", serve_args=("--device", device)), number=number,
                               several=len(devices) > 1)
                        for number, device in enumerate(devices, start=1)]

    def start(self, shot: Shot, engine: Engine):
        if shot.camera == "Gone":
            raise PlanError("camera 'Gone' is gone", "check the scene")
        if shot.camera == "Broken":
            raise RuntimeError("the reference render crashed")
        self.started.append((shot.camera, engine.number, engine.manager.ready() is not None))
        job = AnimateJob(engine.manager, engine.config, {"camera": shot.camera})

        def finish() -> ShotResult:
            self.finished.append(shot.camera)
            if job.state == "done":
                return ShotResult(shot, True, take=f"take_{shot.camera}", frames=len(job.result["frames"]))
            return ShotResult(shot, False, reason=job.error_line)

        return ShotJob(advance=job.tick, finish=finish, stop=lambda: job.abandon("stopped"))

    def run(self, cameras):
        shots = [Shot("S", camera, error="no camera named 'Nope'" if camera == "Nope" else "") for camera in cameras]
        try:
            return run_shots(shots, self.engines, self.start, on_result=self.results.append, report=self.lines.append,
                             interval=0.001)
        finally:
            for engine in self.engines:
                engine.manager.shutdown()

    def ran_on(self, device_number: int) -> list[str]:
        device = self.engines[device_number - 1].config.serve_args
        return [camera for camera, args in self.submitted if args == device]


def outcomes(results):
    return [(r.shot.camera, r.ok, r.reason) for r in results]


def test_shots_are_shared_between_engines_and_come_back_in_shot_order():
    farm = Farm(["cuda:0", "cuda:1"], script={"A": ("ok", 40)})  # A is slow: the other engine does the rest
    results = farm.run(["A", "B", "C", "D", "E"])
    assert outcomes(results) == [(c, True, "") for c in "ABCDE"]
    assert farm.results == results  # reported as they are finished, in shot order
    assert farm.finished == list("ABCDE")  # takes imported in shot order, whichever engine was first
    assert sorted(camera for camera, _ in farm.submitted) == list("ABCDE")  # each shot ran once
    assert farm.ran_on(1) and farm.ran_on(2)
    slow = 1 if "A" in farm.ran_on(1) else 2
    assert farm.ran_on(slow) == ["A"] and farm.ran_on(3 - slow) == list("BCDE")
    assert [engine.manager.starts for engine in farm.engines] == [1, 1]  # each engine warm for its shots
    assert all(ready for _, _, ready in farm.started)  # a shot is planned on an engine that said hello


def test_more_engines_than_shots_start_only_as_many_engines():
    farm = Farm(["cpu", "cpu", "cpu"])
    results = farm.run(["A", "B"])
    assert outcomes(results) == [("A", True, ""), ("B", True, "")]
    assert [engine.manager.starts for engine in farm.engines] == [1, 1, 0]


def test_shots_that_cannot_run_need_no_engine_and_keep_their_place():
    farm = Farm(["cpu", "cpu"])
    results = farm.run(["Nope", "A", "Nope"])
    assert outcomes(results) == [("Nope", False, "no camera named 'Nope'"), ("A", True, ""),
                                 ("Nope", False, "no camera named 'Nope'")]
    assert [engine.manager.starts for engine in farm.engines] == [1, 0]
    nothing = Farm(["cpu", "cpu"])
    assert [r.ok for r in nothing.run(["Nope"])] == [False]
    assert [engine.manager.starts for engine in nothing.engines] == [0, 0]


def test_a_failed_shot_fails_only_itself():
    farm = Farm(["cpu", "cpu"], script={"B": ("fail", 3)})
    results = farm.run(["A", "B", "C", "D", "Gone", "Broken", "E"])
    assert outcomes(results) == [
        ("A", True, ""), ("B", False, "the clip is too long (use fewer frames)"), ("C", True, ""), ("D", True, ""),
        ("Gone", False, "camera 'Gone' is gone (check the scene)"), ("Broken", False, "the reference render crashed"),
        ("E", True, "")]
    engine_of_b = 1 if "B" in farm.ran_on(1) else 2
    assert farm.ran_on(engine_of_b)[-1] != "B"  # it went on with the next shots
    assert [engine.manager.starts for engine in farm.engines] == [1, 1]
    assert batch.exit_code(results) == batch.EXIT_FAILED


def test_a_job_whose_poll_breaks_fails_its_shot_and_is_tidied_up():
    farm = Farm(["cpu", "cpu"])
    tidied, real = [], farm.start

    def start(shot, engine):
        if shot.camera != "B":
            return real(shot, engine)

        def broken():
            raise RuntimeError("the job's poll broke")

        return ShotJob(advance=broken, finish=lambda: tidied.append("B") or ShotResult(shot, True))

    farm.start = start
    results = farm.run(["A", "B", "C"])
    assert outcomes(results) == [("A", True, ""), ("B", False, "the job's poll broke"), ("C", True, "")]
    assert tidied == ["B"]


def test_an_engine_that_dies_fails_its_shot_and_the_others_finish_the_rest():
    farm = Farm(["cuda:0", "cuda:1"], script={"B": ("die", 3)})
    results = farm.run(["A", "B", "C", "D", "E"])
    dead = 1 if "B" in farm.ran_on(1) else 2
    assert [r.ok for r in results] == [True, False, True, True, True]
    assert results[1].reason.startswith(f"engine {dead} (cuda:{dead - 1}): the engine killed by signal SIGKILL "
                                        "(if nobody killed it"), results[1].reason
    assert farm.ran_on(dead)[-1] == "B"  # it took no shot after its death
    assert sorted(farm.ran_on(3 - dead)) == sorted(set("ACDE") - set(farm.ran_on(dead)))
    assert farm.engines[dead - 1].manager.starts == 1  # not restarted while another engine runs
    assert f"FLASH batch: engine {dead} (cuda:{dead - 1}) stopped; the other engines take the remaining shots" \
        in farm.lines
    assert batch.exit_code(results) == batch.EXIT_FAILED


def test_one_engine_that_dies_restarts_for_the_next_shot_as_before():
    farm = Farm(["cpu"], script={"B": ("die", 3)})
    results = farm.run(["A", "B", "C"])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].reason.startswith("the engine killed by signal SIGKILL")  # no engine named: one runs
    assert farm.engines[0].manager.starts == 2
    assert farm.ran_on(1) == ["A", "B", "C"]


def test_an_engine_that_cannot_start_leaves_its_shots_to_the_others():
    farm = Farm(["cuda:0", "cuda:5"], script={"A": ("ok", 20)}, broken={2})
    results = farm.run(["A", "B", "C"])
    assert outcomes(results) == [(c, True, "") for c in "ABC"]
    assert farm.ran_on(1) == ["A", "B", "C"] and farm.ran_on(2) == []
    assert ("FLASH batch: engine 2 (cuda:5) could not start: no CUDA device 'cuda:6': this machine has 2 (use "
            "--device cuda); the other engines take the remaining shots") in farm.lines


def test_when_no_engine_can_start_every_shot_says_why():
    farm = Farm(["cuda:4", "cuda:5"], broken={1, 2})
    results = farm.run(["A", "B"])
    assert [r.ok for r in results] == [False, False]
    assert all("no CUDA device" in r.reason for r in results), outcomes(results)


def test_an_interrupted_queue_stops_every_running_job(monkeypatch):
    farm = Farm(["cpu", "cpu"], script={"A": ("ok", 10_000), "B": ("ok", 10_000)})
    calls = {"n": 0}

    def sleep(seconds):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        time.sleep(0.001)

    shots = [Shot("S", "A"), Shot("S", "B"), Shot("S", "C")]
    with pytest.raises(KeyboardInterrupt):
        try:
            run_shots(shots, farm.engines, farm.start, report=farm.lines.append, sleep=sleep, interval=0.001)
        finally:
            running = [engine.manager.client for engine in farm.engines]
            for engine in farm.engines:
                engine.manager.shutdown()
    assert sorted(camera for camera, _ in farm.submitted) == ["A", "B"]
    assert all(client.cancelled for client in running)  # both jobs asked to stop
    assert sorted(farm.finished) == ["A", "B"]  # and finished (a cancelled take leaves nothing)
