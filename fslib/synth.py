"""Seeded synthetic egocentric world: first-person views of a surface, two hands and a few objects.

Every scene is a pure function of its scene seed (``random.Random(f"firstsight-{scene_seed}")``), so the same
parameters give byte-identical images (with the pinned Pillow/numpy). A scene is first *specified* from the question
it must answer (so answers are balanced and exact), then *laid out* (positions, hands, light) and finally *rendered*
at 2x and box-downsampled. Clutter (crumbs, scratches, paper scraps) is small, flat and grey/brown: it is never an
"object" and is never counted.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = "1.0"
OBJECTS = ("cup", "phone", "keys", "book", "apple", "bottle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
IMAGE_QTYPES = ("held_object", "colour", "count", "spatial", "presence")
VIDEO_QTYPES = ("video_pickup", "video_putdown", "video_hand")
QTYPES = IMAGE_QTYPES + VIDEO_QTYPES
SPLITS = ("train", "val", "test", "ood")
HANDS = ("left", "right")
SURFACES = ("table", "counter", "floor")
DEFAULT_HELD_OUT = ("purple apple", "orange phone", "green cup")
MAX_COUNT = 6  # the count answers stop at "6"
BLANK_GREY = (128, 128, 128)

# Saturated, far apart in hue, so a tiny student can tell them apart at 112 px.
RGB = {"red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 75, 215), "yellow": (240, 210, 25),
       "purple": (135, 45, 185), "orange": (245, 125, 15)}
SURFACE_RGB = {"table": ((150, 105, 65), (205, 200, 190)),  # (surface, wall behind it)
               "counter": ((205, 203, 195), (120, 135, 150)),
               "floor": ((95, 100, 110), (215, 205, 180))}
SKIN = ((236, 188, 150), (205, 150, 110), (160, 105, 70), (110, 72, 48))  # low saturation: never an object colour
SLEEVE = ((40, 40, 45), (90, 90, 95), (150, 150, 150))
CLUTTER_RGB = ((120, 120, 120), (160, 160, 155), (110, 85, 60), (90, 90, 90), (140, 115, 90))
NOUN = {"keys": "set of keys"}  # so that "the set of keys" and "a set of keys" read as English

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
ALIASES = {"cup": ["mug", "coffee cup"], "phone": ["mobile phone", "cellphone", "cell phone", "smartphone"],
           "keys": ["key", "set of keys", "keyring"], "book": ["paperback", "hardback"],
           "apple": [], "bottle": ["water bottle", "drink bottle"],
           "nothing": ["none", "empty", "no object", "nothing at all"], "purple": ["violet"],
           "left": ["left hand"], "right": ["right hand"], **{str(i): [w] for i, w in enumerate(NUMBER_WORDS)}}

TEMPLATES = {
    "held_object": ("What am I holding in my {hand} hand?", "What is in my {hand} hand?",
                    "Which object am I holding in my {hand} hand?"),
    "colour_table": ("What colour is the {noun} on the {surface}?", "What is the colour of the {noun} on the {surface}?",
                     "Which colour is the {noun} on the {surface}?"),
    "colour_hand": ("What colour is the object in my {hand} hand?",
                    "What colour is the thing I am holding in my {hand} hand?"),
    "count": ("How many objects are on the {surface}?", "How many objects can you see on the {surface}?",
              "Count the objects on the {surface}."),
    "spatial_leftmost": ("What is the leftmost object on the {surface}?",
                         "Which object on the {surface} is furthest to the left?"),
    "spatial_rightmost": ("What is the rightmost object on the {surface}?",
                          "Which object on the {surface} is furthest to the right?"),
    "spatial_nearest": ("Which object on the {surface} is nearest to my {hand} hand?",
                        "What is the closest object on the {surface} to my {hand} hand?"),
    "presence_pair": ("Is there {a_colour} {colour} {noun} on the {surface}?",
                      "Can you see {a_colour} {colour} {noun} on the {surface}?"),
    "presence_object": ("Is there {a_noun} {noun} on the {surface}?", "Do you see {a_noun} {noun} on the {surface}?"),
    "video_pickup": ("What did I just pick up?", "What object did I pick up?",
                     "Which object did I pick up from the {surface}?"),
    "video_putdown": ("What did I just put down?", "What object did I put down?", "What did I place on the {surface}?"),
    "video_hand": ("Which hand moved?", "Which of my hands moved?", "Which of my hands moved in this clip?"),
}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _fill(template: str, *, surface: str = "", hand: str = "", colour: str = "", name: str = "") -> str:
    noun = NOUN.get(name, name)
    return template.format(surface=surface, hand=hand, colour=colour, noun=noun,
                           a_colour=_article(colour), a_noun=_article(noun))


def answer_vocabulary() -> list[str]:
    """Every canonical answer the generator can emit (a closed vocabulary)."""
    return [*OBJECTS, "nothing", *COLOURS, *(str(i) for i in range(MAX_COUNT + 1)), "yes", "no", *HANDS]


def corpus_text() -> list[str]:
    """Every question phrasing filled with every value, plus every answer and alias (for a small BPE tokenizer)."""
    lines = []
    for template in itertools.chain.from_iterable(TEMPLATES.values()):
        for surface, hand, colour, name in itertools.product(SURFACES, HANDS, COLOURS, OBJECTS):
            lines.append(_fill(template, surface=surface, hand=hand, colour=colour, name=name))
    for answer in answer_vocabulary():
        lines += [answer, *ALIASES.get(answer, [])]
    return list(dict.fromkeys(lines))


def blank_like(image: Image.Image) -> Image.Image:
    """Uniform mid-grey RGB image of the same size: the "blind" control input."""
    return Image.new("RGB", image.size, BLANK_GREY)


def blank_media(record: dict) -> dict:
    """Copy of ``record`` whose image and video frames are uniform grey of the same sizes (text untouched)."""
    out = dict(record)
    if record.get("image") is not None:
        out["image"] = blank_like(record["image"])
    if record.get("video"):
        out["video"] = [blank_like(frame) for frame in record["video"]]
    return out


# ----------------------------------------------------------------------------------------------- rendering


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
        raise ValueError(f"unknown object {name!r}; known: {OBJECTS}")


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


# ------------------------------------------------------------------------ question specs (what the scene must show)


@dataclass(frozen=True)
class _Ctx:
    allowed: tuple  # (colour, object) pairs that may be rendered in train/val/test
    held_out: tuple  # pairs reserved for the ood split
    ood: bool
    max_objects: int
    surface: str
    cycle: int  # how many records of this qtype came before; binary answers alternate on it, so they balance exactly


def _pairs(rng: random.Random, c: _Ctx, n: int, exclude=lambda p: False) -> list[tuple]:
    pool = [p for p in c.allowed if not exclude(p)]
    return [rng.choice(pool) for _ in range(n)]


def _hands(rng: random.Random, c: _Ctx, **fixed) -> dict:
    held = {side: (rng.choice(c.allowed) if rng.random() < 0.5 else None) for side in HANDS}
    return {**held, **fixed}


def _target(rng: random.Random, c: _Ctx, *, name: str | None = None, colour: str | None = None) -> tuple:
    """The questioned pair: a held-out pair in the ood split, else an allowed pair matching name/colour."""
    pool = c.held_out if c.ood else [p for p in c.allowed if name in (None, p[1]) and colour in (None, p[0])]
    return rng.choice(pool)


def _q(rng: random.Random, key: str, c: _Ctx, **kw) -> str:
    return _fill(rng.choice(TEMPLATES[key]), surface=c.surface, **kw)


def _spec_held_object(rng, c):
    side = rng.choice(HANDS)
    name = None if c.ood else rng.choice((*OBJECTS, "nothing"))
    pair = None if name == "nothing" else _target(rng, c, name=name)
    return dict(table=_pairs(rng, c, rng.randint(1, c.max_objects)), held=_hands(rng, c, **{side: pair}),
                question=_q(rng, "held_object", c, hand=side), answer=pair[1] if pair else "nothing", target=pair)


def _spec_colour(rng, c):
    pair = _target(rng, c, colour=None if c.ood else rng.choice(COLOURS))
    if rng.random() < 0.7:  # about an object on the surface: no other object there shares its name
        others = _pairs(rng, c, rng.randint(0, c.max_objects - 1), lambda p: p[1] == pair[1])
        return dict(table=[pair, *others], held=_hands(rng, c), question=_q(rng, "colour_table", c, name=pair[1]),
                    answer=pair[0], target=pair)
    side = rng.choice(HANDS)
    return dict(table=_pairs(rng, c, rng.randint(1, c.max_objects)), held=_hands(rng, c, **{side: pair}),
                question=_q(rng, "colour_hand", c, hand=side), answer=pair[0], target=pair)


def _spec_count(rng, c):
    n = rng.randint(1 if c.ood else 0, c.max_objects)
    table, target = _pairs(rng, c, n), (_target(rng, c) if c.ood else None)
    if target:
        table[0] = target
    return dict(table=table, held=_hands(rng, c), question=_q(rng, "count", c), answer=str(n), target=target)


def _spec_spatial(rng, c):
    kind, side = rng.choice(("leftmost", "rightmost", "nearest")), rng.choice(HANDS)
    pair = _target(rng, c, name=None if c.ood else rng.choice(OBJECTS))
    n = rng.randint(min(2, c.max_objects), c.max_objects)
    table = [pair, *_pairs(rng, c, n - 1, lambda p: p[1] == pair[1])]  # the answer names exactly one object
    return dict(table=table, held=_hands(rng, c), layout=(kind, side),
                question=_q(rng, f"spatial_{kind}", c, hand=side), answer=pair[1], target=pair)


def _spec_presence(rng, c):
    yes, with_colour = c.cycle % 2 == 0, c.ood or rng.random() < 0.5
    pair = _target(rng, c)
    if with_colour:
        clash, q = (lambda p: p == pair), _q(rng, "presence_pair", c, colour=pair[0], name=pair[1])
    else:
        clash, q = (lambda p: p[1] == pair[1]), _q(rng, "presence_object", c, name=pair[1])
    table = _pairs(rng, c, rng.randint(1, c.max_objects), clash)
    decoys = [p for p in c.allowed if p[1] == pair[1] and p[0] != pair[0]]
    if yes:
        table[0] = pair
    elif with_colour and decoys and (c.ood or rng.random() < 0.5):  # hard negative: same object, other colour
        table[0] = rng.choice(decoys)
    return dict(table=table, held=_hands(rng, c), question=q, answer="yes" if yes else "no",
                target=pair if (yes or with_colour) else None)


def _spec_video(rng, c, qtype):
    side = HANDS[c.cycle % 2] if qtype == "video_hand" else rng.choice(HANDS)
    action = {"video_pickup": "pickup", "video_putdown": "putdown"}.get(qtype) or rng.choice(("pickup", "putdown"))
    pair = _target(rng, c)
    table = [pair, *_pairs(rng, c, rng.randint(0, c.max_objects - 1))]
    return dict(table=table, held=_hands(rng, c, **{side: None}), motion=(side, action), question=_q(rng, qtype, c),
                answer=side if qtype == "video_hand" else pair[1], target=pair)


SPECS = {"held_object": _spec_held_object, "colour": _spec_colour, "count": _spec_count, "spatial": _spec_spatial,
         "presence": _spec_presence, **{q: (lambda rng, c, q=q: _spec_video(rng, c, q)) for q in VIDEO_QTYPES}}


# ---------------------------------------------------------------------------------- layout (where things are)


def _place(rng: random.Random, geo: dict, n: int, rests: dict) -> list | None:
    """n (x, y, r) spots on the surface; objects may overlap a little but never hide one another or sit under a hand."""
    spots = []
    for _ in range(n):
        for _ in range(60):
            v = rng.uniform(0.04, 0.6)
            x, y = _surface_point(geo, rng.uniform(0.1, 0.9), v)
            r = geo["r"] * (0.6 + 0.6 * v)  # perspective: farther objects are smaller
            if (0.08 < x < 0.92 and all(math.dist((x, y), s[:2]) > 0.9 * (r + s[2]) for s in spots)
                    and all(math.dist((x, y), h) > r + 0.2 for h in rests.values())):
                spots.append((x, y, r))
                break
        else:
            return None
    return spots


def _extreme_first(spots: list, layout, rests: dict) -> list | None:
    """Reorder so the unique extreme spot (by a clear margin) comes first; None when the extreme is ambiguous."""
    kind, side = layout
    key = {"leftmost": lambda s: s[0], "rightmost": lambda s: -s[0],
           "nearest": lambda s: math.dist(s[:2], rests[side])}[kind]
    ranked = sorted(spots, key=key)
    return ranked if len(ranked) < 2 or key(ranked[1]) - key(ranked[0]) >= 0.08 else None


def _obj(rng: random.Random, pair: tuple, **where) -> dict:
    rgb = tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in RGB[pair[0]])
    return {"name": pair[1], "colour": pair[0], "rgb": rgb, **where}


def _layout_scene(rng: random.Random, spec: dict, surface: str, clutter: int) -> dict:
    geo = {"top": rng.uniform(0.2, 0.27), "half_top": rng.uniform(0.3, 0.4), "half_bottom": rng.uniform(0.7, 0.85),
           "cx": 0.5 + rng.uniform(-0.04, 0.04), "r": rng.uniform(0.09, 0.105)}
    rests = {"left": (rng.uniform(0.15, 0.24), rng.uniform(0.8, 0.86)),
             "right": (rng.uniform(0.76, 0.85), rng.uniform(0.8, 0.86))}
    for _ in range(500):
        spots = _place(rng, geo, len(spec["table"]), rests)
        if spots is not None and spec.get("layout"):
            spots = _extreme_first(spots, spec["layout"], rests)
        if spots is not None:
            break
    else:
        raise RuntimeError(f"could not lay out {len(spec['table'])} objects")  # not reached for max_objects <= 6
    objects = [_obj(rng, p, x=x, y=y, r=r) for p, (x, y, r) in zip(spec["table"], spots)]
    hands = [{"side": s, "x": rests[s][0], "y": rests[s][1],
              "held": _obj(rng, spec["held"][s], r=rng.uniform(0.09, 0.11)) if spec["held"][s] else None}
             for s in HANDS]
    light = {"gain": rng.uniform(0.8, 1.15), "tint": [rng.uniform(0.93, 1.07) for _ in range(3)],
             "gradient": rng.uniform(0.0, 0.1), "vertical": rng.random() < 0.5, "noise": rng.uniform(0.0, 4.0),
             "shadow_dx": rng.uniform(-0.3, 0.3)}
    return {"surface": surface, "geo": geo, "objects": objects, "hands": hands, "light": light, "clutter": clutter,
            "skin": rng.choice(SKIN), "sleeve": rng.choice(SLEEVE), "bg_jitter": rng.uniform(0.92, 1.08),
            "detail_seed": rng.getrandbits(32)}


def render_clip(scene: dict, motion: tuple, n_frames: int, size: int) -> list[Image.Image]:
    """A hand reaches from rest to ``scene["objects"][0]``, picks it up and carries it back (or, reversed, puts it
    down). The hand touches the object at frame (n-1)//2; the object is in the hand from then on."""
    side, action = motion
    m = (n_frames - 1) // 2
    alphas = [t / m for t in range(m + 1)] + [1 - (t - m) / (n_frames - 1 - m) for t in range(m + 1, n_frames)]
    obj, others = scene["objects"][0], scene["objects"][1:]
    idx = HANDS.index(side)
    rest, held_r = (scene["hands"][idx]["x"], scene["hands"][idx]["y"]), 0.1
    frames = []
    for t, a in enumerate(alphas):
        hand = {"side": side, "x": rest[0] + a * (obj["x"] - rest[0]), "y": rest[1] + a * (obj["y"] - rest[1]),
                "held": None if t < m else {**obj, "r": obj["r"] + (1 - a) * (held_r - obj["r"])}}
        hands = [hand if h["side"] == side else h for h in scene["hands"]]
        frames.append(render_scene({**scene, "objects": others if t >= m else scene["objects"], "hands": hands}, size))
    return frames if action == "pickup" else frames[::-1]


# ------------------------------------------------------------------------------------------------ records


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of one scene. Disjoint by construction: (master seed, split) fill the high bits, the index the low 32."""
    return ((seed * len(SPLITS) + SPLITS.index(split)) << 32) + index


def parse_pairs(pairs) -> tuple[tuple[str, str], ...]:
    """("purple apple", ...) -> (("purple", "apple"), ...), refusing unknown colours/objects."""
    out = []
    for text in pairs:
        colour, _, name = str(text).strip().partition(" ")
        if colour not in COLOURS or name not in OBJECTS:
            raise ValueError(f"held-out pair {text!r} must be '<colour> <object>' with colour in {COLOURS} "
                             f"and object in {OBJECTS}")
        out.append((colour, name))
    return tuple(dict.fromkeys(out))


def _config(seed, counts, image_size, max_objects, clutter, video_fraction, video_frames, held_out_pairs, qtypes):
    if not 0 <= seed < 2 ** 29:
        raise ValueError(f"seed must be in [0, 2**29), got {seed}")
    if any(not 0 <= n < 2 ** 32 for n in counts.values()) or image_size < 32 or clutter < 0:
        raise ValueError(f"need 0 <= split sizes < 2**32, image_size >= 32, clutter >= 0; "
                         f"got {counts}, {image_size}, {clutter}")
    if not 1 <= max_objects <= MAX_COUNT or not 3 <= video_frames <= 32 or not 0.0 <= video_fraction <= 1.0:
        raise ValueError(f"need 1 <= max_objects <= {MAX_COUNT}, 3 <= video_frames <= 32, 0 <= video_fraction <= 1; "
                         f"got {max_objects}, {video_frames}, {video_fraction}")
    held_out = parse_pairs(held_out_pairs)
    allowed = tuple((c, o) for o in OBJECTS for c in COLOURS if (c, o) not in held_out)
    if {o for _, o in allowed} != set(OBJECTS) or {c for c, _ in allowed} != set(COLOURS):
        raise ValueError(f"held_out_pairs {held_out_pairs} leave some object or colour with no allowed pair")
    if counts["ood"] and not held_out:
        raise ValueError("n_ood > 0 needs at least one held-out pair")
    qtypes = QTYPES if qtypes is None else tuple(qtypes)
    if unknown := set(qtypes) - set(QTYPES):
        raise ValueError(f"unknown qtypes {sorted(unknown)}; valid: {QTYPES}")
    image_q, video_q = tuple(q for q in IMAGE_QTYPES if q in qtypes), tuple(q for q in VIDEO_QTYPES if q in qtypes)
    if (video_fraction > 0 and not video_q) or (video_fraction < 1 and not image_q):
        raise ValueError(f"video_fraction={video_fraction} needs qtypes with video ({VIDEO_QTYPES}) and/or image "
                         f"({IMAGE_QTYPES}) questions; got {qtypes}")
    return dict(seed=seed, image_size=image_size, max_objects=max_objects, clutter=clutter,
                video_fraction=video_fraction, video_frames=video_frames, held_out=held_out, allowed=allowed,
                image_q=image_q, video_q=video_q)


def _make_record(cfg: dict, split: str, index: int) -> dict:
    """The index alone decides media and qtype (round robin), so a record does not depend on the split size."""
    f = cfg["video_fraction"]
    n_video_before = math.floor(index * f)
    is_video = math.floor((index + 1) * f) > n_video_before
    kinds, k = (cfg["video_q"], n_video_before) if is_video else (cfg["image_q"], index - n_video_before)
    qtype, ss = kinds[k % len(kinds)], scene_seed(cfg["seed"], split, index)
    # A string seed is hashed (sha512) by Random; an int seed is split into 32-bit words and CPython's
    # init_by_array maps words [a, a-1] to the same state as [a]: Random(5) == Random((4 << 32) + 5), which would
    # repeat scenes across splits.
    rng = random.Random(f"firstsight-{ss}")
    surface = rng.choice(SURFACES)
    ctx = _Ctx(cfg["allowed"], cfg["held_out"], split == "ood", cfg["max_objects"], surface, k // len(kinds))
    spec = SPECS[qtype](rng, ctx)
    scene = _layout_scene(rng, spec, surface, cfg["clutter"])
    rendered = spec["table"] + [p for p in spec["held"].values() if p]
    return {"id": f"{split}-{index:06d}", "split": split, "scene_seed": ss, "qtype": qtype,
            "media": "video" if is_video else "image", "question": spec["question"], "answer": spec["answer"],
            "aliases": list(ALIASES.get(spec["answer"], [])),
            "image": None if is_video else render_scene(scene, cfg["image_size"]),
            "video": render_clip(scene, spec["motion"], cfg["video_frames"], cfg["image_size"]) if is_video else None,
            "pairs": sorted({f"{c} {o}" for c, o in rendered}),
            "target": " ".join(spec["target"]) if spec["target"] else None}


def build_synthetic(*, seed: int = 0, n_train: int = 256, n_val: int = 32, n_test: int = 64, n_ood: int = 32,
                    image_size: int = 112, max_objects: int = 3, clutter: int = 2, video_fraction: float = 0.25,
                    video_frames: int = 4, held_out_pairs: tuple[str, ...] = DEFAULT_HELD_OUT,
                    qtypes: tuple[str, ...] | None = None, progress: bool = False) -> dict[str, list[dict]]:
    """Build the train/val/test/ood splits of synthetic egocentric VQA records.

    Scenes of different splits never share a seed (``scene_seed``). ``held_out_pairs`` ("colour object") are never
    rendered or mentioned in train/val/test; every ood record's questioned object (``target``) is one of them.
    ``clutter`` is the number of triples of flat marks per scene. A record is a dict with id, split, scene_seed,
    qtype, media, question, answer, aliases, image (PIL RGB or None), video (list of PIL frames or None), pairs
    (every "colour object" rendered) and target (the questioned "colour object", or None).
    """
    counts = {"train": n_train, "val": n_val, "test": n_test, "ood": n_ood}
    cfg = _config(seed, counts, image_size, max_objects, clutter, video_fraction, video_frames, held_out_pairs, qtypes)
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="synthetic scenes")
    out = {split: [] for split in SPLITS}
    for split, i in jobs:
        out[split].append(_make_record(cfg, split, i))
    return out
