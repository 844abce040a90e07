"""Downloading the base weights (``flash_engine.weights.fetch``) against a stand-in of the
model hub on 127.0.0.1 serving the tiny model saved with save_pretrained: whole files in the
layout the engine loads, a dropped connection resumed by a Range request, an interrupted run
continued by the next, damage refused, and an unfinished folder never taken for complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hub_standin import ADAPTER_REPO, SD15_REPO, Hub, tiny_repos

from tests.conftest import REPO  # noqa: E402
UNET = "unet/diffusion_pytorch_model.safetensors"
ADAPTER = "motion_adapter/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    return tiny_repos(tmp_path_factory.mktemp("hub-repos"))


def _point_at(monkeypatch, server, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import huggingface_hub.constants as constants  # read at import: point the loaded copy here too

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(repos, monkeypatch, tmp_path):
    server = Hub(repos).start()
    _point_at(monkeypatch, server, tmp_path)
    yield server
    server.stop()


def served(repos, path: str) -> bytes:
    if path.startswith("motion_adapter/"):
        return (repos[ADAPTER_REPO] / path.removeprefix("motion_adapter/")).read_bytes()
    return (repos[SD15_REPO] / path).read_bytes()


def gets(hub, name: str) -> list[str | None]:
    return [rng for method, path, rng in hub.requests if method == "GET" and path.endswith("/" + name)]


def test_a_download_is_whole_in_the_engines_layout_and_marked_complete(hub, repos, tmp_path):
    from flash_engine import weights

    dest = tmp_path / "weights"
    seen = []
    weights.fetch(dest, progress=lambda done, total, path: seen.append((done, total)))
    for path in (UNET, ADAPTER, "vae/config.json", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json",
                 "model_index.json"):
        assert (dest / path).read_bytes() == served(repos, path), path
    assert not (dest / "README.md").exists()  # only the patterns the engine needs
    assert weights.weights_status(dest)["found"], weights.weights_status(dest)
    state = weights.download_state(dest)
    total = sum(len(served(repos, e["path"])) for e in json.loads((dest / weights.COMPLETE_STAMP).read_text())["files"])
    assert state == {"state": "complete", "done": total, "total": total, "folder": str(dest)}
    assert seen[-1] == (total, total) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert not (dest / weights.PARTIAL_DIR).exists()
    assert any(method == "HEAD" for method, _, _ in hub.requests)
    # a second run fetches nothing again
    before = len(gets(hub, UNET))
    weights.fetch(dest)
    assert len(gets(hub, UNET)) == before


def test_a_dropped_connection_resumes_where_it_stopped(hub, repos, tmp_path):
    from flash_engine import weights

    size = len(served(repos, UNET))
    hub.drop_after[f"{SD15_REPO}/{UNET}"] = size // 3
    dest = weights.fetch(tmp_path / "weights")
    assert gets(hub, UNET) == [None, f"bytes={size // 3}-"]  # the second try asks for the rest only
    assert (dest / UNET).read_bytes() == served(repos, UNET)
    assert weights.download_state(dest)["state"] == "complete"


def test_an_interrupted_download_is_partial_and_the_next_run_finishes_it(hub, repos, tmp_path):
    from flash_engine import weights

    dest, size = tmp_path / "weights", len(served(repos, ADAPTER))
    hub.drop_after[f"{ADAPTER_REPO}/diffusion_pytorch_model.safetensors"] = size // 2

    class Stop(BaseException):  # as the SIGTERM of Cancel ends the downloader (SystemExit)
        pass

    def stop_mid_adapter(done, total, path):  # a cancel (or a crash) during the adapter's file
        part = next((dest / weights.PARTIAL_DIR).glob(ADAPTER + ".*.part"), None)
        if path == ADAPTER and part is not None and part.stat().st_size >= size // 2:
            raise Stop

    with pytest.raises(Stop):
        weights.fetch(dest, progress=stop_mid_adapter)
    state = weights.download_state(dest)
    assert state["state"] == "partial" and 0 < state["done"] < state["total"], state
    assert not (dest / ADAPTER).exists()  # nothing half-written where the engine looks
    assert not weights.weights_status(dest)["found"]
    assert "unfinished" in "; ".join(weights.weights_status(dest)["problems"])
    weights.fetch(dest)
    assert gets(hub, "diffusion_pytorch_model.safetensors")[-1] == f"bytes={size // 2}-"
    assert (dest / ADAPTER).read_bytes() == served(repos, ADAPTER)
    assert weights.download_state(dest)["state"] == "complete" and weights.weights_status(dest)["found"]


def test_a_damaged_file_is_refused_and_fetched_anew(hub, repos, tmp_path):
    from flash_engine import weights
    from flash_engine.errors import FlashError

    dest = tmp_path / "weights"
    unet = next(f for f in weights.plan_download() if f.path == UNET)
    part = weights.part_path(dest / weights.PARTIAL_DIR, UNET, unet.id)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 64)  # bytes that are not the file's: the rest arrives, the hash fails
    with pytest.raises(FlashError, match="arrived damaged"):
        weights.fetch(dest)
    assert not part.exists() and not (dest / UNET).exists()
    assert weights.download_state(dest)["state"] == "partial"
    weights.fetch(dest)
    assert (dest / UNET).read_bytes() == served(repos, UNET)


def test_the_json_command_reports_plan_progress_and_done(hub, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "flash_engine.weights", "fetch", "--dest", str(tmp_path / "w"),
                           "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["state"] == "complete"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == events[-1]["total"]
    unreachable = subprocess.run([sys.executable, "-m", "flash_engine.weights", "fetch", "--dest",
                                  str(tmp_path / "x"), "--json"], capture_output=True, text=True, timeout=120,
                                 env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert unreachable.returncode == 1
    error = json.loads(unreachable.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["message"].startswith("could not download the weights")
    assert "press Download again: it resumes" in error["hint"]


def test_the_weights_module_imports_with_the_standard_library_only():
    code = ("import sys; import flash_engine.weights as w; w.download_state('/nonexistent'); "
            "bad = [m for m in ('torch', 'huggingface_hub', 'diffusers') if m in sys.modules]; print(bad); "
            "sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_hub_file_name_outside_the_folder_is_refused(monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub

    from flash_engine import weights
    from flash_engine.errors import FlashError

    sibling = SimpleNamespace(rfilename="tokenizer/../../../.bashrc", lfs=None, size=10, blob_id="b")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo, revision=None, files_metadata=False: SimpleNamespace(sha="c",
                                                                                                siblings=[sibling]))
    with pytest.raises(FlashError, match="outside the weights folder"):
        weights.plan_download(((weights.SD15_REPO, "", ["tokenizer/*"]),))


def test_a_part_of_an_older_revision_is_not_resumed_and_a_users_file_is_not_replaced(hub, repos, tmp_path):
    from flash_engine import weights
    from flash_engine.errors import FlashError

    dest = tmp_path / "weights"
    stale = weights.part_path(dest / weights.PARTIAL_DIR, UNET, "an-older-revision")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 64)  # bytes of another revision of the same path
    weights.fetch(dest)
    assert (dest / UNET).read_bytes() == served(repos, UNET) and not stale.exists()
    assert "bytes=64-" not in gets(hub, "diffusion_pytorch_model.safetensors")

    mine = tmp_path / "my-model"
    (mine / "unet").mkdir(parents=True)
    (mine / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"my own fine-tune")
    with pytest.raises(FlashError, match="not the hub's"):
        weights.fetch(mine)
    assert (mine / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == b"my own fine-tune"



# ---- the public ControlNets (weights fetch --control)


@pytest.fixture(scope="module")
def control_repos(tmp_path_factory) -> dict[str, Path]:
    from tests.support.hub_standin import controlnet_repos

    return controlnet_repos(tmp_path_factory.mktemp("control-repos"))


@pytest.fixture
def control_hub(control_repos, monkeypatch, tmp_path):
    server = Hub(control_repos).start()
    _point_at(monkeypatch, server, tmp_path)
    yield server
    server.stop()


def test_the_public_controlnets_are_fetched_where_motion_control_finds_them(control_hub, control_repos, tmp_path,
                                                                             monkeypatch):
    import torch

    from flash_engine import weights
    from flash_engine.cli import main
    from flash_engine.models.controlnet import find_controlnet, load_controlnet
    from flash_engine.models.sd15_random import UNET_CONFIG

    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "weights"))
    sd15 = tmp_path / "sd15"
    (sd15 / "unet").mkdir(parents=True)
    (sd15 / "unet" / "config.json").write_text(json.dumps(UNET_CONFIG))
    with pytest.raises(Exception, match="weights fetch --control"):
        find_controlnet("pose", None, str(sd15))
    assert main(["weights", "fetch", "--control"]) == 0
    for control, repo in (("pose", weights.PUBLIC_CONTROLNETS["pose"]), ("depth", weights.PUBLIC_CONTROLNETS["depth"])):
        folder = find_controlnet(control, None, str(sd15))
        assert folder == tmp_path / "weights" / "controlnets" / repo.split("/")[1]
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                            weights.COMPLETE_STAMP]  # no pickle, no README
        assert weights.download_state(folder)["state"] == "complete"
        served = (control_repos[repo] / "diffusion_pytorch_model.safetensors").read_bytes()
        assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == served
        load_controlnet(folder)  # it loads as a ControlNet
    assert not any(path.endswith(".bin") for _, path, _ in control_hub.requests)
    before = len(control_hub.requests)
    weights.fetch_controlnets()  # complete: nothing fetched again
    assert not [r for r in control_hub.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]


def test_an_unfinished_controlnet_download_is_not_used_and_resumes(control_hub, control_repos, tmp_path, monkeypatch):
    from flash_engine import weights
    from flash_engine.models.controlnet import find_controlnet
    from flash_engine.models.sd15_random import UNET_CONFIG

    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "weights"))
    sd15 = tmp_path / "sd15"
    (sd15 / "unet").mkdir(parents=True)
    (sd15 / "unet" / "config.json").write_text(json.dumps(UNET_CONFIG))
    repo = weights.PUBLIC_CONTROLNETS["pose"]
    name = "diffusion_pytorch_model.safetensors"
    size = (control_repos[repo] / name).stat().st_size

    class Stop(BaseException):
        pass

    def stop_halfway(done, total, path):
        if path.endswith(name) and done >= size // 2:
            raise Stop

    control_hub.drop_after[f"{repo}/{name}"] = size // 2
    with pytest.raises(Stop):
        weights.fetch_controlnets(progress=stop_halfway, controls=("pose",))
    with pytest.raises(Exception, match="has not finished downloading"):
        find_controlnet("pose", None, str(sd15))
    weights.fetch_controlnets(controls=("pose",))
    assert [rng for method, path, rng in control_hub.requests if method == "GET" and path.endswith(name)][-1] \
        == f"bytes={size // 2}-"
    assert find_controlnet("pose", None, str(sd15)) == weights.public_controlnet_dir("pose")


def test_the_json_command_fetches_the_controlnets_with_a_done_event_each(control_hub, tmp_path):
    from flash_engine import weights

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "flash_engine.weights", "fetch", "--dest", str(tmp_path / "w"),
                           "--control", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    done = [e for e in events if e["event"] == "done"]
    assert [e["folder"] for e in done] == [str(weights.public_controlnet_dir(c, tmp_path / "w"))
                                           for c in ("pose", "depth")]
    assert all(e["state"] == "complete" for e in done)
    assert {e["file"].split("/")[1] for e in events if e["event"] == "progress"} == \
        {repo.split("/")[1] for repo in weights.PUBLIC_CONTROLNETS.values()}
