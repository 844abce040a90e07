"""The managed-environment installer: the torch build it picks, idempotence and failure
reports, all with a stub interpreter that fakes venv and pip (no downloads). One slow
test builds a real environment from this machine's own pip configuration."""

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flash_engine import setup
from flash_engine.setup import Machine, SetupError, check_interpreter, choose_torch_index, env_status, install

from tests.conftest import REPO  # noqa: E402
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---------------------------------------------------------------------------------------
# Choosing the torch build


@pytest.mark.parametrize("machine, index, build", [
    (Machine("Linux", "x86_64"), CPU_INDEX, "cpu"),
    (Machine("Linux", "x86_64", (12, 8), "NVIDIA RTX 4090"), "https://download.pytorch.org/whl/cu128", "cu128"),
    (Machine("Linux", "x86_64", (12, 9)), "https://download.pytorch.org/whl/cu128", "cu128"),
    (Machine("Linux", "aarch64", (13, 1)), "https://download.pytorch.org/whl/cu130", "cu130"),
    (Machine("Linux", "x86_64", (12, 6)), "https://download.pytorch.org/whl/cu126", "cu126"),
    (Machine("Linux", "x86_64", (11, 8)), CPU_INDEX, "cpu"),  # driver too old for any build
    (Machine("Windows", "AMD64"), None, "cpu"),  # PyPI's Windows torch is the CPU build
    (Machine("Windows", "AMD64", (12, 8)), "https://download.pytorch.org/whl/cu128", "cu128"),
    (Machine("Darwin", "arm64"), None, "mps"),
    (Machine("Darwin", "x86_64"), None, "cpu"),
])
def test_choose_torch_index(machine, index, build):
    choice = choose_torch_index(machine, "2.13.0")
    assert (choice.index_url, choice.build) == (index, build)
    assert choice.reason


def test_an_old_driver_says_why_it_gets_the_cpu_build():
    reason = choose_torch_index(Machine("Linux", "x86_64", (11, 4)), "2.13.0").reason
    assert "11.4" in reason and "update the driver" in reason


def test_parse_cuda_version():
    banner = textwrap.dedent("""\
        +-----------------------------------------------------------------------------------------+
        | NVIDIA-SMI 570.86.10              Driver Version: 570.86.10      CUDA Version: 12.8     |
        |-----------------------------------------+------------------------+----------------------+""")
    assert setup.parse_cuda_version(banner) == (12, 8)
    assert setup.parse_cuda_version("NVIDIA-SMI has failed because it couldn't communicate") is None


def test_torch_index_overrides(monkeypatch):
    linux_gpu = Machine("Linux", "x86_64", (12, 8))
    assert setup.resolve_torch_index("none", linux_gpu, "2.13.0") is None
    assert setup.resolve_torch_index("https://mirror/whl", linux_gpu, "2.13.0").index_url == "https://mirror/whl"
    monkeypatch.setenv(setup.TORCH_INDEX_ENV, "none")
    assert setup.resolve_torch_index(None, linux_gpu, "2.13.0") is None
    assert setup.resolve_torch_index("auto", linux_gpu, "2.13.0").build == "cu128"  # the flag wins


def test_the_requirements_pin_torch_exactly():
    # A loose torch spec would let pip pull another build than the one chosen here.
    assert setup.pinned_torch(setup.read_requirements()).startswith("torch==")


# ---------------------------------------------------------------------------------------
# Installing, with a stub interpreter standing in for Python, venv and pip

STUB = """\
#!{python}
# A stand-in Python: `-m venv DIR` makes DIR/bin/python (this script again), `-m pip ...`
# logs and may fail on request, `-c CHECK` prints a check report.
import json, os, shutil, sys
log = os.environ["STUB_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:2] == ["-m", "venv"]:
    env = args[-1]
    os.makedirs(os.path.join(env, "bin"), exist_ok=True)
    open(os.path.join(env, "pyvenv.cfg"), "w").write("home = stub\\n")
    shutil.copy(__file__, os.path.join(env, "bin", "python"))
elif args[:2] == ["-m", "pip"]:
    print("Collecting " + " ".join(a for a in args if "==" in a or a.endswith(".txt")))
    fail = os.environ.get("STUB_PIP_FAIL")
    if fail and any(fail in a for a in args):
        print("ERROR: No matching distribution found for " + fail)
        sys.exit(1)
    print("Successfully installed")
elif args[0] == "-c":
    problems = [os.environ["STUB_CHECK_PROBLEM"]] if os.environ.get("STUB_CHECK_PROBLEM") else []
    print(json.dumps({{"python": "3.11.9", "torch": "2.13.0+cpu", "diffusers": "0.42.1", "device": "cpu",
                      "problems": problems, "warnings": []}}))
"""


@pytest.fixture
def stub(tmp_path, monkeypatch):
    python = tmp_path / "stub-python"
    python.write_text(STUB.format(python=sys.executable))
    python.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.delenv(setup.TORCH_INDEX_ENV, raising=False)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return python, calls


def run_install(env, python, lines=None, **kwargs):
    kwargs.setdefault("machine", Machine("Linux", "x86_64"))
    return install(env, base_python=str(python), log=(lines.append if lines is not None else lambda line: None),
                   **kwargs)


def test_first_install_builds_then_a_second_run_only_checks(stub, tmp_path):
    python, calls = stub
    env = tmp_path / "env"
    lines = []
    ready = run_install(env, python, lines)
    kinds = [call[:2] for call in calls()]
    assert kinds == [["-m", "venv"], ["-m", "pip"], ["-m", "pip"], ["-c", setup.CHECK_SCRIPT]]
    torch_call, requirements_call = calls()[1], calls()[2]
    assert "torch==2.13.0" in torch_call and torch_call[torch_call.index("--index-url") + 1] == CPU_INDEX
    assert str(setup.REQUIREMENTS) in requirements_call and "--index-url" not in requirements_call
    assert ready["torch_build"] == "cpu" and ready["check"]["device"] == "cpu"
    assert env_status(env)["ready"] is True
    assert [line for line in lines if line.startswith("[")] == [
        "[1/4] creating the environment with " + str(python), "[2/4] installing torch==2.13.0 (cpu build)",
        "[3/4] installing the engine's requirements", "[4/4] checking: import torch and diffusers, find the device"]
    assert any("Successfully installed" in line for line in lines)  # pip's output is streamed

    before = len(calls())
    again = run_install(env, python)
    assert again["up_to_date"] is True
    assert [call[0] for call in calls()[before:]] == ["-c"]  # nothing but the final check


def test_changed_requirements_or_torch_index_reinstall_in_place(stub, tmp_path):
    python, calls = stub
    env = tmp_path / "env"
    run_install(env, python)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(setup.REQUIREMENTS.read_text() + "tqdm==4.67.1\n")
    before = len(calls())
    run_install(env, python, requirements_file=requirements)
    assert [call[:2] for call in calls()[before:]] == [["-m", "pip"], ["-m", "pip"], ["-c", setup.CHECK_SCRIPT]]
    before = len(calls())
    run_install(env, python, requirements_file=requirements, torch_index="none")
    assert [call[:2] for call in calls()[before:]] == [["-m", "pip"], ["-c", setup.CHECK_SCRIPT]]
    assert env_status(env)["stamp"]["torch_index"] is None


def test_index_overrides_reach_pip(stub, tmp_path):
    python, calls = stub
    run_install(tmp_path / "env", python, torch_index="https://mirror/torch", index_url="https://mirror/simple",
                extra_index_urls=["https://extra/simple"])
    torch_call, requirements_call = calls()[1], calls()[2]
    assert torch_call[torch_call.index("--index-url") + 1] == "https://mirror/torch"
    assert requirements_call[requirements_call.index("--index-url") + 1] == "https://mirror/simple"
    assert "https://extra/simple" in torch_call and "https://extra/simple" in requirements_call


def test_a_failed_pip_leaves_a_report_and_no_ready_stamp(stub, tmp_path, monkeypatch, capsys):
    python, calls = stub
    env = tmp_path / "env"
    run_install(env, python)  # ready once ...
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(setup.REQUIREMENTS.read_text().replace("diffusers==0.42.1", "diffusers==99.0"))
    monkeypatch.setenv("STUB_PIP_FAIL", "requirements.txt")
    with pytest.raises(SetupError) as caught:  # ... then an update fails half-way
        run_install(env, python, requirements_file=requirements)
    assert "installing the engine's requirements" in caught.value.message
    assert "No matching distribution" in caught.value.hint
    status = env_status(env)
    assert status["ready"] is False and status["stamp"] is None
    assert status["failed"]["step"] == "installing the engine's requirements"
    assert any("No matching distribution" in line for line in status["failed"]["output_tail"])
    assert "failed at" in status["reason"]

    # the command line says the same, and exits non-zero
    monkeypatch.setattr(setup, "REQUIREMENTS", requirements)
    code = setup.main(["--env", str(env), "--python", str(python), "--torch-index", "none", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert any(line.startswith("error: engine setup failed at") for line in out)
    assert json.loads(out[-1])["ok"] is False

    monkeypatch.delenv("STUB_PIP_FAIL")  # fixed: the next run finishes and is ready again
    run_install(env, python, requirements_file=requirements)
    assert env_status(env)["ready"] is True and env_status(env)["failed"] is None


def test_a_failed_check_does_not_mark_the_environment_ready(stub, tmp_path, monkeypatch):
    python, _ = stub
    monkeypatch.setenv("STUB_CHECK_PROBLEM", "torch does not import: OSError: libcudnn.so.9 missing")
    with pytest.raises(SetupError, match="libcudnn"):
        run_install(tmp_path / "env", python)
    assert env_status(tmp_path / "env")["ready"] is False


def test_a_folder_that_is_not_an_environment_is_left_alone(stub, tmp_path):
    python, calls = stub
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    with pytest.raises(SetupError, match="not a Python environment"):
        run_install(folder, python)
    assert calls() == [] and sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]


# ---------------------------------------------------------------------------------------
# Checking an interpreter


def test_check_interpreter_on_this_python():
    report = check_interpreter(sys.executable)
    assert report["ok"] and report["device"] == "cpu"
    assert report["torch"].startswith("2.") and report["diffusers"]


def test_check_interpreter_errors_are_clear(tmp_path):
    with pytest.raises(SetupError, match="no Python at") as caught:
        check_interpreter(tmp_path / "nope" / "python")
    assert caught.value.code == "interpreter_missing"
    with pytest.raises(SetupError) as caught:  # a Python without the requirements
        check_interpreter(sys.executable, requirements=["torch==2.13.0", "no-such-package-flash==1.0"])
    assert caught.value.code == "interpreter_incomplete" and "no-such-package-flash" in caught.value.message
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libpython3.11.so' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(SetupError, match="libpython3.11") as caught:
        check_interpreter(broken)
    assert caught.value.code == "interpreter_broken"


# ---------------------------------------------------------------------------------------
# The real thing, from the machine's own package index (no PyTorch download index needed)


@pytest.mark.slow
def test_a_real_environment_is_built_and_serves(tmp_path):
    env = tmp_path / "engine-env"
    try:
        build_and_serve(env, tmp_path)
    finally:
        shutil.rmtree(env, ignore_errors=True)  # 1.4 GB: pytest keeps old tmp folders around


def build_and_serve(env: Path, tmp_path: Path) -> None:
    from flash_engine.client import EngineClient

    command = [sys.executable, "-m", "flash_engine.setup", "--env", str(env), "--torch-index", "none", "--json"]
    started = time.monotonic()
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    built_s = time.monotonic() - started
    assert json.loads(first.stdout.splitlines()[-1])["check"]["device"] == "cpu"
    assert env_status(env)["ready"]

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "already set up" in second.stdout
    assert "installing" not in second.stdout

    python = setup.env_python(env)
    assert check_interpreter(python)["torch"].startswith("2.13")
    with EngineClient(python, ["--model", "tiny"], engine_path=REPO, cwd=tmp_path) as engine:
        assert engine.hello_info["device"] == "cpu" and engine.hello_info["python"].startswith("3.11")
    print(f"environment built in {built_s:.0f}s")
