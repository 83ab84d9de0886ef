"""Synthetic images drawn with Pillow: the VQA sample sets' pictures, the tests' and the shapes benchmark's
(bench/vlm_shapes.py). Offline, deterministic, a few pixels each."""

SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(shape: str, colour: str, size: int = 64, *, background=(255, 255, 255), jitter=None):
    """A Pillow image of one coloured shape: the synthetic data of the tests, the demo and the VQA sample.
    ``jitter`` (a ``random.Random``) varies position and scale a little."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    scale = jitter.uniform(0.55, 0.8) if jitter else 0.7
    half = size * scale / 2
    cx = size / 2 + (jitter.uniform(-1, 1) * (size / 2 - half) if jitter else 0)
    cy = size / 2 + (jitter.uniform(-1, 1) * (size / 2 - half) if jitter else 0)
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = SHAPE_COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return image


def draw_text(text: str, size: int = 64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    draw.text(((size - (right - left)) / 2, (size - (bottom - top)) / 2), text, fill=(0, 0, 0))
    return image
