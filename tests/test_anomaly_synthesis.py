"""DRAEM-style anomaly synthesis: shapes, blend formula, determinism, DTD and procedural sources,
the draws of the 3CAD release, DRAEM and DeSTSeg, and the synthesis settings every method that
synthesises anomalies shares (`SynthesisConfig`). tests/test_synthesis_statistics.py compares the
references' draws with their own code."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threecad.anomaly_synthesis import (AnomalySynthesizer, SynthesisConfig, find_dtd_images, perlin_noise,
                                       rotate_zero_fill)
from threecad.errors import ThreecadError
from threecad.registry import available_methods

SIZE = 64


def _images(n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=g)


def test_shapes_range_and_binary_masks():
    synth = AnomalySynthesizer(SIZE, seed=1)
    assert synth.texture_source == "procedural"
    x = _images(16)
    out, masks = synth(x)
    assert out.shape == x.shape and masks.shape == (16, 1, SIZE, SIZE)
    assert out.dtype == x.dtype and masks.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    # every sample is augmented: no empty mask, and pixels inside the masks changed
    assert bool((masks.flatten(1).amax(1) == 1).all())
    assert float((out - x).abs().mul(masks).sum()) > 0


def test_untouched_outside_mask_and_blend_inside():
    beta_max = 0.8
    synth = AnomalySynthesizer(SIZE, beta_max=beta_max, seed=3)
    tex = torch.zeros(10, 3, SIZE, SIZE)
    tex[:, 0], tex[:, 1], tex[:, 2] = 0.05, 0.95, 0.1  # far from every image pixel
    synth._textures = lambda images: tex.to(images.device)
    synth._augment = lambda t: t
    x = _images(10, seed=5)
    out, masks = synth(x)
    m = masks.bool().expand_as(x)
    assert torch.equal(out[~m], x[~m])
    # inside: out = (1-b) tex + b x with one b per sample, b in [0, beta_max)
    b = 1 - (out - x) / (tex - x)
    for i in range(10):
        bi = b[i][m[i]]
        assert bi.numel() > 0
        assert float(bi.max() - bi.min()) < 1e-4
        assert 0.0 <= float(bi.mean()) < beta_max + 1e-5


def test_deterministic_by_seed_and_sequence_advances():
    x = _images(8)
    a1, m1 = AnomalySynthesizer(SIZE, seed=7)(x)
    s2 = AnomalySynthesizer(SIZE, seed=7)
    a2, m2 = s2(x)
    assert torch.equal(a1, a2) and torch.equal(m1, m2)
    a3, m3 = s2(x)  # the next batch differs
    assert not torch.equal(m2, m3)
    a4, _ = AnomalySynthesizer(SIZE, seed=8)(x)
    assert not torch.equal(a1, a4)


def test_perlin_scale_controls_blob_size():
    g = torch.Generator().manual_seed(0)
    n = 64
    angle = torch.zeros(n)
    coarse = perlin_noise(torch.full((n,), 2), torch.full((n,), 2), angle, SIZE, g)
    fine = perlin_noise(torch.full((n,), 16), torch.full((n,), 16), angle, SIZE, g)
    assert float(coarse.abs().max()) <= 1.5 and float(fine.abs().max()) <= 1.5

    def roughness(z: torch.Tensor) -> float:  # mean neighbour difference: larger for finer noise
        return float((z[:, :, 1:] - z[:, :, :-1]).abs().mean())

    assert roughness(fine) > 4 * roughness(coarse)


def _fake_dtd(root: Path, colours: dict[str, tuple[int, int, int]]) -> Path:
    """torchvision's DTD layout: <root>/dtd/dtd/images/<class>/<file>.jpg, labels/{split}1.txt."""
    data = root / "dtd" / "dtd"
    lines = []
    for cls, rgb in colours.items():
        (data / "images" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 50, 3), rgb, np.uint8)).save(data / "images" / cls / f"{cls}_0001.png")
        lines.append(f"{cls}/{cls}_0001.png")
    (data / "labels").mkdir(parents=True)
    (data / "labels" / "train1.txt").write_text("\n".join(lines[:2]) + "\n")
    (data / "labels" / "val1.txt").write_text(lines[2] + "\n")
    (data / "labels" / "test1.txt").write_text(lines[3] + "\n")
    return root


def test_dtd_textures_are_used(tmp_path: Path):
    colours = {"banded": (255, 0, 0), "dotted": (0, 255, 0), "striped": (0, 0, 255), "woven": (255, 255, 0)}
    root = _fake_dtd(tmp_path, colours)
    synth = AnomalySynthesizer(SIZE, dtd_root=str(root), beta_max=0.0, seed=0)
    assert synth.texture_source == "dtd"
    synth._augment = lambda t: t  # so that in-mask pixels are exactly the DTD colours
    x = _images(12)
    out, masks = synth(x)
    seen = set()
    allowed = torch.tensor(list(colours.values()), dtype=torch.float32) / 255
    for i in range(12):
        pix = out[i].permute(1, 2, 0)[masks[i, 0].bool()]
        dist = (pix[:, None, :] - allowed[None]).abs().amax(-1)  # (P, 4)
        assert float(dist.min(1).values.max()) < 1e-6
        seen.add(int(dist.argmin(1)[0]))
    assert len(seen) >= 2  # textures are drawn at random from all splits


def test_dtd_augmented_path_runs(tmp_path: Path):
    root = _fake_dtd(tmp_path, {"a": (10, 20, 30), "b": (200, 100, 0), "c": (0, 0, 0), "d": (255, 255, 255)})
    out, masks = AnomalySynthesizer(32, dtd_root=str(root), seed=1)(_images(4))  # input 64: textures resized
    assert out.shape == (4, 3, SIZE, SIZE) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_missing_dtd_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ThreecadError, match="DTD not found"):
        AnomalySynthesizer(SIZE, dtd_root=str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- the release's draw
COLOURS = {"banded": (255, 0, 0), "dotted": (0, 255, 0), "striped": (0, 0, 255), "woven": (255, 255, 0)}


def test_release_draw_fixes_the_texture_per_training_image(tmp_path: Path):
    """Texture of training image idx = sorted DTD image idx % len(DTD), idx = sorted path position;
    no augmentation (with b = 0 the in-mask pixels are the texture's exact colour)."""
    root = _fake_dtd(tmp_path, COLOURS)
    keys = [f"/data/train/good/{i:03d}.png" for i in range(6)]
    palette = torch.tensor([COLOURS[k] for k in sorted(COLOURS)], dtype=torch.float32) / 255  # sorted by class
    for seed in (0, 1):  # another seed, other masks, the same texture per image
        synth = AnomalySynthesizer(SIZE, dtd_root=str(root), beta_max=0.0, seed=seed, draw="release", keys=keys)
        batch = [keys[5], keys[0], keys[2], keys[4]]  # shuffled, as a loader gives them
        out, masks = synth(_images(4), keys=batch)
        for i, key in enumerate(batch):
            inside = out[i].permute(1, 2, 0)[masks[i, 0].bool()]
            if len(inside):
                expected = palette[keys.index(key) % len(COLOURS)]
                assert float((inside - expected).abs().max()) < 1e-6


def test_release_draw_keeps_empty_masks():
    """The release keeps a sample whose thresholded Perlin mask is empty (a few % of samples);
    the augmented draw redraws them."""
    release = AnomalySynthesizer(SIZE, seed=2, draw="release")
    augmented = AnomalySynthesizer(SIZE, seed=2)
    x = _images(400, seed=1)
    _, m_release = release(x)
    _, m_augmented = augmented(x)
    empty = (m_release.flatten(1).amax(1) == 0).float().mean()
    assert 0.01 <= float(empty) <= 0.15
    assert float((m_augmented.flatten(1).amax(1) == 0).float().mean()) == 0.0
    out, masks = release(x[:64])
    for i in range(64):
        if masks[i].max() == 0:
            assert torch.equal(out[i], x[i])  # an empty mask leaves the image good


def test_release_masks_are_rotated_images_with_zero_corners():
    ones = torch.ones(2, 1, SIZE, SIZE)
    turned = rotate_zero_fill(ones, torch.tensor([0.0, 3.14159265 / 4]))
    assert torch.allclose(turned[0], ones[0])
    assert float(turned[1, 0, 0, 0]) == 0.0 and float(turned[1, 0, -1, -1]) == 0.0  # corners zero-filled
    assert float(turned[1, 0, SIZE // 2, SIZE // 2]) == pytest.approx(1.0)
    # masks of the release draw: the corners are empty far more often than the centre
    _, masks = AnomalySynthesizer(SIZE, seed=4, draw="release")(_images(300))
    corner = masks[:, 0, :4, :4].mean()
    centre = masks[:, 0, SIZE // 2 - 2:SIZE // 2 + 2, SIZE // 2 - 2:SIZE // 2 + 2].mean()
    assert float(corner) < 0.5 * float(centre)


def test_dtd_is_found_in_both_layouts(tmp_path: Path):
    torchvision_layout = _fake_dtd(tmp_path / "a", COLOURS)
    assert find_dtd_images(torchvision_layout) == torchvision_layout / "dtd" / "dtd" / "images"
    plain = tmp_path / "b"
    (plain / "images" / "banded").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(plain / "images" / "banded" / "banded_0001.jpg")
    assert find_dtd_images(plain) == plain / "images"
    assert AnomalySynthesizer(SIZE, dtd_root=str(plain)).texture_source == "dtd"


def test_dtd_folder_without_images_is_a_clear_error(tmp_path: Path):
    (tmp_path / "dtd" / "dtd" / "images" / "banded").mkdir(parents=True)
    with pytest.raises(ThreecadError, match="holds no images"):
        AnomalySynthesizer(SIZE, dtd_root=str(tmp_path))


# --------------------------------------------------------------------------- DRAEM's and DeSTSeg's draws
@pytest.mark.parametrize("draw", ["draem", "destseg"])
def test_reference_draws_keep_empty_masks_and_leave_those_samples_good(draw):
    synth = AnomalySynthesizer(SIZE, seed=2, draw=draw)
    synth._textures = lambda images, keys=None: torch.zeros_like(images)
    x = _images(200, seed=1)
    out, masks = synth(x)
    empty = masks.flatten(1).amax(1) == 0
    assert 0.01 <= float(empty.float().mean()) <= 0.15
    assert torch.equal(out[empty], x[empty]) and not torch.equal(out[~empty], x[~empty])
    # rotated as images: corners empty far more often than the centre
    assert float(masks[:, 0, :3, :3].mean()) < 0.5 * float(masks[:, 0, 30:34, 30:34].mean())


@pytest.mark.parametrize("draw,colour", [("draem", "rgb"), ("draem", "bgr"), ("destseg", "rgb"), ("destseg", "bgr")])
def test_reference_draws_read_dtd_in_the_images_channel_order(tmp_path: Path, draw, colour):
    """DTD read with OpenCV ("draem") or PIL ("destseg"), handed over in the images' channel order;
    without augmentation and with b = 0 the in-mask pixels are the texture's colour."""
    root = _fake_dtd(tmp_path, {name: (250, 20, 0) for name in COLOURS})
    synth = AnomalySynthesizer(SIZE, dtd_root=str(root), beta_max=0.0, seed=3, draw=draw, colour=colour)
    synth._draem_augment = lambda t: t
    out, masks = synth(_images(8))
    expected = torch.tensor((250, 20, 0) if colour == "rgb" else (0, 20, 250), dtype=torch.float32) / 255
    inside = out.permute(0, 2, 3, 1)[masks[:, 0].bool()]
    assert len(inside) and float((inside - expected).abs().max()) < 1e-6


def test_unreadable_dtd_image_is_a_clear_error(tmp_path: Path):
    images = tmp_path / "images" / "banded"
    images.mkdir(parents=True)
    (images / "banded_0001.jpg").write_bytes(b"not a jpeg")
    synth = AnomalySynthesizer(SIZE, dtd_root=str(tmp_path), draw="draem")
    with pytest.raises(ThreecadError, match="cannot read the DTD image"):
        synth(_images(2))


def test_draem_draw_applies_three_distinct_augmentations_in_a_random_order(monkeypatch):
    from threecad.anomaly_synthesis import synthesizer

    calls = []
    original = synthesizer.draem_augmentation

    def spy(name, image, **params):
        calls.append(name)
        return original(name, image, **params)

    monkeypatch.setattr(synthesizer, "draem_augmentation", spy)
    synth = AnomalySynthesizer(SIZE, seed=4, draw="draem")
    synth._textures = lambda images, keys=None: images
    synth(_images(60))
    picks = [tuple(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert len(picks) == 60 and all(len(set(p)) == 3 for p in picks)
    assert set(calls) == set(synthesizer.DRAEM_AUGMENTATIONS)
    position = synthesizer.DRAEM_AUGMENTATIONS.index
    assert any(position(p[0]) > position(p[1]) for p in picks)  # applied in the drawn order, not the list's


def test_draem_parameters_stay_in_the_reference_ranges():
    from threecad.anomaly_synthesis import BRIGHTNESS_SPACES, DRAEM_AUGMENTATIONS

    synth = AnomalySynthesizer(SIZE, seed=5, draw="draem")
    draws = {name: [synth._draem_parameters(name) for _ in range(400)] for name in DRAEM_AUGMENTATIONS}
    gammas = [g for d in draws["gamma"] for g in d["gammas"]]
    assert 0.5 <= min(gammas) < 0.55 and 1.95 < max(gammas) <= 2.0
    assert {d["space"] for d in draws["brightness"]} == set(BRIGHTNESS_SPACES)
    assert all(0.8 <= d["mul"] <= 1.2 and -30 <= d["add"] <= 30 for d in draws["brightness"])
    assert 0.3 < np.mean([d["add_first"] for d in draws["brightness"]]) < 0.7
    assert all(0.0 <= d["factor"] <= 2.0 for d in draws["sharpness"])
    for key in ("hue", "saturation"):  # integers in -50..50, both ends included
        values = [d[key] for d in draws["hue_saturation"]]
        assert set(values) <= set(range(-50, 51)) and min(values) == -50 and max(values) == 50
    assert 0.4 < np.mean([d["apply"] for d in draws["solarize"]]) < 0.6
    assert all(32 <= d["threshold"] <= 128 for d in draws["solarize"])
    assert {d["bits"] for d in draws["posterize"]} == set(range(1, 9))
    assert {d["cutoff"] for d in draws["autocontrast"]} == set(range(0, 21))
    assert all(-45 <= d["degrees"] <= 45 for d in draws["rotate"])
    assert draws["invert"][0] == draws["equalize"][0] == {}


def test_bad_colour_is_a_clear_error():
    with pytest.raises(ThreecadError, match="colour"):
        AnomalySynthesizer(SIZE, colour="hsv")


# --------------------------------------------------------------------------- the shared config settings
def _synthesising_methods() -> dict[str, type]:
    return {name: cls for name, cls in available_methods().items() if issubclass(cls.config_class, SynthesisConfig)}


def test_methods_that_synthesise_share_one_set_of_settings_with_their_own_draw():
    draws = {name: cls.config_class().draw for name, cls in _synthesising_methods().items()}
    assert draws == {"cfrg": "release", "destseg": "destseg", "draem": "draem", "realnet": "draem"}  # the references
    for cls in _synthesising_methods().values():
        config = cls.config_class()
        assert (config.textures, config.dtd_root, config.beta_max, config.perlin_max_scale) == ("dtd", None, 0.8, 5)


@pytest.mark.parametrize("key,value", [("textures", "plaid"), ("draw", "paint"), ("beta_max", 1.5),
                                       ("perlin_max_scale", 9)])
@pytest.mark.parametrize("name", ["cfrg", "destseg", "draem", "realnet"])
def test_bad_synthesis_setting_is_a_one_line_error_naming_the_field(name, key, value):
    with pytest.raises(ThreecadError) as err:
        _synthesising_methods()[name].config_class(**{key: value})
    message = str(err.value)
    assert message.startswith(f"config {key}=") and "\n" not in message


def test_config_builds_the_synthesizer_it_describes():
    config = _synthesising_methods()["draem"].config_class(image_size=SIZE, beta_max=0.5, perlin_max_scale=3,
                                                           textures="procedural")
    assert config.dtd_folder("draem") is None
    x = _images(6)
    got = config.synthesizer(5, None)(x)
    want = AnomalySynthesizer(SIZE, beta_max=0.5, perlin_max_scale=3, seed=5, draw="draem", colour="bgr")(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
