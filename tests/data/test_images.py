"""Images are read as displayed and in 8 bits, whatever their file holds: EXIF orientation
applied, 16-bit and float pixels scaled (not clipped), sizes checked against annotations and
against podkit's own pixel limit, each problem one line naming the file."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from podkit.config import DatasetConfig
from podkit.data import load_dataset
from podkit.data.records import check_image, load_image
from podkit.data.synthetic import write_split


def with_orientation(pixels: np.ndarray, path, orientation: int, **save) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), **save)


def test_exif_orientation_is_applied_to_pixels_and_sizes(tmp_path):
    stored = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    with_orientation(stored, tmp_path / "phone.jpg", 6, quality=95)
    with Image.open(tmp_path / "phone.jpg") as im:  # Pillow itself does not rotate
        raw = np.asarray(im.convert("RGB"))
    assert raw.shape == (30, 50, 3)
    shown = np.asarray(load_image(tmp_path / "phone.jpg"))
    # orientation 6: the stored image is displayed turned 90 degrees clockwise
    assert np.array_equal(shown, np.rot90(raw, k=-1))
    assert check_image(tmp_path / "phone.jpg", "test") == (30, 50)  # (width, height) shown


def test_sixteen_bit_and_float_images_are_scaled_to_eight_bits(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert np.array_equal(rgb[..., 0], (values >> 8).astype(np.uint8))  # OpenCV's rule
    assert rgb.mean() < 200  # convert("RGB") clips: almost all white (255)
    unit = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    Image.fromarray(unit, "F").save(tmp_path / "float.tif")
    rgb = np.asarray(load_image(tmp_path / "float.tif"))
    assert rgb.max() == 255 and abs(rgb.mean() - 127.5) < 1


def huge_png_header(path, width: int, height: int) -> None:
    """A PNG whose header declares width x height, with a tiny (truncated) body: what a
    decompression bomb looks like to a reader that checks sizes first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1))  # the first row of zeros only
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))


def test_images_over_the_pixel_limit_are_one_line(tmp_path, recwarn):
    huge_png_header(tmp_path / "big.png", 14000, 14000)  # over Pillow's bomb limit too
    with pytest.raises(
        ValueError, match=r"big.png has 14000x14000 = 196,000,000 pixels.*max_image"
    ):
        check_image(tmp_path / "big.png", "predict")
    huge_png_header(tmp_path / "mid.png", 10000, 10000)  # over Pillow's warning threshold
    assert check_image(tmp_path / "mid.png", "predict", 200_000_000) == (10000, 10000)
    assert not [w for w in recwarn if "DecompressionBomb" in str(w.category)]


def test_declared_sizes_must_match_the_images(tmp_path):
    write_split(tmp_path, "train", 3, 64, seed=0)
    ann = tmp_path / "annotations/train.json"
    data = json.loads(ann.read_text())
    cfg = DatasetConfig(format="coco", ann=str(ann), images=str(tmp_path / "train"))
    assert len(load_dataset(cfg).records) == 3  # as written: sizes agree
    for im in data["images"]:
        im["width"], im["height"] = 2 * im["width"], 2 * im["height"]
    ann.write_text(json.dumps(data))
    first = data["images"][0]
    with pytest.raises(ValueError) as err:
        load_dataset(cfg)
    message = str(err.value)
    assert f"image id {first['id']}" in message and first["file_name"] in message
    assert f"declared {first['width']}x{first['height']}" in message
    assert "3 images disagree" in message and str(ann) in message
