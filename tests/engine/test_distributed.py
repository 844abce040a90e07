"""Training on several ranks (torchrun + DDP) on the CPU with gloo: the same weights as one
process with the same batch, a rank killed ends the run in one line, resume on any count."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flash_engine.errors import FlashError
from flash_engine.training.config import TrainConfig
from flash_engine.training.distributed import Ranks, rank_device, ranks_from_environment
from tests.conftest import REPO
from tests.support.clipgen import make_clips

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TRAIN = ["-m", "flash_engine", "train", "--action", "disc", "--prompt", "a disc is moving.", "--model", "tiny",
         "--resolution", "64", "--frames", "4", "--stride", "1"]


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips") / "disc", count=3, frames=10)


def rank_env(**extra) -> dict:
    """One thread per process (2 ranks share the cores); this worktree's engine; a short
    process-group timeout, so a hang would fail the test rather than stall it."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FLASH_DDP_TIMEOUT": "30", **extra}


def manifest(folder: Path) -> dict:
    return tomllib.loads((folder / "action.toml").read_text())


# ---------------------------------------------------------------- pure parts

def test_ranks_come_from_torchruns_environment_and_a_plain_run_is_one_rank():
    meet = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert ranks_from_environment({}) == Ranks()
    assert ranks_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) == Ranks()  # torchrun --nproc-per-node 1
    ranks = ranks_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", **meet})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.distributed) == (3, 4, 1, True)
    assert ranks_from_environment({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "FLASH_DDP_TIMEOUT": "7",
                                   **meet}).timeout_s == 7
    for environ, expected in (({"WORLD_SIZE": "2", "RANK": "2", **meet}, "not below WORLD_SIZE"),
                              ({"WORLD_SIZE": "2", "RANK": "x", **meet}, "RANK='x'"),
                              ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h"}, "MASTER_PORT not set"),
                              ({"WORLD_SIZE": "2", "RANK": "1", "FLASH_DDP_TIMEOUT": "0", **meet}, "positive")):
        with pytest.raises(FlashError, match=expected) as caught:
            ranks_from_environment(environ)
        assert "\n" not in str(caught.value)


def test_each_rank_takes_the_gpu_of_its_local_rank_or_the_cpu():
    ranks = Ranks(rank=3, world_size=4, local_rank=1)
    assert rank_device(ranks, "auto", cuda_count=2) == torch.device("cuda", 1)
    assert rank_device(ranks, "cuda", cuda_count=2) == torch.device("cuda", 1)
    assert rank_device(ranks, "auto", cuda_count=0) == torch.device("cpu")
    assert rank_device(ranks, "cpu", cuda_count=2) == torch.device("cpu")
    for requested, count, expected in (("cuda:0", 2, "each rank takes its own device"),
                                       ("mps", 0, "each rank takes its own device"),
                                       ("cuda", 1, "has 1 GPU"), ("cuda", 0, "no CUDA GPU")):
        with pytest.raises(FlashError, match=expected):
            rank_device(ranks, requested, cuda_count=count)


def test_learning_rates_follow_the_effective_batch_by_the_rule():
    config = TrainConfig()
    assert config.scaled_rate(5e-5, 1) == 5e-5  # the paper's rate at its batch of 1
    assert config.scaled_rate(5e-5, 4) == pytest.approx(1e-4)  # sqrt, the default
    config.lr_scaling = "linear"
    assert config.scaled_rate(5e-5, 4) == pytest.approx(2e-4)
    config.lr_scaling = "none"
    assert config.scaled_rate(5e-5, 4) == 5e-5
    config.lr_scaling = "cubic"
    with pytest.raises(FlashError, match="unknown learning-rate scaling"):
        config.validate(8)


def test_a_bad_input_fails_every_rank_before_they_meet_and_names_the_rank(tmp_path, monkeypatch, capsys):
    from flash_engine.cli import main

    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():  # nobody listens there: meeting would fail, not this
        monkeypatch.setenv(name, value)
    code = main(["train", *TRAIN[3:], "--clips", str(tmp_path / "missing"), "--out", str(tmp_path / "a")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: rank 1 of 2: clips folder not found: {tmp_path / 'missing'} "
        "(pass a folder of video files or frame folders)"]


# ---------------------------------------------------------------- torchrun, for real

@pytest.mark.slow
def test_two_ranks_of_batch_1_reach_the_weights_of_one_process_of_batch_2(clips_dir, tmp_path):
    from flash_engine.models.tiny import build_tiny

    common = [*TRAIN, "--clips", clips_dir, "--steps", "3", "--decoder-steps", "2"]
    one = subprocess.run([sys.executable, *map(str, common), "--batch", "2", "--out", tmp_path / "one"],
                         cwd=REPO, env=rank_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", *map(str, common), "--batch", "1",
                          "--out", tmp_path / "two"], cwd=REPO, env=rank_env(), capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    # rank 0 alone reports and writes
    assert two.stderr.count("flash: using 3 of 3 clips") == 1
    assert two.stderr.count("flash: action 'disc' written") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no work folder left

    start = {name: p.detach() for name, p in build_tiny().unet.named_parameters()}
    for file in ("unet.safetensors", "decoder.safetensors"):
        single, ranked = load_file(tmp_path / "one" / file), load_file(tmp_path / "two" / file)
        assert set(single) == set(ranked)
        for name, value in single.items():
            assert torch.allclose(value, ranked[name], rtol=0, atol=1e-6), (file, name)
    moved = max((single - start[name]).abs().max().item()
                for name, single in load_file(tmp_path / "one" / "unet.safetensors").items())
    assert moved > 1e-4  # the weights trained: equal by the draws, not by standing still

    for folder, ranks, per_rank in (("one", 1, 2), ("two", 2, 1)):
        data = manifest(tmp_path / folder)
        assert data["batch"] == {"ranks": ranks, "per_rank": per_rank, "effective": 2, "lr_rule": "sqrt",
                                 "learning_rate": pytest.approx(5e-5 * 2 ** 0.5),
                                 "decoder_learning_rate": pytest.approx(1e-4 * 2 ** 0.5)}
    # the reported losses are the mean over every rank's clips, as one process's over its batch
    assert manifest(tmp_path / "two")["loss"] == pytest.approx(manifest(tmp_path / "one")["loss"], rel=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_rank_killed_ends_the_run_in_one_line_and_resume_continues_on_one_process(clips_dir, tmp_path):
    """The two ranks are started as torchrun starts its workers (its environment, env://), but
    without torchrun's agent, which would SIGTERM the survivor: here nothing but the engine
    itself can end it, so a hang would show. Rank 0 is the one killed: the rank that writes
    the checkpoints (and, started this way, hosts the rendezvous store)."""
    out = tmp_path / "disc"
    command = [sys.executable, *map(str, TRAIN), "--clips", str(clips_dir), "--steps", "12", "--decoder-steps",
               "0", "--checkpoint-every", "2", "--out", str(out)]
    meet = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen(command, cwd=REPO, env=rank_env(**meet, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    checkpoint = tmp_path / ".disc.training" / "checkpoint.json"
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and time.monotonic() < deadline and all(r.poll() is None for r in ranks):
            time.sleep(0.05)
        assert checkpoint.exists()
        ranks[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = ranks[1].communicate(timeout=60)
    finally:
        for rank in ranks:  # a failed test leaves no rank behind
            if rank.poll() is None:
                rank.kill()
            rank.wait()
    assert time.monotonic() - killed_at < 35  # at once with gloo; the 30 s timeout bounds any other case
    assert ranks[1].returncode == 2, stderr
    lines = stderr.splitlines()  # rank 1 reports nothing but its own failure
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 of 2 stopped at unet step "), stderr
    stopped = json.loads(checkpoint.read_text())
    assert f"the checkpoint at unet step {stopped['step']} is kept" in lines[0] and "--resume" in lines[0]
    # nothing that looks complete: no action folder; the checkpoint names a whole tensor file
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [".disc.training"]
    assert 2 <= stopped["step"] < 12 and load_file(checkpoint.parent / stopped["tensors"])

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=rank_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming disc at unet step {stopped['step']}" in resumed.stderr
    data = manifest(out)
    assert data["steps_done"] == 12
    assert data["batch"]["ranks"] == 1 and data["batch"]["effective"] == 1
    assert data["batch"]["changes"] == ["unet step 0: 2 rank(s), effective batch 2",
                                        f"unet step {stopped['step']}: 1 rank(s), effective batch 1"]
