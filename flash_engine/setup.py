"""``python -m flash_engine.setup --env DIR``: the engine's managed Python environment.

Standard library only, so Blender's own Python can run it (the add-on's "Set up engine"
button does). It creates a virtual environment in DIR, installs the pinned requirements
(``flash_engine/requirements.txt``, the list pyproject.toml installs too) with the torch
build that suits the machine, and finishes with a check that imports torch and diffusers
and reports the device.

- Torch build: CUDA when ``nvidia-smi`` reports a driver (the newest PyTorch CUDA build the
  driver can run), the CPU build otherwise; on macOS the default PyPI wheels (MPS on Apple
  silicon). ``--torch-index URL|none|auto`` or ``$FLASH_TORCH_INDEX`` overrides the choice;
  ``none`` installs torch like any other requirement, from pip's own configuration.
- Idempotent: the ready stamp (``DIR/flash-env.json``) records the requirements' hash and
  the torch index; a run that finds them unchanged only repeats the final check.
- Never half-ready: the stamp is removed before anything changes and written only after the
  check passed. A failed run leaves ``DIR/flash-env-failed.json`` (the step, the command,
  the last lines of its output) and no stamp.

Users with their own environment point the add-on at its Python; ``check_interpreter``
tells whether it has what the engine needs.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flash_engine.errors import FlashError

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
READY_STAMP = "flash-env.json"
FAILED_REPORT = "flash-env-failed.json"
TORCH_INDEX_ENV = "FLASH_TORCH_INDEX"
PYTORCH_INDEX = "https://download.pytorch.org/whl"
MIN_PYTHON = (3, 11)

# CUDA builds PyTorch publishes per torch release, oldest first (pytorch.org "Get started").
# A release not listed uses DEFAULT_CUDA_BUILDS; --torch-index overrides when these drift.
TORCH_CUDA_BUILDS: dict[str, tuple[tuple[int, int], ...]] = {
    "2.13": ((12, 6), (12, 8), (13, 0)),
}
DEFAULT_CUDA_BUILDS: tuple[tuple[int, int], ...] = ((12, 6), (12, 8), (13, 0))


class SetupError(FlashError):
    def __init__(self, message: str, hint: str = "", code: str = "setup_failed", report: dict | None = None):
        super().__init__(message, hint, code=code)
        self.report = report or {}


# ---------------------------------------------------------------------------------------
# Choosing the torch build (pure: unit-tested without a GPU)


@dataclass(frozen=True)
class Machine:
    system: str  # platform.system(): Linux, Windows, Darwin
    arch: str  # platform.machine(): x86_64, AMD64, arm64, aarch64
    cuda_driver: tuple[int, int] | None = None  # the CUDA version nvidia-smi reports (what the driver runs)
    gpu: str | None = None


@dataclass(frozen=True)
class TorchChoice:
    index_url: str | None  # None: pip's default index (PyPI or the user's configuration)
    build: str  # cpu, cu128, mps, default, custom
    reason: str


def choose_torch_index(machine: Machine, torch_version: str) -> TorchChoice:
    """The PyTorch wheel index for this machine, and why."""
    if machine.system == "Darwin":
        build = "mps" if machine.arch in ("arm64", "aarch64") else "cpu"
        return TorchChoice(None, build, "macOS: the default PyPI wheels" + (" (Metal/MPS)" if build == "mps" else ""))
    release = ".".join(torch_version.split("+")[0].split(".")[:2])
    builds = TORCH_CUDA_BUILDS.get(release, DEFAULT_CUDA_BUILDS)
    if machine.cuda_driver is not None:
        runnable = [build for build in builds if build <= machine.cuda_driver]
        if runnable:
            major, minor = runnable[-1]
            gpu = f"{machine.gpu}, " if machine.gpu else ""
            return TorchChoice(f"{PYTORCH_INDEX}/cu{major}{minor}", f"cu{major}{minor}",
                               f"NVIDIA GPU ({gpu}driver CUDA {machine.cuda_driver[0]}.{machine.cuda_driver[1]})")
        oldest = f"{builds[0][0]}.{builds[0][1]}"
        reason = (f"the NVIDIA driver runs CUDA {machine.cuda_driver[0]}.{machine.cuda_driver[1]}, older than "
                  f"torch {release}'s oldest CUDA build ({oldest}): CPU build; update the driver to use the GPU")
    else:
        reason = "no NVIDIA GPU found (nvidia-smi): CPU build"
    if machine.system == "Windows":  # PyPI's Windows wheels are the CPU build already
        return TorchChoice(None, "cpu", reason)
    return TorchChoice(f"{PYTORCH_INDEX}/cpu", "cpu", reason)  # PyPI's Linux wheel would pull CUDA libraries


def parse_cuda_version(nvidia_smi_output: str) -> tuple[int, int] | None:
    """The "CUDA Version: 12.8" of nvidia-smi's banner."""
    match = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", nvidia_smi_output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def detect_machine() -> Machine:
    driver, gpu = None, None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            banner = subprocess.run([smi], capture_output=True, text=True, timeout=20)
            driver = parse_cuda_version(banner.stdout) if banner.returncode == 0 else None
            names = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=20)
            gpu = (names.stdout.strip().splitlines() or [None])[0] if names.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    return Machine(platform.system(), platform.machine(), driver, gpu)


def resolve_torch_index(option: str | None, machine: Machine | None, torch_version: str) -> TorchChoice | None:
    """--torch-index, else $FLASH_TORCH_INDEX, else auto. None: install torch with the rest."""
    choice = option or os.environ.get(TORCH_INDEX_ENV) or "auto"
    if choice.lower() == "none":
        return None
    if choice.lower() != "auto":
        return TorchChoice(choice, "custom", "--torch-index / $FLASH_TORCH_INDEX")
    return choose_torch_index(machine or detect_machine(), torch_version)


# ---------------------------------------------------------------------------------------
# Requirements, the environment's files


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def pinned_torch(requirements: list[str]) -> str:
    spec = next((r for r in requirements if re.match(r"torch\s*[=<>!~]", r) or r == "torch"), None)
    if spec is None:
        raise SetupError("the requirements do not list torch", "add torch==VERSION to requirements.txt")
    return spec.replace(" ", "")


def env_python(env_dir: Path) -> Path:
    return Path(env_dir) / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def clean_environment() -> dict:
    """The parent's environment without what would mix another Python into the child's
    (Blender sets or users add these: PYTHONHOME, PYTHONPATH)."""
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)  # a stamp is whole or absent


def env_status(env_dir: str | os.PathLike) -> dict:
    """What the add-on shows: {ready, python, stamp, failed, reason}."""
    env_dir = Path(env_dir).expanduser()
    python = env_python(env_dir)
    stamp, failed = _read_json(env_dir / READY_STAMP), _read_json(env_dir / FAILED_REPORT)
    ready = stamp is not None and python.exists()
    if ready:
        reason = "ready"
    elif failed:
        reason = f"the last setup failed at {failed.get('step')}: {failed.get('error')}"
    elif env_dir.is_dir() and any(env_dir.iterdir()):  # an empty folder (older add-ons made one) is "not set up"
        reason = "set up incompletely (no ready stamp): run the setup again"
    else:
        reason = "not set up"
    return {"ready": ready, "python": str(python), "stamp": stamp, "failed": failed, "reason": reason}


# ---------------------------------------------------------------------------------------
# Checking an interpreter (the managed one, or one the user points at)

CHECK_SCRIPT = r"""
import json, platform, sys
report = {"python": platform.python_version(), "executable": sys.executable, "problems": [], "warnings": []}
try:
    import torch
    report["torch"] = torch.__version__
    report["cuda_build"] = torch.version.cuda
    if torch.cuda.is_available():
        report["device"] = "cuda"
        report["gpu"] = torch.cuda.get_device_name(0)
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        report["device"] = "mps"
    else:
        report["device"] = "cpu"
except Exception as err:
    report["problems"].append("torch does not import: %s: %s" % (type(err).__name__, err))
try:
    import diffusers
    report["diffusers"] = diffusers.__version__
except Exception as err:
    report["problems"].append("diffusers does not import: %s: %s" % (type(err).__name__, err))
from importlib import metadata
for requirement in json.loads(sys.argv[1]):
    name, _, pinned = requirement.partition("==")
    name = name.split("[")[0].split(">")[0].split("<")[0].split("~")[0].split("!")[0].strip()
    try:
        found = metadata.version(name)
    except metadata.PackageNotFoundError:
        report["problems"].append("%s is not installed (needs %s)" % (name, requirement))
        continue
    if pinned and found.split("+")[0] != pinned.strip().split("+")[0]:
        report["warnings"].append("%s %s is installed; the engine is tested with %s" % (name, found, pinned.strip()))
print(json.dumps(report))
"""


def check_interpreter(python: str | os.PathLike, requirements: list[str] | None = None,
                      timeout: float = 300) -> dict:
    """Run ``python`` with a check script: returns {python, torch, diffusers, device, gpu?,
    warnings, ...}, or raises SetupError saying what is missing. A version that differs from
    a pin is a warning, not a failure."""
    python = str(python)
    requirements = read_requirements() if requirements is None else requirements
    if not (Path(python).is_file() or shutil.which(python)):
        raise SetupError(f"no Python at {python}", "choose the python executable of an environment that has the "
                         "engine's requirements, or use the managed environment", code="interpreter_missing")
    try:
        proc = subprocess.run([python, "-c", CHECK_SCRIPT, json.dumps(requirements)], capture_output=True,
                              text=True, errors="replace", timeout=timeout, env=clean_environment())
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SetupError(f"cannot run {python}: {err}", "choose a working Python 3.11 interpreter",
                         code="interpreter_broken") from err
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"{python} could not run the check: {last}", "choose a working Python 3.11 interpreter",
                         code="interpreter_broken") from None
    version = tuple(int(part) for part in report["python"].split(".")[:2])
    if version < MIN_PYTHON:
        report["problems"].insert(0, f"Python {report['python']} is too old (the engine needs "
                                     f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer)")
    report["ok"] = not report["problems"]
    if not report["ok"]:
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise SetupError(f"{python}: {report['problems'][0]}{more}",
                         "install the engine's requirements there (pip install -r flash_engine/requirements.txt) "
                         "or use the managed environment", code="interpreter_incomplete", report=report)
    return report


# ---------------------------------------------------------------------------------------
# Installing


def run_streaming(command: list[str], log: Callable[[str], None], env: dict | None = None) -> tuple[int, list[str]]:
    """Run a command, passing each output line to ``log``; returns (exit code, last lines)."""
    tail: collections.deque = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env)
    except OSError as err:
        return 127, [f"cannot run {command[0]}: {err}"]
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        log(f"    {line}")
    return proc.wait(), list(tail)


class _Steps:
    """Numbered progress lines, and the failure report when a step fails."""

    def __init__(self, env_dir: Path, total: int, log: Callable[[str], None], run, env: dict):
        self.env_dir, self.total, self.log, self.run, self.env = env_dir, total, log, run, env
        self.number = 0

    def announce(self, title: str) -> None:
        self.number += 1
        self.log(f"[{self.number}/{self.total}] {title}")

    def step(self, title: str, command: list[str]) -> None:
        self.announce(title)
        code, tail = self.run(command, self.log, self.env)
        if code != 0:
            self.fail(title, f"exit code {code}", command, tail)

    def fail(self, step: str, error: str, command: list[str] | None = None, tail: list[str] | None = None,
             hint: str = "") -> None:
        report = {"step": step, "error": error, "command": command, "output_tail": tail or [],
                  "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if self.env_dir.is_dir():
            (self.env_dir / READY_STAMP).unlink(missing_ok=True)
            _write_json(self.env_dir / FAILED_REPORT, report)
        last = next((line for line in reversed(tail or []) if line.strip()), "")
        hint = hint or (f"last output: {last.strip()}; " if last else "") + (
            "fix the cause and run the setup again (it resumes); the environment is not marked ready")
        raise SetupError(f"engine setup failed at '{step}': {error}", hint, report=report)


def install(env_dir: str | os.PathLike, *, torch_index: str | None = None, index_url: str | None = None,
            extra_index_urls: tuple[str, ...] | list[str] = (), base_python: str = sys.executable,
            requirements_file: Path | None = None, force: bool = False, machine: Machine | None = None,
            log: Callable[[str], None] = print, run=run_streaming) -> dict:
    """Create or update the environment; returns the ready stamp's data (with the check report).

    ``run(command, log, env) -> (code, tail)`` runs each step (tests pass a fake); ``machine``
    skips GPU detection.
    """
    env_dir = Path(env_dir).expanduser().absolute()
    requirements_file = Path(requirements_file or REQUIREMENTS)
    requirements = read_requirements(requirements_file)
    torch_spec = pinned_torch(requirements)
    torch_version = torch_spec.partition("==")[2] or "unknown"
    choice = resolve_torch_index(torch_index, machine, torch_version)
    digest = hashlib.sha256("\n".join(requirements).encode("utf-8")).hexdigest()
    wanted = {"requirements_sha256": digest, "torch_index": choice.index_url if choice else None}
    python = env_python(env_dir)
    torch_line = (f"torch {torch_version}: {choice.build} build from {choice.index_url or 'the default index'} "
                  f"({choice.reason})" if choice else f"torch {torch_version}: from pip's configured index")
    log(f"FLASH engine environment: {env_dir}")
    log(torch_line)

    stamp = _read_json(env_dir / READY_STAMP)
    if not force and stamp and python.exists() and all(stamp.get(k) == v for k, v in wanted.items()):
        log("already set up for these requirements")
        steps = _Steps(env_dir, 1, log, run, clean_environment())
        check = _final_check(steps, python, requirements)
        _log_ready(log, check)
        return {**stamp, "check": check, "up_to_date": True}

    if env_dir.exists() and any(env_dir.iterdir()) and not (env_dir / "pyvenv.cfg").exists():
        raise SetupError(f"{env_dir} exists and is not a Python environment", "choose an empty or new folder",
                         code="setup_refused")
    # From here on the folder changes: it must not look ready until the check has passed.
    (env_dir / READY_STAMP).unlink(missing_ok=True)
    (env_dir / FAILED_REPORT).unlink(missing_ok=True)

    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", "--no-input",
           "--disable-pip-version-check"]
    index_args = (["--index-url", index_url] if index_url else []) + [
        arg for url in extra_index_urls for arg in ("--extra-index-url", url)]
    steps = _Steps(env_dir, 3 + (choice is not None), log, run, clean_environment())
    if python.exists() and not force:
        steps.announce(f"reusing the environment's Python ({python})")
    else:
        # --clear: a venv whose base Python moved or broke is rebuilt, not patched
        steps.step(f"creating the environment with {base_python}",
                   [base_python, "-m", "venv", "--clear", str(env_dir)])
        if not python.exists():
            steps.fail("creating the environment", f"{python} was not created",
                       hint="check that this Python has the venv module (on Debian: apt install python3-venv)")
    if choice is not None:  # torch first, from its own index: the rest then finds it satisfied
        extra_args = [arg for url in extra_index_urls for arg in ("--extra-index-url", url)]
        torch_sources = ["--index-url", choice.index_url, *extra_args] if choice.index_url else index_args
        steps.step(f"installing {torch_spec} ({choice.build} build)", pip + [torch_spec] + torch_sources)
    steps.step("installing the engine's requirements", pip + ["-r", str(requirements_file)] + index_args)
    check = _final_check(steps, python, requirements)
    ready = {**wanted, "torch_build": choice.build if choice else "pip default", "torch_reason":
             choice.reason if choice else "", "python": str(python),
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "check": check}
    _write_json(env_dir / READY_STAMP, ready)
    _log_ready(log, check)
    return ready


def _log_ready(log: Callable[[str], None], check: dict) -> None:
    gpu = f" ({check['gpu']})" if check.get("gpu") else ""
    log(f"ready: torch {check.get('torch')}, diffusers {check.get('diffusers')}, device {check.get('device')}{gpu}")


def _final_check(steps: _Steps, python: Path, requirements: list[str]) -> dict:
    steps.announce("checking: import torch and diffusers, find the device")
    try:
        report = check_interpreter(python, requirements)
    except SetupError as err:
        steps.fail("the final check", err.message, [str(python), "-c", "<check script>"],
                   tail=[*err.report.get("problems", []), *err.report.get("warnings", [])])
    for warning in report.get("warnings", []):
        steps.log(f"    warning: {warning}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flash_engine.setup", description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="the environment folder to create or update")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that creates the environment (default: this one)")
    parser.add_argument("--torch-index", help="auto (default), none (pip's own index), or a wheel index URL; "
                                              f"also ${TORCH_INDEX_ENV}")
    parser.add_argument("--index-url", help="pip --index-url for the other requirements")
    parser.add_argument("--extra-index-url", action="append", default=[], help="pip --extra-index-url (repeatable)")
    parser.add_argument("--force", action="store_true", help="reinstall even when the stamp says ready")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        result = install(args.env, torch_index=args.torch_index, index_url=args.index_url,
                         extra_index_urls=args.extra_index_url, base_python=args.python, force=args.force, log=log)
    except SetupError as err:
        print(f"error: {err.message}", flush=True)
        if err.hint:
            print(f"  {err.hint}", flush=True)
        if args.json:
            print(json.dumps({"ok": False, "code": err.code, "message": err.message, "hint": err.hint,
                              "report": err.report}))
        return 1
    if args.json:
        print(json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
