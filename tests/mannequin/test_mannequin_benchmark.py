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


@pytest.mark.slow
def test_smoke_benchmark_generates_trains_animates_scores_and_resumes(tmp_path, smoke_model, capsys, monkeypatch):
    """The chain end to end, stopped after its first trained row and continued on "another
    machine": an empty WORK with only the committed --json, which must score just the rest."""
    from mannequin import benchmark

    report = tmp_path / "docs" / "bench.md"
    report.parent.mkdir()
    report.write_text("# Notes\n\nhand-written analysis that must survive\n")
    committed = tmp_path / "docs" / "bench.json"
    args = ["--smoke", "--model", smoke_model, "--actions", "kick", "--cache", str(tmp_path / "cache"),
            "--report", str(report), "--json", str(committed), "--samples", str(tmp_path / "samples")]
    first, second = ["--work", str(tmp_path / "work-a")], ["--work", str(tmp_path / "work-b")]

    train_action = benchmark.train_action

    def stop_at_variant_6(config, run_key, world, work, action, shots, variant, log):
        if variant == 6:
            raise KeyboardInterrupt  # the machine goes away after #1 was scored
        return train_action(config, run_key, world, work, action, shots, variant, log)

    monkeypatch.setattr(benchmark, "train_action", stop_at_variant_6)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(args + first)
    monkeypatch.setattr(benchmark, "train_action", train_action)
    stopped = json.loads(committed.read_text())
    assert not stopped["complete"]
    assert {(r["shots"], r["variant"]) for r in stopped["rows"]} == {(0, "truth"), (0, "base"), (2, 1)}
    capsys.readouterr()

    assert benchmark.main(args + second) == 0  # another WORK: nothing of run one but the --json
    printed = capsys.readouterr().out
    data = json.loads(committed.read_text())
    assert data["complete"]
    kinds = {(row["shots"], row["variant"]) for row in data["rows"]}
    assert kinds == {(0, "truth"), (0, "base"), (2, 1), (2, 6)}
    # the three rows of run one were skipped, not scored again; only #6 was trained, in WORK b
    assert [r for r in data["rows"] if r["variant"] != 6] == stopped["rows"]
    assert sorted(p.name for p in (tmp_path / "work-b" / "actions").glob("*/*")) == ["kick-2-v6"]
    assert sorted(p.name for p in (tmp_path / "work-a" / "actions").glob("*/*")) == ["kick-2-v1"]
    for row in data["rows"]:
        assert -1 <= row["flow_cos"] <= 1 and -1 <= row["frame_cos"] <= 1 and -1 <= row["temporal"] <= 1
        assert row["action_acc"] in (0.0, 1.0) and 0 <= row["action_prob"] <= 1
        assert 0 < row["psnr_first"] <= 100
        assert row["judge"] == data["classifier"]["fingerprint"]
    truth = next(r for r in data["rows"] if r["variant"] == "truth")
    base = next(r for r in data["rows"] if r["variant"] == "base")
    assert truth["flow_cos"] != base["flow_cos"]  # the rows are really scored, not copied
    for label in ("| GT |", "| base |", "| #1 | 2 |", "| #6 | 2 |"):
        assert label in printed
    text = report.read_text()
    assert "hand-written analysis that must survive" in text and "| #6 | 2 |" in text
    assert len(list((tmp_path / "samples").glob("*.png"))) == 4

    # A third run (here with variant 5 added) reuses every scored row and trained action:
    # #5 comes from #6's artifact, so nothing is trained again.
    lines = (tmp_path / "work-b" / "results.jsonl").read_text().splitlines()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work-b" / "actions").rglob("*.safetensors")}
    assert benchmark.main(args + second + ["--variants", "1", "5", "6"]) == 0
    after = (tmp_path / "work-b" / "results.jsonl").read_text().splitlines()
    assert after[: len(lines)] == lines and len(after) == len(lines) + 1
    assert json.loads(after[-1])["variant"] == 5
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert text.count("benchmark:start") == 1 == report.read_text().count("benchmark:start")


def test_committed_rows_keep_other_runs_and_refuse_a_foreign_file(tmp_path):
    from mannequin.benchmark import CommittedRows

    path = tmp_path / "bench.json"
    old = {"run_key": "old", "config": {"steps": 200}, "rows": [{"key": "old", "action": "kick", "shots": 0,
                                                                  "variant": "truth", "flow_cos": 0.5}]}
    path.write_text(json.dumps(old))
    store = CommittedRows(path, "new")
    assert store.rows == [] and store.earlier["old"]["rows"] == old["rows"]
    store.write({"run_key": "new", "rows": [{"key": "new", "action": "kick", "shots": 0, "variant": "base"}]})
    again = CommittedRows(path, "new")  # the new run's rows are found, the old run's still kept
    assert [r["variant"] for r in again.rows] == ["base"] and again.earlier["old"]["rows"] == old["rows"]
    assert [r["variant"] for r in CommittedRows(path, "old").rows] == ["truth"]
    path.write_text("a user's notes, not a report")
    with pytest.raises(SystemExit, match="pass another --json path"):
        CommittedRows(path, "new")
    assert path.read_text() == "a user's notes, not a report"


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


def test_paired_comparison_uses_the_same_references_and_their_spread():
    from mannequin.benchmark import BenchmarkConfig, paired_markdown, spread_markdown

    config = BenchmarkConfig(shots=(4,), variants=(1, 2))

    def row(action, variant, values):
        return {"action": action, "shots": 4, "variant": variant,
                "per_clip": [{"action_prob": v, "flow_cos": 0.0, "frame_cos": 0.0, "temporal": 0.0} for v in values]}

    # #2 beats #1 by 0.1 on every reference, though the references differ by far more than that
    rows = [row("kick", 1, [0.1, 0.5, 0.9]), row("kick", 2, [0.2, 0.6, 1.0]),
            row("bow", 1, [0.3]), row("bow", 2, [0.5])]
    line = paired_markdown(rows, config).splitlines()[2]
    diffs = np.array([0.1, 0.1, 0.1, 0.2])
    error = diffs.std(ddof=1) / 2
    assert line.startswith("| #2 − #1 | ") and f"+{diffs.mean():.3f} ± {error:.3f}" in line and "n 4" in line
    spread = spread_markdown(rows, config, metrics=("action_prob",)).splitlines()
    values = np.array([0.1, 0.5, 0.9, 0.3])
    assert spread[2] == f"| #1 | 4 | 4 | {values.mean():.3f} ± {values.std(ddof=1) / 2:.3f} |"
    assert "no two variants" in paired_markdown(rows, BenchmarkConfig(shots=(4,), variants=(1,)))


@pytest.mark.slow
def test_workers_share_a_run_and_the_last_to_finish_writes_the_report(tmp_path, smoke_model, monkeypatch, capsys):
    """Two workers on one WORK and --json: a unit another live worker holds is left to it, a row
    it writes meanwhile is kept (not scored again), and the report waits for every row."""
    import subprocess
    import sys
    from pathlib import Path

    from flash_engine.models.loading import load_base
    from mannequin import benchmark

    work, committed, report = tmp_path / "work", tmp_path / "bench.json", tmp_path / "bench.md"
    report.write_text("notes\n")
    args = ["--smoke", "--model", smoke_model, "--actions", "kick", "--variants", "1", "2", "6", "--cache",
            str(tmp_path / "cache"), "--work", str(work), "--json", str(committed), "--report", str(report)]
    run_key = benchmark.run_key_of(benchmark.smoke_config(model=smoke_model), load_base(smoke_model))
    script = ("import sys, time; from mannequin.claims import Claims; "
              "assert Claims(sys.argv[1]).claim('kick-2-6'); print('held', flush=True); time.sleep(300)")
    other = subprocess.Popen([sys.executable, "-c", script, str(work / "claims" / run_key)],
                             cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"

    train_action = benchmark.train_action

    def other_worker_scores_variant_2(config, key, world, work_, action, shots, variant, log):
        data = json.loads(committed.read_text())  # as the other worker writes: the whole file, its row added
        truth = next(r for r in data["rows"] if r["variant"] == "truth")
        data["rows"].append(dict(truth, shots=2, variant=2, train_s=1.0, judge="the other worker's"))
        committed.write_text(json.dumps(data))
        return train_action(config, key, world, work_, action, shots, variant, log)

    try:
        monkeypatch.setattr(benchmark, "train_action", other_worker_scores_variant_2)
        assert benchmark.main(args) == 0
        monkeypatch.setattr(benchmark, "train_action", train_action)
        log = capsys.readouterr().err
        data = json.loads(committed.read_text())
        assert not data["complete"] and report.read_text() == "notes\n"
        assert f"kick-2-6 (pid {other.pid})" in log
        assert {(r["shots"], r["variant"]) for r in data["rows"]} == {(0, "truth"), (0, "base"), (2, 1), (2, 2)}
        assert next(r for r in data["rows"] if r["variant"] == 2)["judge"] == "the other worker's"
        assert sorted(p.name for p in (work / "actions").glob("*/*")) == ["kick-2-v1"]  # #2 not trained here
    finally:
        other.kill()
        other.wait()
    # the other worker is gone: its claim is stale, this run takes the unit over and completes
    assert benchmark.main(args) == 0
    data = json.loads(committed.read_text())
    assert data["complete"] and "| #6 | 2 |" in report.read_text()
    assert {(r["shots"], r["variant"]) for r in data["rows"]} == {(0, "truth"), (0, "base"), (2, 1), (2, 2), (2, 6)}
    assert sorted(p.name for p in (work / "actions").glob("*/*")) == ["kick-2-v1", "kick-2-v6"]
    assert not list((work / "claims").rglob("*.claim"))
