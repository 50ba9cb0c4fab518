"""load_image: every PIL mode a dataset comes in decodes to `[H, W, C]` uint8."""

import numpy as np
import pytest
from classification_helpers import write_image
from PIL import Image

from lightnet_vision.datamodules.images import load_image

MODES = ["RGB", "L", "RGBA", "P", "I;16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_chans", [3, 1])
def test_every_mode_loads_as_uint8(tmp_path, mode, in_chans):
    path = write_image(tmp_path / "image.png", mode, (7, 5), level=200)
    image = load_image(path, in_chans)
    assert image.shape == (5, 7, in_chans) and image.dtype == np.uint8
    assert image.flags.c_contiguous
    assert (image == 200).all()


def test_colours_survive_rgb_and_palette(tmp_path):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, :3] = (250, 10, 30)
    pixels[:, 3:] = (5, 120, 240)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png", 3), pixels)
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png", 3), pixels)
    gray = load_image(tmp_path / "rgb.png", 1)[..., 0]
    np.testing.assert_array_equal(gray, np.asarray(Image.fromarray(pixels).convert("L")))


def test_sixteen_bit_full_range_maps_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
    for in_chans in (1, 3):
        image = load_image(tmp_path / "deep.png", in_chans)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])


def test_transparent_pixels_are_composited_on_black(tmp_path):
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[..., :3] = (255, 0, 0)
    pixels[0, 0, 3] = 255  # one opaque red pixel, the rest transparent red
    Image.fromarray(pixels).save(tmp_path / "alpha.png")
    image = load_image(tmp_path / "alpha.png", 3)
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[1, 1], [0, 0, 0])


def test_other_channel_counts_are_refused(tmp_path):
    path = write_image(tmp_path / "image.png", "RGB", (4, 4), level=9)
    with pytest.raises(ValueError, match="in_chans must be 1 or 3"):
        load_image(path, 4)
