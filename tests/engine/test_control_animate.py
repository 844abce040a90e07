"""animate --pose / --depth (and --driving's checks): every input and ControlNet checked before
any model loads, one-line errors; the take records what steered it; ControlNets stay warm."""

import json

import numpy as np
import pytest
from PIL import Image

from flash_engine.errors import FlashError
from flash_engine.requests import AnimateRequest
from tests.support.controls import save_tiny_controlnet, write_depth, write_poses

FRAMES, SIZE = 3, 32
FAST = dict(model="tiny", frames=FRAMES, steps=1, width=SIZE, height=SIZE, seed=1, prompt="a person is walking.")


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory):
    return save_tiny_controlnet(tmp_path_factory.mktemp("controlnets") / "pose")


@pytest.fixture(scope="module")
def depth_controlnet(tmp_path_factory):
    return save_tiny_controlnet(tmp_path_factory.mktemp("controlnets") / "depth", seed=2)


@pytest.fixture
def poses(tmp_path):
    return write_poses(tmp_path / "take.pose.json", FRAMES, SIZE, SIZE)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any weight load fails the test: the checks must come first."""
    from flash_engine.models import controlnet, loading

    def loaded(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(loading, "load_base", loaded)
    monkeypatch.setattr(controlnet, "load_controlnet", loaded)


def request(reference_png, tmp_path, **fields):
    return AnimateRequest(image=str(reference_png), out=str(tmp_path / "take"), **{**FAST, **fields})


def refused(req) -> FlashError:
    from flash_engine.animate import resolve

    with pytest.raises(FlashError) as err:
        resolve(req)
    assert "\n" not in str(err.value)
    return err.value


# ---- pose --------------------------------------------------------------------------------


def test_a_pose_file_resolves_to_its_poses_and_the_given_controlnet(reference_png, tmp_path, poses, controlnet,
                                                                    no_model_loads):
    from flash_engine.animate import resolve
    from flash_engine.models.controlnet import controlnet_identity
    from flash_engine.output import file_digest

    job = resolve(request(reference_png, tmp_path, pose=str(poses), pose_controlnet=str(controlnet),
                          pose_strength=0.7, pose_end=0.8))
    (control,) = job.controls
    assert control.kind == "pose" and control.pose.frames == FRAMES
    assert control.source == {"pose": str(poses.resolve()), "sha256": file_digest(poses)}
    assert (control.strength, control.start, control.end) == (0.7, 0.0, 0.8)
    assert control.controlnet == controlnet.resolve() and control.controlnet_identity == controlnet_identity(controlnet)
    maps = control.condition(SIZE, SIZE)
    assert maps.shape == (FRAMES, SIZE, SIZE, 3) and maps.dtype == np.float32
    assert 0 <= maps.min() and maps.max() <= 1 and maps.max() > 0.5  # a drawn skeleton on black
    assert not np.array_equal(maps[0], maps[-1])  # the person moved


@pytest.mark.parametrize("frames, size, found", [(FRAMES + 1, (SIZE, SIZE), "frames"),
                                                 (FRAMES, (2 * SIZE, SIZE), "aspect")])
def test_a_pose_file_for_another_take_is_refused_before_any_model_loads(reference_png, tmp_path, controlnet,
                                                                         no_model_loads, frames, size, found):
    path = write_poses(tmp_path / "other.pose.json", frames, *size)
    err = refused(request(reference_png, tmp_path, pose=str(path), pose_controlnet=str(controlnet)))
    assert err.code == "bad_pose" and found in str(err)


def test_nan_coordinates_in_a_pose_file_are_refused(reference_png, tmp_path, poses, controlnet, no_model_loads):
    data = poses.read_text().replace("[0.5,0.15,1.0]", "[NaN,0.15,1.0]", 1)
    assert "NaN" in data
    poses.write_text(data)
    err = refused(request(reference_png, tmp_path, pose=str(poses), pose_controlnet=str(controlnet)))
    assert err.code == "bad_pose"


# ---- depth -------------------------------------------------------------------------------


def test_a_16_bit_depth_folder_is_read_in_name_order_at_full_precision(reference_png, tmp_path, depth_controlnet,
                                                                       no_model_loads):
    from flash_engine.animate import resolve

    names = ["d_2.png", "d_10.png", "d_1.png"]
    folder = write_depth(tmp_path / "depth", FRAMES, SIZE, SIZE, names=names)
    job = resolve(request(reference_png, tmp_path, depth=str(folder), depth_controlnet=str(depth_controlnet)))
    (control,) = job.controls
    assert control.source == {"depth": str(folder.resolve()), "files": ["d_1.png", "d_2.png", "d_10.png"]}
    expected = np.stack([np.asarray(Image.open(folder / name), dtype=np.float64) / 65535
                         for name in ["d_1.png", "d_2.png", "d_10.png"]])
    assert np.abs(control.depth - expected).max() < 1e-6  # 16 bits kept, not cut to 8
    condition = control.condition(SIZE, SIZE)
    assert condition.shape == (FRAMES, SIZE, SIZE, 3) and np.array_equal(condition[..., 0], condition[..., 2])


def test_8_bit_depth_of_the_same_aspect_is_accepted_and_resized(tmp_path, no_model_loads):
    from flash_engine.depth import read_depth_folder

    folder = write_depth(tmp_path / "depth", FRAMES, 3 * SIZE, 3 * SIZE, bits=8)
    depth, _ = read_depth_folder(folder, FRAMES, SIZE, SIZE)
    assert depth.shape == (FRAMES, SIZE, SIZE)
    assert abs(depth.max() - 0.9) < 0.01 and abs(depth.min() - 0.2) < 0.02  # near bright, far dark: as given


def test_depth_follows_the_reference_crop(tmp_path):
    """A depth render at the reference's aspect is cropped as the reference is: a 2:1 render of
    a take made square keeps its centre."""
    from flash_engine.depth import read_depth_folder

    folder = tmp_path / "depth"
    folder.mkdir()
    for frame in range(FRAMES):
        values = np.zeros((SIZE, 2 * SIZE), dtype=np.uint16)
        values[:, SIZE // 2: 3 * SIZE // 2] = 65535  # the centre square is near
        Image.fromarray(values).save(folder / f"{frame}.png")
    depth, _ = read_depth_folder(folder, FRAMES, SIZE, SIZE, reference_size=(200, 100))
    assert depth[:, :, 2:-2].min() > 0.99  # exactly the centre square
    with pytest.raises(FlashError):  # without a reference of that aspect, it is another shot
        read_depth_folder(folder, FRAMES, SIZE, SIZE)


@pytest.mark.parametrize("make, code, words", [
    (lambda d: write_depth(d, FRAMES + 2, SIZE, SIZE), "bad_depth", (f"{FRAMES + 2} images", f"{FRAMES} frames")),
    (lambda d: write_depth(d, FRAMES, 2 * SIZE, SIZE), "bad_depth", ("64x32", "aspect")),
    (lambda d: d.mkdir(), "bad_depth", ("no images",)),
    (lambda d: None, "bad_depth", ("not found",)),
    (lambda d: [d.mkdir(), *(Image.new("RGB", (SIZE, SIZE), (255, 0, i)).save(d / f"{i}.png") for i in range(FRAMES))],
     "bad_depth", ("colour",)),
    (lambda d: [d.mkdir(), *((d / f"{i}.png").write_bytes(b"not a png") for i in range(FRAMES))],
     "bad_depth", ("not a readable image",)),
], ids=["count", "aspect", "empty", "missing", "colour", "unreadable"])
def test_bad_depth_is_refused_before_any_model_loads(reference_png, tmp_path, depth_controlnet, no_model_loads,
                                                     make, code, words):
    folder = tmp_path / "depth"
    make(folder)
    err = refused(request(reference_png, tmp_path, depth=str(folder), depth_controlnet=str(depth_controlnet)))
    assert err.code == code and all(word in str(err) for word in words), str(err)


# ---- ControlNet folders ------------------------------------------------------------------


def test_a_controlnet_for_another_base_is_refused_before_its_weights_load(reference_png, tmp_path, poses,
                                                                           no_model_loads):
    other = save_tiny_controlnet(tmp_path / "other", cross_attention_dim=16)
    err = refused(request(reference_png, tmp_path, pose=str(poses), pose_controlnet=str(other)))
    assert err.code == "base_mismatch" and "cross_attention_dim 16 vs 32" in str(err)
    assert "--pose-controlnet" in str(err)


def test_a_controlnet_whose_condition_lands_on_another_latent_size_is_refused(tmp_path, controlnet):
    from flash_engine.models.controlnet import check_controlnet_fits, check_controlnet_folder

    config = check_controlnet_folder(controlnet, "pose")
    check_controlnet_fits(controlnet, config, "tiny", 8, "pose")  # 3 stride-2 stages: 8x, as tiny's VAE
    with pytest.raises(FlashError) as err:
        check_controlnet_fits(controlnet, config, "tiny", 4, "pose")  # a model with a 4x VAE
    assert err.value.code == "base_mismatch" and "8x" in str(err.value)


def _pickle_only(folder):
    import torch

    save_tiny_controlnet(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "diffusion_pytorch_model.bin")


def _truncated(folder):
    save_tiny_controlnet(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])


def _custom_code(folder):
    save_tiny_controlnet(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Net"}}))


@pytest.mark.parametrize("damage, code, words", [
    (_pickle_only, "weights_incomplete", ("pickle",)),
    (_truncated, "weights_incomplete", ("truncated",)),
    (_custom_code, "weights_unsafe", ("custom code",)),
    (lambda folder: None, "weights_missing", ("not found",)),
], ids=["pickle", "truncated", "custom-code", "missing"])
def test_unusable_controlnet_folders_are_refused(reference_png, tmp_path, poses, no_model_loads, damage, code, words):
    folder = tmp_path / "net"
    damage(folder)
    err = refused(request(reference_png, tmp_path, pose=str(poses), pose_controlnet=str(folder)))
    assert err.code == code and all(word in str(err) for word in words), str(err)


def test_without_a_controlnet_the_error_names_the_flag(reference_png, tmp_path, poses, no_model_loads):
    err = refused(request(reference_png, tmp_path, pose=str(poses)))
    assert err.code == "weights_missing" and "--pose-controlnet" in str(err) and "tiny" in str(err)


def test_a_model_folders_own_controlnet_is_its_default(tmp_path, controlnet):
    import shutil

    from flash_engine.models.controlnet import find_controlnet
    from flash_engine.models.loading import save_folder
    from flash_engine.models.tiny import tiny_parts

    model = save_folder(tiny_parts(), tmp_path / "model")
    with pytest.raises(FlashError):
        find_controlnet("pose", None, str(model))
    shutil.copytree(controlnet, model / "controlnet_pose")
    assert find_controlnet("pose", None, str(model)) == model / "controlnet_pose"
    assert find_controlnet("pose", str(controlnet), str(model)) == controlnet  # the flag wins
    with pytest.raises(FlashError):  # its own pose net is not a depth net
        find_controlnet("depth", None, str(model))


def test_an_sd15_model_defaults_to_the_fetched_public_controlnet(tmp_path, monkeypatch):
    from flash_engine.models.controlnet import SD15_GEOMETRY, find_controlnet, is_sd15
    from flash_engine.weights import COMPLETE_STAMP, public_controlnet_dir

    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "weights"))
    model = tmp_path / "sd15"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text(json.dumps({**SD15_GEOMETRY, "sample_size": 64}))
    assert is_sd15(model) and is_sd15("sd15-random") and not is_sd15("tiny") and not is_sd15("mannequin")
    with pytest.raises(FlashError) as err:
        find_controlnet("depth", None, str(model))
    assert "weights fetch --control" in str(err.value) and "control_v11f1p_sd15_depth" in str(err.value)
    public = public_controlnet_dir("depth")
    public.mkdir(parents=True)
    (public / COMPLETE_STAMP).write_text(json.dumps({"files": []}))
    assert find_controlnet("depth", None, str(model)) == public


# ---- the whole take ----------------------------------------------------------------------


def test_a_pose_and_depth_take_records_what_steered_it(reference_png, tmp_path, poses, controlnet, depth_controlnet):
    from flash_engine.animate import resolve, run_animate
    from flash_engine.models.controlnet import controlnet_identity
    from flash_engine.warm import PipelineCache

    depth = write_depth(tmp_path / "depth", FRAMES, SIZE, SIZE)
    job = resolve(request(reference_png, tmp_path, pose=str(poses), pose_controlnet=str(controlnet),
                          depth=str(depth), depth_controlnet=str(depth_controlnet), control_strength=0.9,
                          depth_start=0.2))
    cache = PipelineCache()
    pipeline = cache.get(job.key)
    metadata = run_animate(job, pipeline, action_slot=cache.slot, controlnets=cache.controlnets(job.controlnet_keys))
    written = json.loads((tmp_path / "take" / "flash.json").read_text())
    assert written == metadata and len(written["frames"]) == FRAMES
    pose, depth_entry = written["control"]
    assert pose["control"] == "pose" and pose["source"]["pose"] == str(poses.resolve())
    assert len(pose["source"]["sha256"]) == 64
    assert (pose["strength"], pose["start"], pose["end"]) == (0.9, 0.0, 1.0)
    assert pose["controlnet"] == {"folder": str(controlnet.resolve()), "identity": controlnet_identity(controlnet)}
    assert depth_entry["source"] == {"depth": str(depth.resolve()), "files": [f"depth_{i + 1}.png" for i in range(3)]}
    assert (depth_entry["strength"], depth_entry["start"], depth_entry["end"]) == (0.9, 0.2, 1.0)
    assert depth_entry["controlnet"]["identity"] == controlnet_identity(depth_controlnet)
    assert cache.loads == 3  # the model and two ControlNets


def test_controlnets_stay_warm_between_takes(reference_png, tmp_path, poses, controlnet, depth_controlnet):
    from flash_engine.animate import resolve
    from flash_engine.warm import PipelineCache

    cache = PipelineCache()
    job = resolve(request(reference_png, tmp_path, pose=str(poses), pose_controlnet=str(controlnet)))
    cache.get(job.key)
    first = cache.controlnets(job.controlnet_keys)
    again = cache.controlnets(resolve(request(reference_png, tmp_path, pose=str(poses),
                                              pose_controlnet=str(controlnet))).controlnet_keys)
    assert again[0] is first[0] and cache.loads == 2
    depth = write_depth(tmp_path / "depth", FRAMES, SIZE, SIZE)
    other = resolve(request(reference_png, tmp_path, depth=str(depth), depth_controlnet=str(depth_controlnet)))
    (net,) = cache.controlnets(other.controlnet_keys)
    assert net is not first[0] and cache.loads == 3
    assert list(cache.loaded_controlnets) == other.controlnet_keys  # the unused one was let go
    cache.release()
    assert cache.loaded_controlnets == {}


def test_the_cli_animates_a_pose_take_of_a_trained_action(reference_png, tmp_path, poses, controlnet, tiny_pipeline):
    from flash_engine.actions import write_action
    from flash_engine.cli import main
    from tests.engine.test_actions import trained_like_state

    action = write_action(tmp_path / "walk", name="walk", prompt="a person is walking.",
                          base_model=tiny_pipeline.base.identity, unet_state=trained_like_state(tiny_pipeline.base.unet))
    out = tmp_path / "clip"
    assert main(["animate", "--image", str(reference_png), "--weights", str(action), "--model", "tiny",
                 "--frames", str(FRAMES), "--steps", "1", "--width", str(SIZE), "--height", str(SIZE),
                 "--pose", str(poses), "--pose-controlnet", str(controlnet), "--pose-strength", "1.5",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "flash.json").read_text())
    assert meta["action"]["name"] == "walk" and meta["control"][0]["strength"] == 1.5
    assert len(meta["frames"]) == FRAMES


def test_a_missing_driving_clip_is_refused_before_any_model_loads(reference_png, tmp_path, controlnet,
                                                                   no_model_loads):
    err = refused(request(reference_png, tmp_path, driving=str(tmp_path / "nope.mp4"),
                          pose_controlnet=str(controlnet)))
    assert err.code == "bad_driving" and "nope.mp4" in str(err)


def test_a_take_without_controls_records_none(reference_png, tmp_path, tiny_pipeline):
    from flash_engine.animate import resolve, run_animate

    metadata = run_animate(resolve(request(reference_png, tmp_path)), tiny_pipeline)
    assert metadata["control"] == []


# ---- a driving clip (MediaPipe on a rendered mannequin) -----------------------------------


@pytest.fixture(scope="module")
def jump_clip(tmp_path_factory):
    pytest.importorskip("bpy")
    pytest.importorskip("mediapipe")
    import mannequin

    frames = mannequin.render_clip(mannequin.sample_spec("jump", 0, split="test"))  # (16, 64, 64, 3)
    folder = tmp_path_factory.mktemp("jump") / "clip"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index + 1}.png")
    reference = folder.parent / "reference.png"
    Image.fromarray(frames[2]).save(reference)  # the same person: the shot's still
    return folder, reference


def test_a_driving_take_reads_its_poses_before_the_model_and_keeps_them(jump_clip, tmp_path, controlnet,
                                                                         monkeypatch):
    from flash_engine import cli
    from flash_engine.pose.format import read_pose_file
    from flash_engine.warm import PipelineCache

    folder, reference = jump_clip
    order = []
    real_get = PipelineCache.get
    monkeypatch.setattr(PipelineCache, "get", lambda self, key: order.append("model") or real_get(self, key))
    import flash_engine.pose.driving as driving

    real_poses = driving.poses_from_driving
    monkeypatch.setattr(driving, "poses_from_driving",
                        lambda *args, **kwargs: order.append("poses") or real_poses(*args, **kwargs))
    out = tmp_path / "take"
    assert cli.main(["animate", "--image", str(reference), "--driving", str(folder), "--driving-start", "2",
                     "--model", "tiny", "--frames", str(FRAMES), "--steps", "1", "--long-side", "64",
                     "--pose-controlnet", str(controlnet), "--prompt", "a person is jumping.", "--out", str(out)]) == 0
    assert order == ["poses", "model"]
    meta = json.loads((out / "flash.json").read_text())
    (control,) = meta["control"]
    assert control["source"] == {"driving": str(folder.resolve()), "start": 2, "frames": FRAMES, "reference_pose": None,
                                 "fps": meta["fps"], "poses": "driving.pose.json"}
    poses = read_pose_file(out / "driving.pose.json")
    assert poses.frames == FRAMES and (poses.width, poses.height) == (64, 64)
    assert "driving.pose.json" in meta["files"] and len(meta["sha256"]["driving.pose.json"]) == 64
    assert (poses.body[:, [1, 2, 5, 8, 11], 2] > 0.5).all()  # the person's torso, every frame


def test_a_driving_clip_without_a_person_fails_before_the_model_loads(jump_clip, tmp_path, controlnet,
                                                                       no_model_loads, capsys):
    from flash_engine import cli

    _, reference = jump_clip
    black = tmp_path / "black"
    black.mkdir()
    for index in range(FRAMES):
        Image.new("RGB", (64, 64)).save(black / f"{index}.png")
    code = cli.main(["animate", "--image", str(reference), "--driving", str(black), "--model", "tiny",
                     "--frames", str(FRAMES), "--steps", "1", "--long-side", "64", "--pose-controlnet",
                     str(controlnet), "--prompt", "p", "--out", str(tmp_path / "take")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error:") and "no person" in err[-1]
    assert not (tmp_path / "take").exists()


def test_a_controlnet_folder_with_only_the_fp16_variant_loads(tmp_path):
    import torch

    from flash_engine.models.controlnet import check_controlnet_folder, load_controlnet
    from flash_engine.models.controlnet import new_controlnet
    from flash_engine.models.tiny import tiny_parts

    net = new_controlnet(tiny_parts()["unet2d"], seed=3).to(torch.float16)
    net.save_pretrained(tmp_path / "net", safe_serialization=True, variant="fp16")
    assert [p.name for p in (tmp_path / "net").glob("*.safetensors")] == ["diffusion_pytorch_model.fp16.safetensors"]
    check_controlnet_folder(tmp_path / "net", "pose")
    loaded = load_controlnet(tmp_path / "net")
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.controlnet_mid_block.weight, net.controlnet_mid_block.weight.float())


def test_the_memory_check_counts_a_model_folders_own_controlnets_only_when_a_take_uses_them(tmp_path):
    # the base's weights are its components; its controlnet_pose/ is added by controlnet_bytes
    # when a take steers with it (it used to be counted twice, and counted on takes without one)
    from flash_engine.animate import _weights_bytes

    model = tmp_path / "model"
    for folder, size in (("unet", 1000), ("vae", 300), ("controlnet_pose", 500), ("controlnet_depth", 70)):
        (model / folder).mkdir(parents=True)
        (model / folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * size)
    assert _weights_bytes(str(model)) == 1300
