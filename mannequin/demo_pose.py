"""The poses of ``make demo``'s pose-driven take: the demo reference's own person and camera
doing a held-out action, from the world's rig (no render, no detector).

    python -m mannequin.demo_pose [--action kick] [--model-dir flash_engine/models/mannequin]

The card's demo reference is frame 0 of a test-split clip (``demo.source``); this takes that
clip's spec (appearance, camera, placement), gives it ``--action`` instead, and writes the
keypoints its rig would have, through its camera, as ``MODEL/demo_pose.pose.json``, and the
card's ``demo.pose`` entry that ``flash_engine demo`` reads. With ``--truth DIR`` it also
renders that clip (what the take would look like if the model drew it perfectly), for the
docs' figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

POSE_FILE = "demo_pose.pose.json"


def demo_spec(card: dict, action: str):
    """The spec of the card's demo clip with ``action`` in place of its own."""
    from mannequin.generate import clip_spec

    demo = card["demo"]
    spec = clip_spec(demo["action"], 0, "test", 0, demo["width"], demo["frames"])
    return replace(spec, action=action)


def main(argv: list[str] | None = None) -> int:
    from flash_engine.models.loading import MANNEQUIN_DIR
    from flash_engine.pose.format import write_pose_file
    from mannequin.actions import ACTIONS, PROMPTS
    from mannequin.generate import pose_sequence

    parser = argparse.ArgumentParser(prog="python -m mannequin.demo_pose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--action", default="kick", choices=sorted(ACTIONS))
    parser.add_argument("--model-dir", type=Path, default=MANNEQUIN_DIR)
    parser.add_argument("--truth", type=Path, help="also render the clip into this folder (a new one)")
    args = parser.parse_args(argv)
    card_path = args.model_dir / "mannequin.json"
    card = json.loads(card_path.read_text())
    if "source" not in card.get("demo", {}) or "clip 0 of" not in card["demo"]["source"]:
        print(f"error: {card_path}'s demo reference is not a test-split clip's first frame; "
              "this command rebuilds the poses of that clip only", file=sys.stderr)
        return 2
    spec = demo_spec(card, args.action)
    path = args.model_dir / POSE_FILE
    if path.exists() or path.is_symlink():
        written = card["demo"].get("pose", {})
        if written.get("file") != POSE_FILE or "mannequin.demo_pose" not in written.get("source", ""):
            print(f"error: {path} is there but the card does not say this command wrote it; "
                  "it was left as it is (move it away to rebuild the demo poses)", file=sys.stderr)
            return 2
        path.unlink()  # ours: the card's demo.pose names it as this command's output
    write_pose_file(pose_sequence(spec), path)  # refuses to replace a file that appeared meanwhile
    card["demo"]["pose"] = {"file": POSE_FILE, "action": args.action, "prompt": PROMPTS[args.action],
                            "source": f"the demo reference's person and camera doing {args.action}: "
                                      "keypoints from the world's rig (python -m mannequin.demo_pose)"}
    card_path.write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} and the card's demo.pose")
    if args.truth:
        from mannequin.render import render_clip
        from PIL import Image

        args.truth.mkdir(parents=True)
        for index, frame in enumerate(render_clip(spec)):
            Image.fromarray(frame).save(args.truth / f"frame_{index:04d}.png")
        print(f"rendered the clip into {args.truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
