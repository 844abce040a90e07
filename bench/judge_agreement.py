"""Do two machines' benchmark judges agree? The GT rows of a committed benchmark json, scored
again by this machine's judge (trained, or found, in WORK/classifier), clip by clip.

    .venv/bin/python bench/judge_agreement.py --json docs/mannequin-benchmark.json \
        --work ~/.cache/flash-previs/mannequin-benchmark-t2 [--model FOLDER]

``--model``: the base the json measured (its ``base_identity``), when the shipped one has changed
since (the round trips must be that base's, or the difference is not the judge's).

The judge is retrained on each machine (mannequin.benchmark.get_classifier) and its weights
depend on the CPU's arithmetic; this prints, per held-out action and column, the mean difference
between this judge's score and the committed one (± its standard error) and the largest per
clip. docs/mannequin-benchmark.md, "Two judges", has the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = ("action_prob", "action_acc", "frame_cos", "temporal", "flow_cos")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="a benchmark json with GT (truth) rows")
    parser.add_argument("--work", type=Path, required=True, help="the benchmark's WORK folder (its judge)")
    parser.add_argument("--model", default=None, help="the base the json measured (default: its config's model)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from flash_engine.models.loading import load_base
    from mannequin.benchmark import (BenchmarkConfig, get_classifier, judge_fingerprint, prepare_world, score,
                                     vae_round_trip)
    from mannequin.generate import default_cache_dir

    torch.set_num_threads(args.threads)
    report = json.loads(args.json.read_text())
    config = BenchmarkConfig(**report["config"])
    held_out = tuple(report["held_out"])
    base = load_base(args.model or config.model)
    if base.identity != report["base_identity"]:
        raise SystemExit(f"error: {args.json} measured base {report['base_identity']}, not {base.identity}; "
                         "pass --model with that base's folder")
    world = prepare_world(config, default_cache_dir(), held_out, print)
    classifier, _ = get_classifier(world, args.work.expanduser(), print)
    committed = {r.get("judge") for r in report["rows"]} - {None}
    print(f"this judge {judge_fingerprint(classifier)}; the json's {', '.join(sorted(committed))}")
    truth = {r["action"]: r["per_clip"] for r in report["rows"] if r["variant"] == "truth"}
    for action in held_out:
        again = [score(classifier, action, vae_round_trip(base, clip), clip) for clip in world.truth[action]]
        for column in COLUMNS:
            diff = np.array([n[column] for n in again]) - np.array([o[column] for o in truth[action]])
            print(f"{action:13s} {column:12s} {diff.mean():+.4f} ± {diff.std(ddof=1) / len(diff) ** 0.5:.4f} "
                  f"(largest per clip {np.abs(diff).max():.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
