"""Sizes, reference fitting, staged output folders, weights discovery."""

import pytest
from PIL import Image

from flash_engine.errors import FlashError
from flash_engine.images import fit_reference, resolve_size
from flash_engine.output import staged_folder


@pytest.mark.parametrize("image, width, height, expected", [
    ((1920, 1080), None, None, (512, 288)),
    ((1080, 1920), None, None, (288, 512)),
    ((1000, 1000), None, None, (512, 512)),
    ((1920, 1080), 256, None, (256, 144)),
    ((1920, 1080), None, 144, (256, 144)),
    ((1920, 1080), 320, 320, (320, 320)),
])
def test_resolve_size(image, width, height, expected):
    assert resolve_size(image, width, height, 512, multiple=8) == expected


def test_resolve_size_rejects_non_multiples_with_a_suggestion():
    with pytest.raises(FlashError, match=r"width 100 is not a multiple of 8, this model's size step \(use 96 or 104\)"):
        resolve_size((100, 100), 100, None, 512, multiple=8)


def test_fit_reference_covers_and_centre_crops():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 50, 100))  # a red band on the left quarter
    fitted = fit_reference(image, 64, 64)
    assert fitted.size == (64, 64)
    assert fitted.getpixel((0, 32))[0] < 50  # the left band was cropped away, not squeezed in


def test_staged_folder_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "clip"
    with pytest.raises(RuntimeError):
        with staged_folder(dest) as staging:
            (staging / "frame_0001.png").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_overwrite_keeps_old_until_success(tmp_path):
    dest = tmp_path / "clip"
    dest.mkdir()
    (dest / "old.txt").write_text("old")

    def written(folder):  # the folder's manifest claims old.txt (and new.txt, once written)
        return dict.fromkeys(("old.txt", "new.txt"))

    with pytest.raises(RuntimeError):
        with staged_folder(dest, overwrite=True, written_files=written):
            raise RuntimeError("boom")
    assert (dest / "old.txt").read_text() == "old"
    with staged_folder(dest, overwrite=True, written_files=written) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]


def test_default_model_prefers_env_then_fetched_weights(tmp_path, monkeypatch):
    from flash_engine.models import loading
    from flash_engine.models.loading import save_folder
    from flash_engine.models.tiny import tiny_parts
    from flash_engine.weights import resolve_model_source

    monkeypatch.setattr(loading, "MANNEQUIN_DIR", tmp_path / "no-mannequin")
    monkeypatch.delenv("FLASH_MODEL", raising=False)
    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert resolve_model_source("default") == "tiny"
    save_folder(tiny_parts(), tmp_path / "weights")
    assert resolve_model_source("default") == str(tmp_path / "weights")
    monkeypatch.setenv("FLASH_MODEL", "/elsewhere")
    assert resolve_model_source("default") == "/elsewhere"
    assert resolve_model_source("tiny") == "tiny"


def test_default_model_is_mannequin_when_its_folder_is_complete_else_tiny(tmp_path, monkeypatch):
    from flash_engine.models import loading
    from flash_engine.models.loading import save_folder
    from flash_engine.models.tiny import tiny_parts
    from flash_engine.weights import builtin_model, resolve_model_source

    monkeypatch.delenv("FLASH_MODEL", raising=False)
    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "no-fetched-weights"))
    folder = tmp_path / "mannequin"
    monkeypatch.setattr(loading, "MANNEQUIN_DIR", folder)
    assert builtin_model() == "tiny" and resolve_model_source("default") == "tiny"  # absent
    folder.mkdir()
    assert not loading.mannequin_available() and resolve_model_source("default") == "tiny"  # empty
    save_folder(tiny_parts(), folder)
    assert loading.mannequin_available()
    assert builtin_model() == "mannequin" and resolve_model_source("default") == "mannequin"
    for name in ("unet", "vae", "text_encoder", "motion_adapter"):  # one weights file gone: incomplete
        weights = next((folder / name).glob("*.safetensors"))
        weights.rename(tmp_path / "stash")
        assert resolve_model_source("default") == "tiny", name
        (tmp_path / "stash").rename(weights)
    assert resolve_model_source("default") == "mannequin"
    save_folder(tiny_parts(), tmp_path / "fetched")  # fetched weights and $FLASH_MODEL still come first
    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "fetched"))
    assert resolve_model_source("default") == str(tmp_path / "fetched")
    monkeypatch.setenv("FLASH_MODEL", "tiny")
    assert resolve_model_source("default") == "tiny"


def _point_hub_at(monkeypatch, url: str) -> None:
    import huggingface_hub.constants as constants  # read at import: point the loaded copy too

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def test_fetch_asks_for_safetensors_only_and_reports_offline(tmp_path, monkeypatch):
    from flash_engine import weights

    patterns = [p for _, _, files in weights.BASE_WEIGHTS for p in files]
    weight_patterns = [p for p in patterns if "." in p and not p.endswith(".json")]
    assert weight_patterns and all(p.endswith(".safetensors") for p in weight_patterns)
    _point_hub_at(monkeypatch, "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(FlashError) as err:
        weights.fetch(tmp_path / "w")
    assert err.value.code == "download_failed" and "network" in str(err.value)
    assert weights.download_state(tmp_path / "w")["state"] == "none"


def test_fetch_lays_out_what_the_loader_reads(tmp_path, monkeypatch):
    """A stand-in hub that serves the tiny model: fetch must end in a loadable folder."""
    from flash_engine import weights
    from flash_engine.models.loading import load_base
    from tests.support.hub_standin import Hub, tiny_repos

    hub = Hub(tiny_repos(tmp_path / "hub")).start()
    try:
        _point_hub_at(monkeypatch, hub.url)
        dest = weights.fetch(tmp_path / "fetched")
    finally:
        hub.stop()
    assert load_base(dest).unet is not None


def test_finished_folder_has_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "clip") as staging:
            (staging / "a.txt").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "clip").stat().st_mode & 0o777 == 0o755
