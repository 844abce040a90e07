"""The child-process follower that the engine setup and the weights download share."""

import sys
import time

from flash_blender.process_run import ProcessRun


class Lines(ProcessRun):
    def __init__(self, command, fail_on=None):
        self.seen, self.fail_on = [], fail_on
        super().__init__(command)

    def on_line(self, line):
        if line == self.fail_on:
            raise ValueError(f"cannot read {line!r}")
        self.seen.append(line)


def wait_finished(run, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not run.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    return run.finished


def test_lines_arrive_and_the_exit_code_is_kept():
    run = Lines([sys.executable, "-c", "print('a'); print('b'); raise SystemExit(3)"])
    assert wait_finished(run) and run.returncode == 3 and run.seen == ["a", "b"]


def test_a_line_it_cannot_read_ends_the_run_instead_of_hanging_it():
    run = Lines([sys.executable, "-c", "import time; print('ok'); print('bad', flush=True); time.sleep(60)"],
                fail_on="bad")
    assert wait_finished(run), "the run still looks like it is running"
    assert run.returncode != 0 and "cannot read 'bad'" in run.error and run.seen == ["ok"]


def test_a_command_that_cannot_start_is_finished_with_its_reason():
    run = Lines(["/nowhere/python"])
    assert run.finished and run.returncode == 127 and "cannot run /nowhere/python" in run.error
