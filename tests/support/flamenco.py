"""The Flamenco job type under Node, for the tests: ``compile_job`` runs
farm/flamenco/flash_previs.js in tests/support/flamenco_harness.js (a stand-in of Flamenco
3's job-compiler API) and returns what it authored; ``hidden_evals`` gives the Python
expressions the Flamenco add-on evaluates in Blender at submission."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "farm" / "flamenco" / "flash_previs.js"
HARNESS = REPO / "tests" / "support" / "flamenco_harness.js"
NODE = shutil.which("node")


def compile_job(settings: dict, name: str, created: str) -> dict:
    """``{"ok", "tasks", "settings", "error"?, ...}`` (see flamenco_harness.js)."""
    job = {"name": name, "created": created, "settings": settings}
    fd, path = tempfile.mkstemp(suffix=".json", prefix="flamenco-job-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(job, file, ensure_ascii=False)
        proc = subprocess.run([NODE, str(HARNESS), str(SCRIPT), path], capture_output=True, text=True,
                              timeout=60, encoding="utf-8")
    finally:
        os.unlink(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert "harness_error" not in result, result["harness_error"]
    return result


def hidden_evals() -> dict:
    """The job type's ``eval`` expressions of its hidden settings, read by Node from JOB_TYPE."""
    code = ("const vm=require('vm');const c=vm.createContext({});"
            f"vm.runInContext(require('fs').readFileSync({json.dumps(str(SCRIPT))},'utf8'),c);"
            "const t=vm.runInContext('JOB_TYPE',c);const o={};"
            "t.settings.forEach(s=>{if(s.eval&&s.visible==='hidden')o[s.key]=s.eval});"
            "process.stdout.write(JSON.stringify(o))")
    proc = subprocess.run([NODE, "-e", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def eval_like_the_addon(expressions: dict, context) -> dict:
    """What the Flamenco add-on does with them: ``eval(expr, {}, locals)``."""
    return {key: eval(expr, {}, {"C": context, "settings": None, "jobname": "job"})  # noqa: S307
            for key, expr in expressions.items()}
