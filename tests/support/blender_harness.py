"""What the Blender tests share, on both of their sides: on the pytest side an isolated
Blender user directory and the built extension zip; on the Blender side (the test files run
as scripts in a bpy process) the scenario's record, the install and the calls every scenario
makes, and a stand-in UILayout whose recorded calls are checked against Blender's own RNA,
since background mode draws nothing."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = "bl_ext.user_default.flash_previs"  # the installed extension's module name


def isolated_env(tmp: Path) -> dict:
    """The environment for a Blender process that touches nothing of the user's."""
    env = dict(os.environ)
    for name in ("BLENDER_USER_CONFIG", "BLENDER_USER_SCRIPTS", "BLENDER_USER_DATAFILES",
                 "BLENDER_USER_EXTENSIONS"):
        env.pop(name, None)
    env["BLENDER_USER_RESOURCES"] = str(tmp / "blender-user")  # nothing touches ~/.config/blender
    env["FLASH_WEIGHTS_DIR"] = str(tmp / "no-weights")
    env.pop("FLASH_MODEL", None)
    return env


def build_extension_zip(dest: Path) -> Path:
    """The installable zip, built by tools/build_extension.py as users get it."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from build_extension import build
    finally:
        sys.path.remove(str(REPO / "tools"))
    return build(dest)


def run_scenario(script: str | Path, tmp: Path, *args, env: dict | None = None, timeout: float = 600) -> dict:
    """Run a test file as Blender runs ``blender -b -P script -- ARGS``: its own process, the
    extension zip just built, an isolated user directory. The script's ``scenario(zip, work,
    out, *args)`` writes its record to ``out``; returns that record, with the process's
    output under ``_log`` (tails) and ``_stdout`` (all of it)."""
    zip_path = build_extension_zip(tmp / "dist")
    out = tmp / "record.json"
    proc = subprocess.run([sys.executable, str(script), str(zip_path), str(tmp / "work"), str(out), *map(str, args)],
                          env=env or isolated_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert out.is_file(), f"the Blender scenario wrote no record (exit {proc.returncode}):\n{log}"
    record = json.loads(out.read_text())
    record["_log"], record["_stdout"] = log, proc.stdout + proc.stderr
    return record


def scenario_part(record: dict, name: str) -> dict:
    """One named part of a scenario's record, or the test fails with what went wrong there."""
    import pytest

    if name not in record:
        pytest.fail(f"the scenario did not reach '{name}': {record.get('errors') or record.get('error', '')}\n"
                    f"{record['_log']}")
    if name in record.get("errors", {}):
        pytest.fail(f"'{name}' failed in Blender:\n{record['errors'][name]}")
    return record[name]


class ScenarioRecord:
    """What a scenario saw (``record``, a dict), written as JSON to ``out`` as it goes."""

    def __init__(self, out: str | Path, **start):
        self.out, self.record, self.started = Path(out), dict(start), time.monotonic()

    def save(self, timing: str | None = None) -> None:
        """Write the record; with ``timing``, first note the seconds since the start under record["timings"]."""
        if timing:  # for finding what is slow
            self.record.setdefault("timings", {})[timing] = round(time.monotonic() - self.started, 1)
        self.out.write_text(json.dumps(self.record, indent=1, default=str))

    def step(self, name: str):
        """Decorator: run the function now, its traceback (if any) under record["errors"][name], then save."""
        def wrap(function):
            try:
                function()
            except Exception:
                self.record.setdefault("errors", {})[name] = traceback.format_exc()
            self.save()
        return wrap


def addon(name: str):  # pragma: no cover - runs in Blender
    """The installed extension's submodule ``name`` (``"engine"``, ``"operators.batch"``, ...)."""
    return sys.modules[f"{MODULE}.{name}"]


def call(operator, *args, **kwargs) -> tuple[list[str], str]:  # pragma: no cover - runs in Blender
    """Run an operator: (its sorted result, "") or, when it raises, (["CANCELLED"], the error)."""
    try:
        return sorted(operator(*args, **kwargs)), ""
    except RuntimeError as err:
        return ["CANCELLED"], str(err)


def install_extension(zip_path: str) -> list[str]:  # pragma: no cover - runs in Blender
    """Install and enable the built zip as a user does; the operator's sorted result."""
    import bpy

    return sorted(bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                           enable_on_install=True))


def use_local_engine(model_source: str):  # pragma: no cover - runs in Blender
    """The add-on's preferences, set to run the engine in this interpreter on the CPU with ``model_source``."""
    import bpy

    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.engine_source, prefs.python_path = 'CUSTOM', sys.executable
    prefs.model_source, prefs.device = model_source, 'cpu'
    return prefs


def emulate_blender(argv: list[str]) -> None:  # pragma: no cover - runs in Blender
    """``blender [-b] [-y] [FILE.blend] [--python-exit-code N] [--python-expr EXPR | -P SCRIPT]... [-- ARGS]``
    with the bpy module: load the user's preferences (Blender does at startup; the module
    does not), open the file (after ``-b`` or on its own, as Flamenco's blender-render
    passes it), run the expressions and scripts in order with ``sys.argv`` as Blender sets
    it, and exit like Blender (SystemExit's code; N after another exception)."""
    import bpy

    bpy.ops.wm.read_userpref()
    on_error, index = 0, 0
    sys.argv = ["blender", *argv]
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            break
        if arg.endswith(".blend"):
            bpy.ops.wm.open_mainfile(filepath=arg)
        elif arg == "--python-exit-code":
            on_error = int(argv[index + 1])
            index += 1
        elif arg in ("--python-expr", "-P", "--python"):
            try:
                if arg == "--python-expr":
                    exec(compile(argv[index + 1], "<string>", "exec"), {"__name__": "__main__"})
                else:
                    runpy.run_path(argv[index + 1], run_name="__main__")
            except SystemExit as stop:
                sys.stdout.flush()
                os._exit(stop.code if isinstance(stop.code, int) else 1)
            except Exception:
                traceback.print_exc()
                if on_error:
                    sys.stdout.flush()
                    os._exit(on_error)
            index += 1
        index += 1  # -b, -y and the rest: nothing to emulate
    sys.stdout.flush()
    os._exit(0)


class Layout:
    """Stands in for UILayout: records calls, returns itself."""

    def __init__(self, calls):
        self.__dict__["calls"] = calls

    def __getattr__(self, name):
        def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self
        return method

    def __setattr__(self, name, value):
        pass  # use_property_split, scale_y, ...


class Drawer:
    """``self`` for a draw function: our layout, everything else from the real owner."""

    def __init__(self, layout, owner):
        self.layout, self.owner = layout, owner

    def __getattr__(self, name):
        return getattr(self.owner, name)


def layout_problems(bpy, calls, where: str = "") -> list[str]:  # pragma: no cover - runs in Blender
    """What a real layout would reject: unknown icons, properties, operators, progress types."""
    icons = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
    progress_types = set(bpy.types.UILayout.bl_rna.functions["progress"].parameters["type"].enum_items.keys())
    prefix = f"{where}: " if where else ""
    problems = []
    for name, args, kwargs in calls:
        icon = kwargs.get("icon")
        if icon and icon not in icons:
            problems.append(f"{prefix}unknown icon {icon}")
        if name == "prop" and args[1] not in args[0].bl_rna.properties:
            problems.append(f"{prefix}unknown property {args[1]}")
        if name == "operator":
            group, op = args[0].split(".")
            try:
                getattr(getattr(bpy.ops, group), op).get_rna_type()
            except (AttributeError, KeyError):
                problems.append(f"{prefix}unknown operator {args[0]}")
        if name == "progress" and kwargs.get("type") not in progress_types:
            problems.append(f"{prefix}bad progress type")
    return problems
