"""Does the pose steer the take? Motion control measured on the mannequin world.

    python -m mannequin.control_benchmark [--model mannequin] [--references 8] [--work DIR]
        [--report docs/mannequin-control-benchmark.md] [--json OUT] [--smoke]

Test-split references of all 11 actions (appearances and cameras no training saw) are animated
from their first frame with their own action's sentence, four ways:

- ``prompt``: the sentence only (no control), as before motion control;
- ``rig``: the clip's ground-truth keypoints (the renderer's rig through its camera, the
  ``.pose.json`` a ``--pose`` take reads);
- ``mediapipe``: the driving-clip path (``animate --driving``) on the clip's own rendered
  frames: MediaPipe's poses, smoothed and retargeted to the person MediaPipe finds in frame 0;
- ``other``: the driving-clip path on *another* test clip of the same action (another person and
  camera drive this one, DirectAnimator's setting; clips pair up 0↔1, 2↔3, …), retargeted the
  same way.

Two reference rows frame them: ``truth`` (the rendered clip itself: MediaPipe's own keypoint
error on mannequin renders, which bounds every row's) and ``round_trip`` (the clip through the
base's VAE: the ceiling of the pixel and flow columns, since every frame is drawn by that VAE).

Columns, over frames 1–15 (frame 0 is the reference in every row): flow cosine with the ground
truth, PSNR and SSIM, the share of frames where MediaPipe (``mannequin.judge``) finds a person,
the keypoint error (px at 64²) of the 12 limb points against the ground-truth keypoints and
against the pose the take was driven with, the action classifier's accuracy (the few-shot
benchmark's classifier), and seconds per clip. Every scored clip is one line of
``WORK/results.jsonl``; a restart skips them, so the run can stop anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mannequin.actions import ACTIONS, PROMPTS

DEFAULT_WORK = Path.home() / ".cache" / "flash-previs" / "mannequin-control-benchmark"
REFERENCE_ROWS = ("truth", "round_trip")
GENERATED_ROWS = ("prompt", "rig", "mediapipe", "other")
ROWS = REFERENCE_ROWS + GENERATED_ROWS
ROW_NAMES = {
    "truth": "ground truth (the rendered clip)",
    "round_trip": "ground truth through the VAE (ceiling)",
    "prompt": "prompt only (no control)",
    "rig": "pose from the ground-truth rig",
    "mediapipe": "pose from MediaPipe on the ground-truth video",
    "other": "pose from another clip of the action, retargeted",
}
METRICS = ("flow_cos", "psnr", "ssim", "found", "kp_truth", "kp_control", "action_acc", "seconds")
METRIC_HEADERS = {"flow_cos": "Flow cos ↑", "psnr": "PSNR₁₋₁₅ (dB) ↑", "ssim": "SSIM₁₋₁₅ ↑",
                  "found": "person found ↑", "kp_truth": "kp err vs truth (px) ↓",
                  "kp_control": "kp err vs its pose (px) ↓", "action_acc": "Action acc ↑",
                  "seconds": "s / clip"}
# OpenPose's limb points (shoulders, elbows, wrists, hips, knees, ankles): those the judge's
# keypoint error uses (``mannequin.judge.LIMB_LANDMARKS``), in the 18-point order.
LIMB_POINTS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)


@dataclass(frozen=True)
class ControlBenchmarkConfig:
    model: str = "mannequin"
    controlnet: str | None = None  # default: the model's own (MODEL/controlnet_pose)
    references: int = 8  # test-split clips per action
    actions: tuple[str, ...] = ()  # empty: all of them
    strength: float = 1.0
    ddim_steps: int = 25
    guidance: float = 7.5
    seed: int = 0
    data_seed: int = 0
    size: int = 64
    frames: int = 16
    classifier_clips: int = 40  # the few-shot benchmark's classifier (shared with it when these match)
    classifier_steps: int = 600
    workers: int = 2

    def key(self) -> str:
        """Fingerprint of what decides a clip's numbers (the weights' identities are added by ``run``)."""
        from mannequin.judge import MODEL_COMPLEXITY, UPSCALE
        from mannequin.metrics import FLOW_METHOD

        decisive = {k: v for k, v in asdict(self).items() if k not in ("model", "controlnet", "references", "actions", "workers")}
        decisive |= {"flow": FLOW_METHOD, "judge": [UPSCALE, MODEL_COMPLEXITY]}
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:12]


def smoke_config(**changes) -> ControlBenchmarkConfig:
    """The whole chain in about a minute: 2 references (``other`` needs a second), 2 DDIM steps."""
    return ControlBenchmarkConfig(**({"references": 2, "ddim_steps": 2, "classifier_clips": 2, "classifier_steps": 4,
                                      "workers": 1} | changes))


# ---------------------------------------------------------------------------- scoring

def ssim(generated: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM (OpenCV's ``quality`` module: Gaussian 11×11 window, σ 1.5) over the frames
    and RGB channels of two uint8 (F, H, W, 3) clips."""
    import cv2

    return float(np.mean([np.mean(cv2.quality.QualitySSIM_compute(g, t)[0][:3])
                          for g, t in zip(np.ascontiguousarray(generated), np.ascontiguousarray(truth))]))


def limb_error(detection: np.ndarray, target: np.ndarray, width: int, height: int) -> float | None:
    """Mean distance (px) between a MediaPipe detection (33, 3) in pixels and target OpenPose
    keypoints (18, 3) normalised to the image, over the limb points the target has; None if none."""
    from flash_engine.pose.driving import openpose_from_mediapipe
    from flash_engine.pose.format import MIN_CONFIDENCE

    found, _ = openpose_from_mediapipe(detection)
    picked = [p for p in LIMB_POINTS if target[p, 2] >= MIN_CONFIDENCE]
    if not picked:
        return None
    wanted = target[picked, :2] * [width, height]
    return float(np.linalg.norm(found[picked, :2] - wanted, axis=1).mean())


def clip_limb_error(detections: list, targets: np.ndarray, width: int, height: int) -> float | None:
    """Mean of ``limb_error`` over the frames with a detection; None if there is none."""
    errors = [limb_error(d, t, width, height) for d, t in zip(detections, targets) if d is not None]
    errors = [e for e in errors if e is not None]
    return float(np.mean(errors)) if errors else None


def score_clip(clip: np.ndarray, truth: np.ndarray, truth_body: np.ndarray, control_body: np.ndarray | None,
               detections: list, classifier, action: str) -> dict:
    """One clip's figures over frames 1..F-1 (``detections``: the judge's, for those frames)."""
    from mannequin.benchmark import ACTION_NAMES
    from mannequin.classifier import predict
    from mannequin.metrics import flow_cosine, psnr

    height, width = truth.shape[1:3]
    probabilities = predict(classifier, [clip])[0]
    return {
        "flow_cos": flow_cosine(clip, truth),
        "psnr": psnr(clip[1:], truth[1:]),
        "ssim": ssim(clip[1:], truth[1:]),
        "found": sum(d is not None for d in detections) / len(detections),
        "kp_truth": clip_limb_error(detections, truth_body[1:], width, height),
        "kp_control": None if control_body is None else clip_limb_error(detections, control_body[1:], width, height),
        "action_acc": float(int(probabilities.argmax()) == ACTION_NAMES.index(action)),
    }


# ---------------------------------------------------------------------------- poses

def driving_poses(folder: Path, frames: int, reference: np.ndarray, reference_pose,
                  person_in_reference: bool) -> tuple[object, str]:
    """The driving-clip path (``animate --driving``): MediaPipe's poses of the clip in
    ``folder``, retargeted to the person found in ``reference``; where MediaPipe finds none in
    the reference (``person_in_reference``), to its given pose instead (``--reference-pose``,
    the error's own fix). Returns (PoseSequence, "detected" | "given")."""
    from flash_engine.pose.driving import poses_from_driving

    if person_in_reference:
        return poses_from_driving(folder, frames, 0, reference), "detected"
    return poses_from_driving(folder, frames, 0, None, reference_pose), "given"


def driving_partner(index: int, references: int) -> int:
    """The test clip that drives reference ``index`` in the ``other`` row: clips pair up (0↔1,
    2↔3, …), so the pairing does not change with ``--references`` and scored rows stay valid;
    with an odd count the last clip is driven by the one before it."""
    partner = index ^ 1
    return partner if partner < references else index - 1


# ---------------------------------------------------------------------------- the run

def run(config: ControlBenchmarkConfig, work: Path = DEFAULT_WORK, cache: Path | None = None,
        bench_work: Path | None = None, log=print) -> dict:
    """Run (or finish) the benchmark; returns {"rows": [...], "table": [...], ...}."""
    import torch
    from PIL import Image

    from flash_engine.errors import FlashError
    from flash_engine.models.controlnet import (check_controlnet_fits, check_controlnet_folder, controlnet_identity,
                                                find_controlnet, load_controlnet)
    from flash_engine.models.loading import load_base, model_limits
    from flash_engine.pipeline import AnimationSettings, Control, FlashPipeline
    from flash_engine.pose.draw import draw_pose_maps
    from flash_engine.pose.driving import detect_person
    from flash_engine.pose.format import read_pose_file
    from mannequin import benchmark
    from mannequin.generate import clip_path, default_cache_dir, generate, keypoints_path
    from mannequin.judge import PoseJudge

    work = Path(work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(cache).expanduser() if cache else default_cache_dir()
    c = config
    if c.references < 2:
        raise SystemExit("--references must be at least 2 (the 'other' row is driven by another clip)")
    actions = c.actions or tuple(ACTIONS)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise SystemExit(f"unknown action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")
    folder = find_controlnet("pose", c.controlnet, c.model).resolve()  # checked before anything loads
    check_controlnet_fits(folder, check_controlnet_folder(folder, "pose"), c.model,
                          model_limits(c.model)["size_multiple"], "pose", None)
    base = load_base(c.model)
    run_key = f"{c.key()}-{base.identity[:8]}-{controlnet_identity(folder)[:8]}"
    started = time.perf_counter()

    # The few-shot benchmark's world and classifier (shared: trained once, cached in its work folder).
    card = benchmark.model_card(c.model)
    held_out = tuple(card.get("held_out_actions", ()))
    bench_config = benchmark.BenchmarkConfig(model=c.model, references=c.references, seed=c.seed,
                                             data_seed=c.data_seed, size=c.size, frames=c.frames, workers=c.workers,
                                             classifier_clips=c.classifier_clips, classifier_steps=c.classifier_steps)
    world = benchmark.prepare_world(bench_config, cache, held_out, log)
    generate(cache, actions, c.references, "test", c.data_seed, c.size, c.frames, "png", c.workers, log,
             keypoints=True)
    classifier, classifier_meta = benchmark.get_classifier(world, Path(bench_work or benchmark.DEFAULT_WORK)
                                                           .expanduser(), log)

    results = benchmark.ScoredRows(work / "results.jsonl", run_key,
                                   lambda row: (row["row"], row["action"], row["index"]))
    done, record = results.rows, results.add

    pipeline = FlashPipeline(base)
    net = pipeline.place(load_controlnet(folder))

    def animate(reference: np.ndarray, action: str, index: int, pose) -> tuple[np.ndarray, float]:
        settings = AnimationSettings(prompt=PROMPTS[action], num_frames=c.frames, steps=c.ddim_steps,
                                     guidance=c.guidance, seed=c.seed + index, width=c.size, height=c.size)
        controls = []
        if pose is not None:  # drawn as a --pose / --driving take draws it (TakeControl.condition)
            maps = torch.from_numpy(draw_pose_maps(pose, c.size, c.size).astype(np.float32) / 255.0)
            controls = [Control(net=net, frames=maps.permute(0, 3, 1, 2).contiguous(), scale=c.strength, name="pose")]
        clip_started = time.perf_counter()
        frames = pipeline(Image.fromarray(reference), settings, controls=controls).frames
        return frames, time.perf_counter() - clip_started

    with PoseJudge() as judge:
        for action in actions:
            for index in range(c.references):
                other = driving_partner(index, c.references)
                other_name = clip_path(cache / "test", action, other, "png").name
                stale = done.get(("other", action, index))
                if stale is not None and stale.get("driving") not in (None, other_name):
                    del done[("other", action, index)]  # driven by another clip: scored again
                todo = [r for r in ROWS if (r, action, index) not in done]
                if not todo:
                    continue
                truth_folder = clip_path(cache / "test", action, index, "png")
                truth = world.clip("test", action, index)
                truth_pose = read_pose_file(keypoints_path(truth_folder))
                person_in_reference = None  # asked once per reference, when a driving row needs it
                for row_name in todo:
                    base_row = {"key": run_key, "row": row_name, "action": action, "index": index,
                                "held_out": action in held_out}
                    pose, extra, seconds = None, {}, None
                    try:
                        if row_name == "truth":
                            clip = truth
                        elif row_name == "round_trip":
                            clip = benchmark.vae_round_trip(base, truth)
                        else:
                            if row_name == "rig":
                                pose = truth_pose
                            elif row_name in ("mediapipe", "other"):
                                source = truth_folder if row_name == "mediapipe" else \
                                    clip_path(cache / "test", action, other, "png")
                                pose_started = time.perf_counter()
                                if person_in_reference is None:
                                    person_in_reference = detect_person(truth[0]) is not None
                                pose, retarget = driving_poses(source, c.frames, truth[0], truth_pose,
                                                               person_in_reference)
                                extra = {"driving": source.name, "retarget": retarget,
                                         "pose_s": round(time.perf_counter() - pose_started, 2)}
                            clip, seconds = animate(truth[0], action, index, pose)
                    except FlashError as err:  # e.g. a driving clip in which MediaPipe finds no person
                        record(base_row | {"failed": str(err)})
                        log(f"{action} {index} {row_name}: {err}")
                        continue
                    detections = judge.clip(clip[1:])
                    control_body = pose.body if pose is not None else None
                    figures = score_clip(clip, truth, truth_pose.body, control_body, detections, classifier, action)
                    record(base_row | figures | extra | {"seconds": seconds})
                    log(f"{action} {index} {row_name}: flow {figures['flow_cos']:.3f} found {figures['found']:.2f} "
                        f"kp {figures['kp_truth'] if figures['kp_truth'] is None else round(figures['kp_truth'], 2)}"
                        + (f" ({seconds:.1f} s)" if seconds else ""))
    rows = [r for k, r in done.items() if k[1] in actions and k[2] < c.references
            and (k[0] != "other" or r.get("driving") in (None, clip_path(cache / "test", k[1],
                                                                           driving_partner(k[2], c.references),
                                                                           "png").name))]
    return {"rows": rows, "table": summarise(rows), "paired": paired(rows), "classifier": classifier_meta,
            "held_out": list(held_out), "run_key": run_key, "base_identity": base.identity,
            "controlnet": str(folder), "controlnet_identity": controlnet_identity(folder),
            "config": asdict(config), "wall_s": round(time.perf_counter() - started, 1),
            "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------- the report

def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error over references (nan with fewer than 2)."""
    values = np.asarray(values, dtype=float)
    error = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), error


def summarise(rows: list[dict], group: str = "all") -> list[dict]:
    """Per row kind: mean ± standard error over references of each metric (those it has),
    for ``group`` "all", "train" (the base's training actions) or "held_out"."""
    picked = [r for r in rows if group == "all" or r["held_out"] == (group == "held_out")]
    table = []
    for name in ROWS:
        members = [r for r in picked if r["row"] == name]
        if not members:
            continue
        scored = [r for r in members if "failed" not in r]
        summary = {"row": name, "clips": len(members), "failed": len(members) - len(scored)}
        for metric in METRICS:
            values = [r[metric] for r in scored if r.get(metric) is not None]
            summary[metric] = mean_and_error(values) if values else None
            summary[f"{metric}_clips"] = len(values)
        table.append(summary)
    return table


def paired(rows: list[dict], metric: str = "flow_cos", against: str = "prompt") -> dict:
    """Each control row minus ``against`` on the same references: mean ± standard error of the
    differences, and how many references it was higher on."""
    by_key = {(r["row"], r["action"], r["index"]): r for r in rows if r.get(metric) is not None}
    result = {}
    for name in GENERATED_ROWS:
        if name == against:
            continue
        pairs = [(by_key[(name, a, i)][metric], base[metric]) for (row, a, i), base in by_key.items()
                 if row == against and (name, a, i) in by_key]
        if pairs:
            differences = [x - y for x, y in pairs]
            result[name] = {"mean": mean_and_error(differences), "higher": sum(d > 0 for d in differences),
                            "pairs": len(pairs)}
    return result


def _cell(value, metric: str) -> str:
    if value is None:
        return "–"
    mean, error = value
    digits = 2 if metric in ("psnr", "kp_truth", "kp_control", "seconds") else 3
    if metric == "found" or metric == "action_acc":
        return f"{100 * mean:.0f}% ± {100 * error:.0f}" if math.isfinite(error) else f"{100 * mean:.0f}%"
    return f"{mean:.{digits}f} ± {error:.{digits}f}" if math.isfinite(error) else f"{mean:.{digits}f}"


def table_markdown(table: list[dict]) -> str:
    head = "| row | clips | " + " | ".join(METRIC_HEADERS[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in table:
        failed = f" ({row['failed']} refused)" if row["failed"] else ""
        lines.append(f"| {ROW_NAMES[row['row']]} | {row['clips']}{failed} | "
                     + " | ".join(_cell(row[m], m) for m in METRICS) + " |")
    return "\n".join(lines)


def paired_markdown(result: dict, metric: str = "flow_cos") -> str:
    lines = [f"| row − prompt only, same references | {METRIC_HEADERS[metric]} difference | higher on |", "|---|---|---|"]
    for name, figures in result.items():
        mean, error = figures["mean"]
        lines.append(f"| {ROW_NAMES[name]} | {mean:+.3f} ± {error:.3f} | {figures['higher']}/{figures['pairs']} |")
    return "\n".join(lines)


REPORT_START, REPORT_END = "<!-- control-benchmark:start -->", "<!-- control-benchmark:end -->"


def report_markdown(report: dict) -> str:
    """The generated part of the report: command, settings, machine, tables."""
    rows = report["rows"]
    ratio = None
    table = {r["row"]: r for r in report["table"]}
    if table.get("prompt", {}).get("seconds") and table.get("rig", {}).get("seconds"):
        ratio = table["rig"]["seconds"][0] / table["prompt"]["seconds"][0]
    lines = [
        REPORT_START,
        "<!-- written by `python -m mannequin.control_benchmark --report …`; edit outside these markers -->",
        "",
        f"Command: `{' '.join(report['command'])}`  ",
        f"Machine: {report['machine']}, {report['torch_threads']} torch threads; wall time "
        f"{report['wall_s'] / 60:.1f} min (this session's part).  ",
        f"Base: `{report['config']['model']}` ({report['base_identity'][:8]}); pose ControlNet "
        f"`{report['controlnet']}` ({report['controlnet_identity'][:8]}), strength {report['config']['strength']}.  ",
        f"References: {report['config']['references']} test-split clips of each of the {len(ACTIONS)} actions "
        f"(held out from the base and the ControlNet: {', '.join(report['held_out'])}); "
        f"{report['config']['ddim_steps']} DDIM steps, guidance {report['config']['guidance']}.  ",
        f"Action judge: the few-shot benchmark's classifier (test-split accuracy "
        f"{report['classifier']['test_accuracy']:.3f}).",
        "",
        "All actions, mean ± standard error over references:",
        "",
        table_markdown(report["table"]),
        "",
        "Training actions of the base only:",
        "",
        table_markdown(summarise(rows, "train")),
        "",
        "Held-out actions only:",
        "",
        table_markdown(summarise(rows, "held_out")),
        "",
        "Paired with prompt only on the same references:",
        "",
        paired_markdown(report["paired"]),
        "",
    ]
    if ratio is not None:
        lines += [f"Seconds per clip with the pose ControlNet ÷ without (same run): {ratio:.2f}.", ""]
    lines += ["<details><summary>Settings (ControlBenchmarkConfig)</summary>", "", "```json",
              json.dumps(report["config"], indent=1), "```", "</details>", REPORT_END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.control_benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mannequin")
    parser.add_argument("--controlnet", help="the pose ControlNet folder (default: the model's own)")
    parser.add_argument("--references", type=int, help="test-split clips per action (default 8)")
    parser.add_argument("--actions", nargs="+", help="only these actions (default: all 11)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 25)")
    parser.add_argument("--strength", type=float, help="the ControlNet's conditioning scale (default 1)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="results and state (resumable)")
    parser.add_argument("--bench-work", type=Path, help="the few-shot benchmark's work folder (its classifier)")
    parser.add_argument("--cache", type=Path, help="mannequin clip cache")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--report", type=Path, help="write the tables into this markdown file (between markers)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--smoke", action="store_true", help="2 references, 2 steps: the chain in about a minute")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    import torch

    from flash_engine.errors import FlashError
    from flash_engine.library_logs import quiet_libraries
    from mannequin.benchmark import write_report
    from mannequin.judge import JudgeUnavailable

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    changes = {k: v for k, v in {"model": args.model, "controlnet": args.controlnet, "references": args.references,
                                 "ddim_steps": args.steps, "strength": args.strength,
                                 "actions": tuple(args.actions) if args.actions else None}.items() if v is not None}
    config = smoke_config(**changes) if args.smoke else ControlBenchmarkConfig(**changes)
    bench_work = args.bench_work or (args.work if args.smoke else None)  # a smoke classifier stays out of the real one's way
    log = (lambda *_: None) if args.quiet else (lambda message: print(message, flush=True))
    try:
        report = run(config, args.work, args.cache, bench_work, log)
    except (FlashError, JudgeUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["command"] = ["python", "-m", "mannequin.control_benchmark", *(argv if argv is not None else sys.argv[1:])]
    report["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip() + f", {platform.system()}"
    block = report_markdown(report)
    print(block)
    if args.report:
        write_report(args.report, block, REPORT_START, REPORT_END, "# Motion control on the mannequin world\n\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
