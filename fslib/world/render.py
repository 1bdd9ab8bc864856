"""Drawing of the synthetic egocentric scenes: surface in perspective, clutter, soft shadows, objects, hands, light.

Pure functions of a scene dict (see ``fslib.world.synth``) and a size: no randomness except from seeds in the scene.
``render_clip`` draws a pick-up / put-down clip.
"""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Saturated, far apart in hue, so a tiny student can tell them apart at 112 px.
RGB = {"red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 75, 215), "yellow": (240, 210, 25),
       "purple": (135, 45, 185), "orange": (245, 125, 15)}
SURFACE_RGB = {"table": ((150, 105, 65), (205, 200, 190)),  # (surface, wall behind it)
               "counter": ((205, 203, 195), (120, 135, 150)),
               "floor": ((95, 100, 110), (215, 205, 180))}
CLUTTER_RGB = ((120, 120, 120), (160, 160, 155), (110, 85, 60), (90, 90, 90), (140, 115, 90))


def _shade(rgb, factor: float) -> tuple:
    return tuple(max(0, min(255, int(c * factor))) for c in rgb)


def _surface_point(geo: dict, u: float, v: float) -> tuple[float, float]:
    """(u across, v from far edge to camera) on the surface -> normalised image (x, y); far rows are narrower."""
    y = geo["top"] + v * (1.0 - geo["top"])
    half = geo["half_top"] + v * (geo["half_bottom"] - geo["half_top"])
    return geo["cx"] + (u - 0.5) * 2 * half, y


def _draw_object(d: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, rgb) -> None:
    """One object centred at (cx, cy) pixels, about 2r tall; ``rgb`` fills most of its area."""
    dark, w = _shade(rgb, 0.55), max(1, int(0.1 * r))
    if name == "cup":
        d.ellipse([cx + 0.3 * r, cy - 0.45 * r, cx + 1.0 * r, cy + 0.35 * r], outline=rgb, width=max(2, int(0.2 * r)))
        d.polygon([(cx - 0.6 * r, cy - 0.7 * r), (cx + 0.6 * r, cy - 0.7 * r), (cx + 0.45 * r, cy + 0.8 * r),
                   (cx - 0.45 * r, cy + 0.8 * r)], fill=rgb, outline=dark)
        d.ellipse([cx - 0.6 * r, cy - 0.85 * r, cx + 0.6 * r, cy - 0.55 * r], fill=_shade(rgb, 0.7), outline=dark)
    elif name == "phone":
        d.rounded_rectangle([cx - 0.5 * r, cy - 0.9 * r, cx + 0.5 * r, cy + 0.9 * r], radius=0.18 * r, fill=rgb,
                            outline=(25, 25, 30), width=w)
        d.rectangle([cx - 0.3 * r, cy - 0.65 * r, cx + 0.3 * r, cy + 0.5 * r], fill=(30, 35, 50))
    elif name == "keys":
        d.ellipse([cx - 0.8 * r, cy - 0.8 * r, cx - 0.15 * r, cy - 0.15 * r], outline=rgb, width=max(2, int(0.15 * r)))
        for hx, hy, angle in ((cx - 0.1 * r, cy - 0.1 * r, 0.35), (cx - 0.3 * r, cy + 0.05 * r, 1.2)):
            ex, ey = hx + math.cos(angle) * 1.0 * r, hy + math.sin(angle) * 1.0 * r
            d.line([hx, hy, ex, ey], fill=rgb, width=max(2, int(0.22 * r)))
            d.line([ex - 0.25 * r * math.cos(angle), ey - 0.25 * r * math.sin(angle),
                    ex - 0.25 * r * math.cos(angle) - 0.2 * r * math.sin(angle),
                    ey - 0.25 * r * math.sin(angle) + 0.2 * r * math.cos(angle)], fill=rgb, width=max(1, int(0.12 * r)))
            d.ellipse([hx - 0.32 * r, hy - 0.32 * r, hx + 0.32 * r, hy + 0.32 * r], fill=rgb, outline=dark)
    elif name == "book":
        d.rectangle([cx - 0.8 * r, cy - 0.6 * r, cx + 0.8 * r, cy + 0.62 * r], fill=(235, 230, 215), outline=dark)
        d.rectangle([cx - 0.8 * r, cy - 0.6 * r, cx + 0.68 * r, cy + 0.5 * r], fill=rgb, outline=dark)
        d.line([cx - 0.58 * r, cy - 0.6 * r, cx - 0.58 * r, cy + 0.5 * r], fill=dark, width=w)
    elif name == "apple":
        d.ellipse([cx - 0.72 * r, cy - 0.55 * r, cx + 0.72 * r, cy + 0.85 * r], fill=rgb, outline=dark)
        d.ellipse([cx - 0.42 * r, cy - 0.3 * r, cx - 0.17 * r, cy - 0.05 * r], fill=_shade(rgb, 1.25))
        d.line([cx, cy - 0.5 * r, cx + 0.12 * r, cy - 0.92 * r], fill=(90, 60, 30), width=w)
        d.polygon([(cx + 0.08 * r, cy - 0.72 * r), (cx + 0.45 * r, cy - 0.98 * r), (cx + 0.58 * r, cy - 0.68 * r)],
                  fill=(40, 115, 40))
    elif name == "bottle":
        d.rounded_rectangle([cx - 0.42 * r, cy - 0.35 * r, cx + 0.42 * r, cy + 0.95 * r], radius=0.15 * r, fill=rgb,
                            outline=dark)
        d.polygon([(cx - 0.42 * r, cy - 0.3 * r), (cx - 0.16 * r, cy - 0.6 * r), (cx + 0.16 * r, cy - 0.6 * r),
                   (cx + 0.42 * r, cy - 0.3 * r)], fill=rgb)
        d.rectangle([cx - 0.16 * r, cy - 0.95 * r, cx + 0.16 * r, cy - 0.55 * r], fill=rgb, outline=dark)
        d.rectangle([cx - 0.2 * r, cy - 1.1 * r, cx + 0.2 * r, cy - 0.92 * r], fill=(50, 50, 55))
        d.line([cx - 0.22 * r, cy - 0.15 * r, cx - 0.22 * r, cy + 0.75 * r], fill=_shade(rgb, 1.3), width=w)
    else:
        raise ValueError(f"unknown object {name!r}: no drawing for it in fslib.world.render._draw_object")


def _draw_background(d: ImageDraw.ImageDraw, scene: dict, S: int, rng: random.Random) -> None:
    geo, surface = scene["geo"], scene["surface"]
    surf_rgb, wall_rgb = (_shade(c, scene["bg_jitter"]) for c in SURFACE_RGB[surface])
    d.rectangle([0, 0, S, S], fill=wall_rgb)
    d.rectangle([0, geo["top"] * S, S, S], fill=_shade(wall_rgb, 0.55))  # room below the horizon, in shadow
    corners = [_surface_point(geo, u, v) for u, v in ((0, 0), (1, 0), (1, 1), (0, 1))]
    d.polygon([(x * S, y * S) for x, y in corners], fill=surf_rgb)
    pt = lambda u, v: tuple(c * S for c in _surface_point(geo, u, v))  # noqa: E731
    if surface == "table":  # wood grain, running across
        for _ in range(9):
            v = rng.random()
            d.line([pt(u / 6, v + 0.015 * math.sin(u + v * 9)) for u in range(7)], fill=_shade(surf_rgb, 0.82),
                   width=max(1, S // 160))
    elif surface == "counter":  # speckled stone
        for _ in range(70):
            x, y = pt(rng.random(), rng.random())
            d.ellipse([x, y, x + S / 150, y + S / 150], fill=_shade(surf_rgb, rng.choice((0.75, 1.12))))
    else:  # floor tiles, whose grout lines converge with the perspective
        for k in range(7):
            d.line([pt(k / 6, 0), pt(k / 6, 1)], fill=_shade(surf_rgb, 0.7), width=max(1, S // 110))
        for k in range(1, 5):
            v = (k / 5) ** 1.4
            d.line([pt(0, v), pt(1, v)], fill=_shade(surf_rgb, 0.7), width=max(1, S // 110))


def _draw_clutter(d: ImageDraw.ImageDraw, scene: dict, S: int, rng: random.Random) -> None:
    """Flat marks on the surface, each under ~2% of the image: crumbs, scratches and paper scraps."""
    for _ in range(3 * scene["clutter"]):
        v = rng.random()
        x, y = (c * S for c in _surface_point(scene["geo"], rng.uniform(0.05, 0.95), v))
        s, rgb, kind = (0.005 + 0.01 * rng.random()) * (0.6 + 0.6 * v) * S, rng.choice(CLUTTER_RGB), rng.randrange(3)
        if kind == 0:
            d.ellipse([x - s, y - s * 0.7, x + s, y + s * 0.7], fill=rgb)
        elif kind == 1:
            a = rng.uniform(0, math.pi)
            d.line([x, y, x + math.cos(a) * 5 * s, y + math.sin(a) * 2 * s], fill=rgb, width=max(1, S // 200))
        else:
            d.polygon([(x + rng.uniform(-2, 2) * s, y + rng.uniform(-1, 1) * s) for _ in range(4)], fill=rgb)


def _finger(d: ImageDraw.ImageDraw, a, b, width: float, rgb) -> None:
    d.line([*a, *b], fill=rgb, width=max(1, int(width)))
    for x, y in (a, b):
        d.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=rgb)


def _draw_hand(d: ImageDraw.ImageDraw, hand: dict, S: int, skin, sleeve) -> None:
    """A hand gripping at (x, y): arm from the bottom corner, palm, then fingers open or closed over ``held``."""
    x, y, s = hand["x"] * S, hand["y"] * S, (1 if hand["side"] == "left" else -1)
    wrist, anchor = (x - s * 0.05 * S, y + 0.16 * S), ((0.5 - s * 0.55) * S, 1.35 * S)
    _finger(d, anchor, wrist, 0.14 * S, sleeve)
    cx, cy = x - s * 0.01 * S, y + 0.08 * S
    d.ellipse([cx - 0.075 * S, cy - 0.07 * S, cx + 0.075 * S, cy + 0.07 * S], fill=skin, outline=_shade(skin, 0.75))
    fw, held = 0.026 * S, hand["held"]
    if held is None:
        for off, length in zip((-0.045, -0.015, 0.015, 0.045), (0.085, 0.11, 0.105, 0.09)[::s]):  # [::s] mirrors
            _finger(d, (cx + off * S, cy - 0.04 * S), (cx + off * 1.4 * S, cy - (0.04 + length) * S), fw, skin)
        _finger(d, (cx + s * 0.05 * S, cy), (cx + s * 0.12 * S, cy - 0.05 * S), fw * 1.1, skin)
        return
    r = held["r"] * S
    _draw_object(d, held["name"], x, y, r, held["rgb"])
    for k in range(3):  # curled fingers wrap the lower outer corner, leaving most of the object visible
        fy = y + 0.3 * r + 0.028 * k * S
        _finger(d, (x - s * (0.75 * r + 0.02 * S), fy), (x - s * 0.3 * r, fy), fw * 0.9, skin)
    _finger(d, (cx + s * 0.06 * S, cy - 0.01 * S), (x + s * 0.45 * r, y - 0.05 * r), fw * 1.1, skin)


def _lighting(img: Image.Image, light: dict, seed: int) -> Image.Image:
    """Global brightness and tint, a soft gradient across the view, and mild sensor noise."""
    arr = np.asarray(img, dtype=np.float32)
    ramp = np.linspace(1 + light["gradient"], 1 - light["gradient"], arr.shape[0], dtype=np.float32)
    ramp = ramp[:, None, None] if light["vertical"] else ramp[None, :, None]
    arr *= ramp * (light["gain"] * np.asarray(light["tint"], dtype=np.float32))  # (H, 1, 3) or (1, W, 3) factor
    noise = np.random.default_rng(seed).standard_normal(arr.shape, dtype=np.float32)
    arr += noise * np.float32(light["noise"]) + np.float32(0.5)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render_scene(scene: dict, size: int) -> Image.Image:
    """Draw ``scene`` (from ``_layout_scene``) as a ``size`` x ``size`` RGB image; pure function of its arguments."""
    S = 2 * size  # supersample, then box-filter down: cheap anti-aliasing with a fixed filter
    img = Image.new("RGB", (S, S))
    d = ImageDraw.Draw(img)
    rng = random.Random(f"detail-{scene['detail_seed']}")  # same texture and clutter in every frame of a clip
    _draw_background(d, scene, S, rng)
    _draw_clutter(d, scene, S, rng)
    s4 = S // 4  # soft shadows are drawn and blurred at quarter size, then scaled up: same look, far cheaper
    mask = Image.new("L", (s4, s4), 0)
    shadow, dx = ImageDraw.Draw(mask), scene["light"]["shadow_dx"]
    for o in scene["objects"]:
        x, y, r = o["x"] * s4, o["y"] * s4, o["r"] * s4
        shadow.ellipse([x + (dx - 0.85) * r, y + 0.55 * r, x + (dx + 0.85) * r, y + 1.1 * r], fill=110)
    mask = mask.filter(ImageFilter.GaussianBlur(s4 / 100)).resize((S, S), Image.Resampling.BILINEAR)
    img = Image.composite(Image.new("RGB", (S, S)), img, mask)
    d = ImageDraw.Draw(img)
    for o in sorted(scene["objects"], key=lambda o: o["y"]):  # far first, so nearer objects overlap them
        _draw_object(d, o["name"], o["x"] * S, o["y"] * S, o["r"] * S, o["rgb"])
    for hand in scene["hands"]:
        _draw_hand(d, hand, S, scene["skin"], scene["sleeve"])
    return _lighting(img.resize((size, size), Image.Resampling.BOX), scene["light"], scene["detail_seed"])


def render_clip(scene: dict, motion: tuple, n_frames: int, size: int) -> list[Image.Image]:
    """A hand reaches from rest to ``scene["objects"][0]``, picks it up and carries it back (or, reversed, puts it
    down). The hand touches the object at frame (n-1)//2; the object is in the hand from then on."""
    side, action = motion
    m = (n_frames - 1) // 2
    alphas = [t / m for t in range(m + 1)] + [1 - (t - m) / (n_frames - 1 - m) for t in range(m + 1, n_frames)]
    obj, others = scene["objects"][0], scene["objects"][1:]
    mover = next(h for h in scene["hands"] if h["side"] == side)
    rest, held_r = (mover["x"], mover["y"]), 0.1
    frames = []
    for t, a in enumerate(alphas):
        hand = {"side": side, "x": rest[0] + a * (obj["x"] - rest[0]), "y": rest[1] + a * (obj["y"] - rest[1]),
                "held": None if t < m else {**obj, "r": obj["r"] + (1 - a) * (held_r - obj["r"])}}
        hands = [hand if h["side"] == side else h for h in scene["hands"]]
        frames.append(render_scene({**scene, "objects": others if t >= m else scene["objects"], "hands": hands}, size))
    return frames if action == "pickup" else frames[::-1]
