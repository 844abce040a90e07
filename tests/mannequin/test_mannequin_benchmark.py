"""The few-shot benchmark: its metrics, its judge, its variant-5 shortcut and a smoke run of the chain."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mannequin.metrics import (clip_flow, cosine, dense_flow, flow_cosine, psnr, temporal_consistency, warp)
from tests.support.clipgen import moving_disc, write_frame_folder


def _texture(size=64, seed=0):
    torch.manual_seed(seed)
    return F.interpolate(torch.rand(1, 1, size // 4, size // 4), size=(size, size), mode="bicubic",
                         align_corners=False).clamp(0, 1)


# (6, -4) px in one frame: the hand-written Lucas–Kanade this replaced was 5.8 px off there.
@pytest.mark.parametrize("dx, dy, tolerance", [(1.5, -1.0, 0.1), (3.0, 2.0, 0.1), (-5.0, 1.0, 0.1), (6.0, -4.0, 0.3)])
def test_dense_flow_recovers_a_known_shift_with_the_documented_sign(dx, dy, tolerance):
    texture = _texture()
    shift = torch.zeros(1, 2, 64, 64)
    shift[:, 0], shift[:, 1] = -dx, -dy
    moved = warp(texture, shift)  # content moved by (+dx, +dy)
    flow = dense_flow(texture, moved)[0, :, 12:-12, 12:-12]
    assert flow[0].mean().item() == pytest.approx(dx, abs=tolerance)
    assert flow[1].mean().item() == pytest.approx(dy, abs=tolerance)
    assert dense_flow(texture, texture).abs().max().item() < 1e-4


def test_flow_cosine_tells_the_same_motion_from_the_opposite_one():
    right = moving_disc(8, seed=1, direction=0.0)
    other_colours = moving_disc(8, seed=5, direction=0.0)  # same path, other colours
    left = moving_disc(8, seed=1, direction=math.pi)
    assert flow_cosine(right, right) == pytest.approx(1.0, abs=1e-9)
    assert flow_cosine(right, other_colours) > 0.8
    assert flow_cosine(right, left) < -0.3
    assert clip_flow(right).shape == (7, 2, 64, 64)


def test_psnr_cosine_and_temporal_consistency_on_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 255 // 10, np.uint8)
    assert psnr(a, a) == 100.0
    assert psnr(a, b) == pytest.approx(-10 * math.log10((25 / 255) ** 2), rel=1e-6)
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == pytest.approx(0.0)
    steady = torch.ones(5, 4)
    assert temporal_consistency(steady) == pytest.approx(1.0)
    flipping = torch.tensor([[1.0, 0.0], [-1.0, 0.0]] * 3)
    assert temporal_consistency(flipping) == pytest.approx(-1.0)


def test_the_classifier_learns_motion_not_colour():
    from mannequin.classifier import ClassifierConfig, predict, train_classifier

    def clips(direction, seeds):
        return [moving_disc(8, size=32, seed=s, direction=direction) for s in seeds]

    config = ClassifierConfig(actions=("right", "down"), width=8, embedding=16, steps=80, batch=8)
    train = clips(0.0, range(6)) + clips(math.pi / 2, range(6))  # the same colours in both classes
    model = train_classifier(config, train, ["right"] * 6 + ["down"] * 6)
    test = clips(0.0, range(20, 24)) + clips(math.pi / 2, range(20, 24))  # unseen colours
    predicted = predict(model, test).argmax(1)
    assert predicted.tolist() == [0] * 4 + [1] * 4


def test_variant_5_is_variant_6s_unet(tmp_path):
    """The benchmark scores #5 with #6's UNet: the two trainings agree until the decoder phase."""
    from flash_engine.actions import read_action
    from flash_engine.training.job import TrainRequest, resolve_train, run_train

    clips = tmp_path / "clips"
    for seed in range(2):
        write_frame_folder(moving_disc(8, size=32, seed=seed), clips / f"clip{seed}")
    states = {}
    for variant in (5, 6):
        request = TrainRequest(clips=[str(clips)], action=f"v{variant}", prompt=["a disc moves"],
                               out=str(tmp_path / f"v{variant}"), model="tiny", steps=2, decoder_steps=2,
                               resolution="32", frames=8, stride=1, variant=variant, device="cpu",
                               options={"tau": 4})
        run_train(resolve_train(request))
        states[variant] = read_action(tmp_path / f"v{variant}")
    five, six = states[5].unet_state(), states[6].unet_state()
    assert five.keys() == six.keys()
    assert all(torch.equal(five[k], six[k]) for k in five)
    assert states[5].decoder_state() is None and states[6].decoder_state() is not None


@pytest.fixture(scope="module")
def smoke_model():
    from flash_engine.models.loading import mannequin_available

    return "mannequin" if mannequin_available() else "tiny"


def test_smoke_benchmark_generates_trains_animates_scores_and_resumes(tmp_path, smoke_model, capsys):
    from mannequin import benchmark

    report = tmp_path / "docs" / "bench.md"
    report.parent.mkdir()
    report.write_text("# Notes\n\nhand-written analysis that must survive\n")
    args = ["--smoke", "--model", smoke_model, "--actions", "kick", "--work", str(tmp_path / "work"),
            "--cache", str(tmp_path / "cache"), "--report", str(report), "--json", str(tmp_path / "r.json"),
            "--samples", str(tmp_path / "samples")]
    assert benchmark.main(args) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    kinds = {(row["shots"], row["variant"]) for row in data["rows"]}
    assert kinds == {(0, "truth"), (0, "base"), (2, 1), (2, 6)}
    for row in data["rows"]:
        assert -1 <= row["flow_cos"] <= 1 and -1 <= row["frame_cos"] <= 1 and -1 <= row["temporal"] <= 1
        assert row["action_acc"] in (0.0, 1.0) and 0 <= row["action_prob"] <= 1
        assert 0 < row["psnr_first"] <= 100
    truth = next(r for r in data["rows"] if r["variant"] == "truth")
    base = next(r for r in data["rows"] if r["variant"] == "base")
    assert truth["flow_cos"] != base["flow_cos"]  # the rows are really scored, not copied
    for label in ("| GT |", "| base |", "| #1 | 2 |", "| #6 | 2 |"):
        assert label in printed
    text = report.read_text()
    assert "hand-written analysis that must survive" in text and "| #6 | 2 |" in text
    trained = sorted(p.name for p in (tmp_path / "work" / "actions").glob("*/*"))
    assert trained == ["kick-2-v1", "kick-2-v6"]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 4

    # A second run (here with variant 5 added) reuses every scored row and trained action:
    # #5 comes from #6's artifact, so nothing is trained again.
    lines = (tmp_path / "work" / "results.jsonl").read_text().splitlines()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "actions").rglob("*.safetensors")}
    assert benchmark.main(args + ["--variants", "1", "5", "6"]) == 0
    after = (tmp_path / "work" / "results.jsonl").read_text().splitlines()
    assert after[: len(lines)] == lines and len(after) == len(lines) + 1
    assert json.loads(after[-1])["variant"] == 5
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert text.count("benchmark:start") == 1 == report.read_text().count("benchmark:start")


def test_reference_rows_only_reads_as_a_table_of_two_columns():
    from mannequin.benchmark import BenchmarkConfig, main, per_action_markdown

    config = BenchmarkConfig(shots=(), variants=())
    rows = [{"action": "kick", "shots": 0, "variant": "truth", "flow_cos": 0.8},
            {"action": "kick", "shots": 0, "variant": "base", "flow_cos": 0.1}]
    table = per_action_markdown(rows, config).splitlines()
    assert table[0] == "| action | GT | base |" and table[1] == "|---|---|---|"
    assert table[2] == "| kick | 0.800 | 0.100 |"
    with pytest.raises(SystemExit):  # --shots with no rows to train is still refused
        main(["--shots", "0"])
