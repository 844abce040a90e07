"""A stand-in for ``flash_engine.client.EngineClient``'s polling API, driven by the add-on tests:
they push events and job states; it records what the add-on asked of it."""

from __future__ import annotations

import time

from flash_engine.client import EngineDeath, EngineDied, EngineError, JobState


class FakeClient:
    def __init__(self, config=None, model_limits: dict | None = None, model_actions: dict | None = None):
        self.config, self.alive, self.pid, self.death = config, False, 4242, None
        # what the engine's hello says; model_limits and model_actions as the service reports
        # its default model's (model_actions: its card's, ``model_actions.ModelActions.to_report``)
        self.hello_info = {"device": "cpu", **({"model_limits": model_limits} if model_limits else {}),
                           "model_actions": model_actions}
        self.jobs: dict[str, JobState] = {}
        self.events: list[dict] = []
        self.submitted, self.cancelled, self.closed = [], [], 0
        self.start_delay, self.start_error = 0.0, None

    def start(self, timeout=None):
        time.sleep(self.start_delay)
        if self.start_error:
            raise self.start_error
        self.alive = True

    def submit(self, kind, args):
        job_id = f"c{len(self.jobs) + 1}"
        self.jobs[job_id] = JobState(id=job_id, type=kind)
        self.submitted.append((kind, args))
        return job_id

    def poll_events(self, timeout=0.0):
        events, self.events = self.events, []
        return events

    def job(self, job_id):
        return self.jobs[job_id]

    def cancel(self, job_id, timeout=None):
        self.cancelled.append(job_id)
        state = self.jobs[job_id]
        state.state, state.error = "cancelled", EngineError("job cancelled", code="cancelled")

    def close(self, timeout=None):
        self.closed += 1
        self.alive = False

    def kill(self):
        self.alive = False

    def die(self):
        """As if the engine process were killed: every unfinished job fails with the death."""
        self.alive = False
        self.death = EngineDeath(-9, "SIGKILL", ("loading",), expected=False)
        for state in self.jobs.values():
            if not state.finished:
                state.state, state.error = "failed", EngineDied(self.death, job=state.id)
