"""The service loop driven in-process: a Server on a pipe (its stdin) and an in-memory stdout
whose lines come out as parsed events; fake job kinds stand in where a real job is not the point."""

import os
import queue
import threading
import time

from flash_engine import protocol as P
from flash_engine.server import JobKind, Server


class FakeEngine:
    def __init__(self):
        self.loads, self.freed, self.released = 0, 0, 0

    def hello(self):
        return {"protocol": P.PROTOCOL_VERSION, "device": "fake"}

    def model_status(self):
        return {"loads": self.loads, "model": None, "device": "fake"}

    def release(self):
        self.released += 1
        return {"released": True, "loads": self.loads}

    def free_memory(self):
        self.freed += 1


class EventSink:
    """A binary stdout whose lines come out as parsed events."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self._buffer = b""

    def write(self, data: bytes) -> int:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.events.put(P.parse_event(line))
        return len(data)

    def flush(self):
        pass


class LoopHarness:
    def __init__(self, kinds, sink=None, engine=None):
        read_fd, self._write_fd = os.pipe()
        self.sink, self.engine = sink or EventSink(), engine or FakeEngine()
        self.server = Server(os.fdopen(read_fd, "rb"), self.sink, self.engine, kinds=kinds, max_line_bytes=1000,
                             exit_grace_s=2)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def send(self, type, id, args=None):
        os.write(self._write_fd, P.encode(P.make_request(type, id, args)))

    def send_raw(self, data: bytes):
        """Write on a thread of its own: a dead reading loop must fail the test, not block it on a full pipe."""
        threading.Thread(target=os.write, args=(self._write_fd, data), daemon=True).start()

    def next_event(self, timeout=10):
        return self.sink.events.get(timeout=timeout)

    def until(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.01, deadline - time.monotonic()))
            if predicate(event):
                return event

    def close(self):
        os.close(self._write_fd)
        self.thread.join(10)
        assert not self.thread.is_alive()


def fake_kind(run):
    return JobKind(prepare=lambda engine, args, report: args, run=run)
