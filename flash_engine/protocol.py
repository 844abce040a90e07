"""The engine service's wire format: newline-delimited JSON over the engine's stdin/stdout.

Standard library only: the Blender add-on imports this (through ``client``), and so does
the server, so both sides build and check messages with the same code. The spec, with
examples, is ``docs/protocol.md``; this module is the executable half of it.

Requests (client → engine), one JSON object per line::

    {"v": 1, "id": "r7", "type": "animate", "args": {...}}

Events (engine → client)::

    {"v": 1, "type": "progress", "job": "r7", "request": "r7", "phase": "denoise", ...}
"""

from __future__ import annotations

import itertools
import json
import math
import re

from flash_engine.errors import FlashError

PROTOCOL_VERSION = 1

# Requests are small (paths and numbers). The bound keeps one bad line from eating the
# engine's memory: the server reads at most this many bytes per line.
MAX_LINE_BYTES = 1 << 20

# Messages nest a few levels (args.options, result.data.metadata.settings). A bound far below
# Python's recursion limit means no line can make the decoder, or a check that walks the
# message, run out of stack.
MAX_NESTING = 64

# Requests that start a job: they are queued, run one at a time, and their id is the job id.
JOB_REQUESTS = ("animate", "train")
# Requests answered at once by the reading thread, even while a job runs.
CONTROL_REQUESTS = ("hello", "cancel", "status", "release", "shutdown")
REQUEST_TYPES = JOB_REQUESTS + CONTROL_REQUESTS

EVENT_TYPES = ("accepted", "progress", "log", "result", "error")
# Every accepted job ends with exactly one of these, carrying its job id.
TERMINAL_EVENTS = ("result", "error")

# Error codes a client can act on. FlashError codes from the engine (bad_size, output_exists,
# weights_missing, ...) pass through unchanged; these are the protocol's own.
BAD_JSON = "bad_json"                 # the line is not a JSON object
LINE_TOO_LONG = "line_too_long"       # the line is longer than MAX_LINE_BYTES
VERSION_MISMATCH = "version_mismatch"  # "v" is missing or not PROTOCOL_VERSION
UNKNOWN_REQUEST = "unknown_request"   # "type" is not one of REQUEST_TYPES
BAD_REQUEST = "bad_request"           # the envelope is wrong (id, args)
BAD_ARGUMENT = "bad_argument"         # the args are wrong for the request type
UNKNOWN_JOB = "unknown_job"           # cancel of a job that is neither running nor queued
CANCELLED = "cancelled"               # the job was cancelled (by cancel, shutdown or stdin closing)
OUT_OF_MEMORY = "out_of_memory"       # the device ran out of memory; the service carries on
UNAVAILABLE = "unavailable"           # this engine cannot do that request type (yet)
ENVIRONMENT = "environment"           # the engine's Python lacks a requirement (torch, diffusers, ...)
INTERNAL = "internal"                 # an unexpected exception; the traceback is on the engine's stderr
ENGINE_DIED = "engine_died"           # client side only: the engine process is gone

OUT_OF_MEMORY_HINT = "try fewer frames, a lower resolution, or enable offload"


class ProtocolError(FlashError):
    """A message that breaks the protocol; ``code`` is one of the codes above."""

    def __init__(self, message: str, hint: str = "", code: str = BAD_REQUEST, request_id: str | None = None):
        super().__init__(message, hint, code=code)
        self.request_id = request_id


def encode(message: dict) -> bytes:
    """One message as one line of strict JSON. ``ensure_ascii`` keeps the line free of raw
    newlines and odd bytes whatever the paths contain. JSON has no NaN or Infinity: a number
    that is not finite (a loss that diverged, an estimate not yet known) goes out as null."""
    return json.dumps(_finite_or_null(message), ensure_ascii=True, separators=(",", ":"),
                      allow_nan=False).encode("ascii") + b"\n"


def _finite_or_null(value, depth: int = 0):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > MAX_NESTING:  # json.dumps refuses it (ValueError) rather than recursing on
        return value
    if isinstance(value, dict):
        return {key: _finite_or_null(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item, depth + 1) for item in value]
    return value


# A JSON string literal (or one left open to the end of the line: its brackets are text too),
# and runs of characters that neither open nor close a level. Possessive, so an endless run of
# escaped quotes is one linear pass, not a backtracking search.
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_LEVEL_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _too_deep(text: str) -> bool:
    """Whether ``text`` nests arrays/objects deeper than MAX_NESTING (brackets in strings are
    text). The scan runs in C (regex, map, accumulate): a 1 MiB line of brackets takes ~0.1 s."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING_LITERAL.sub("", text))
    return max(itertools.accumulate(map(_LEVEL_STEP.__getitem__, brackets)), default=0) > MAX_NESTING


def _decode_object(line: bytes | str) -> dict:
    """The line's JSON object. Every way a line can be wrong is a ProtocolError (bad_json):
    whatever arrives, the caller never sees another exception."""
    hint = "send one JSON object per line"
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("line is not UTF-8 text", hint, code=BAD_JSON) from None
    if _too_deep(line):
        raise ProtocolError(f"line nests arrays or objects more than {MAX_NESTING} levels deep", hint,
                            code=BAD_JSON)
    try:
        message = json.loads(line)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"line is not JSON ({err.msg} at column {err.colno})", hint, code=BAD_JSON) from None
    except (ValueError, RecursionError, MemoryError) as err:  # e.g. an integer of more digits than int() takes
        raise ProtocolError(f"line is not usable JSON ({one_line(err, 120)})", hint, code=BAD_JSON) from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, not {type(message).__name__}", hint,
                            code=BAD_JSON)
    return message


def non_finite_number(value, path: str = "") -> str | None:
    """The path (``options.rate[1]``) of the first NaN or infinite number in ``value``, or None.

    Python's json reads ``NaN``, ``Infinity`` and ``1e999`` as floats; no request means them."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "value"
        if isinstance(item, dict):
            stack.extend((f"{where}.{key}" if where else str(key), sub) for key, sub in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", sub) for i, sub in reversed(list(enumerate(item))))
    return None


def _check_finite(args: dict, request_id: str | None = None) -> None:
    where = non_finite_number(args)
    if where is not None:
        raise ProtocolError(f"argument '{where}' must be a finite number (not NaN or infinite)",
                            f"send a finite number for '{where}'", code=BAD_ARGUMENT, request_id=request_id)


def is_protocol_version(value) -> bool:
    """Only the integer 1 is version 1 (``true == 1`` and ``1.0 == 1`` in Python)."""
    return type(value) is int and value == PROTOCOL_VERSION


# ---------------------------------------------------------------------------------------
# Requests


def make_request(type: str, request_id: str, args: dict | None = None) -> dict:
    """A request; raises ProtocolError (bad_argument) for a NaN or infinite number in ``args``,
    which the engine would refuse anyway."""
    _check_finite(args or {}, request_id)
    return {"v": PROTOCOL_VERSION, "id": request_id, "type": type, "args": args or {}}


def parse_request(line: bytes | str) -> dict:
    """Check one request line; returns ``{"v", "id", "type", "args"}`` or raises ProtocolError.

    The error carries the request id when the line got far enough to have one, so the
    client can match the error to what it sent.
    """
    if len(line.rstrip(b"\r\n" if isinstance(line, bytes) else "\r\n")) > MAX_LINE_BYTES:
        raise ProtocolError(f"request line longer than {MAX_LINE_BYTES} bytes",
                            "send smaller requests (paths, not data)", code=LINE_TOO_LONG)
    message = _decode_object(line)
    request_id = message.get("id")
    if request_id is not None and not (isinstance(request_id, str) and 0 < len(request_id) <= 200):
        raise ProtocolError("request 'id' must be a non-empty string of at most 200 characters",
                            'e.g. "id": "r1"', code=BAD_REQUEST)
    version = message.get("v")
    if not is_protocol_version(version):
        raise ProtocolError(f"protocol version {version!r} is not supported; this engine speaks {PROTOCOL_VERSION}",
                            "update the add-on and the engine together", code=VERSION_MISMATCH,
                            request_id=request_id)
    request_type = message.get("type")
    if request_type not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type {request_type!r}", f"use one of: {', '.join(REQUEST_TYPES)}",
                            code=UNKNOWN_REQUEST, request_id=request_id)
    args = message.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("request 'args' must be a JSON object", 'e.g. "args": {}', code=BAD_REQUEST,
                            request_id=request_id)
    unknown = sorted(set(message) - {"v", "id", "type", "args"})
    if unknown:
        raise ProtocolError(f"unknown request field(s): {', '.join(unknown)}", "use v, id, type and args",
                            code=BAD_REQUEST, request_id=request_id)
    _check_finite(args, request_id)
    return {"v": version, "id": request_id, "type": request_type, "args": args}


# ---------------------------------------------------------------------------------------
# Events


def _event(type: str, request: str | None, job: str | None, **fields) -> dict:
    event = {"v": PROTOCOL_VERSION, "type": type}
    if request is not None:
        event["request"] = request
    if job is not None:
        event["job"] = job
    event.update(fields)
    return event


def accepted_event(request: str, job: str, job_type: str, queue_position: int) -> dict:
    """``queue_position`` is how many jobs run or wait ahead of this one (0: it starts now)."""
    return _event("accepted", request, job, job_type=job_type, queue_position=queue_position)


def progress_event(job: str, phase: str, step: int, total: int, eta_s: float | None,
                   request: str | None = None, **extra) -> dict:
    """``extra``: numbers a job adds to its steps (training: ``loss``, ``it_per_s``)."""
    return _event("progress", request, job, phase=phase, step=step, total=total,
                  eta_s=None if eta_s is None else round(eta_s, 2), **extra)


def log_event(message: str, level: str = "info", job: str | None = None, request: str | None = None) -> dict:
    return _event("log", request, job, level=level, message=message)


def result_event(request: str | None, data: dict, job: str | None = None) -> dict:
    return _event("result", request, job, data=data)


def error_event(code: str, message: str, hint: str = "", request: str | None = None,
                job: str | None = None) -> dict:
    # One line each: the add-on shows the message in a status bar and the hint below it.
    return _event("error", request, job, code=code, message=one_line(message), hint=one_line(hint))


def error_from(err: FlashError, request: str | None = None, job: str | None = None) -> dict:
    return error_event(err.code, err.message, err.hint, request=request, job=job)


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_REQUIRED_EVENT_FIELDS = {
    "accepted": ("request", "job", "job_type", "queue_position"),
    "progress": ("job", "phase", "step", "total", "eta_s"),
    "log": ("level", "message"),
    "result": ("data",),
    "error": ("code", "message", "hint"),
}


def parse_event(line: bytes | str) -> dict:
    """Check one event line from the engine; raises ProtocolError when it is not a valid event."""
    event = _decode_object(line)
    if not is_protocol_version(event.get("v")):
        raise ProtocolError(f"event of protocol version {event.get('v')!r}; this client speaks {PROTOCOL_VERSION}",
                            "update the add-on and the engine together", code=VERSION_MISMATCH)
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise ProtocolError(f"unknown event type {kind!r}", "update the add-on", code=BAD_JSON)
    missing = [name for name in _REQUIRED_EVENT_FIELDS[kind] if name not in event]
    if missing:
        raise ProtocolError(f"{kind} event without {', '.join(missing)}", "update the add-on", code=BAD_JSON)
    return event
