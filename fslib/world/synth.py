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

from fslib.world.render import (  # noqa: F401
    CLUTTER_RGB,
    RGB,
    SURFACE_RGB,
    _surface_point,
    render_clip,
    render_scene,
)

GENERATOR_VERSION = "1.1"  # 1.1: objects 1.6x larger (OBJECT_SCALE)
OBJECTS = ("cup", "phone", "keys", "book", "apple", "bottle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
IMAGE_QTYPES = ("held_object", "colour", "count", "spatial", "presence")
VIDEO_QTYPES = ("video_pickup", "video_putdown", "video_hand")
QTYPES = IMAGE_QTYPES + VIDEO_QTYPES
SPLITS = ("train", "val", "test", "ood")
HANDS = ("left", "right")
SURFACES = ("table", "counter", "floor")
DEFAULT_HELD_OUT = ("purple apple", "orange phone", "green cup")
# Object size, relative to generator 1.0's (radius 9-10.5% of the image side before perspective). At 1.6 a 112-px view
# shows each object over about four 28x28 cells; the vision probe's object-category accuracy rose from 0.36 to 0.50
# at equal pre-training (benchmarks/vision_probe.py). More than four objects on a surface are drawn smaller, so that six
# always fit.
OBJECT_SCALE = 1.6
MAX_COUNT = 6  # the count answers stop at "6"

SKIN = ((236, 188, 150), (205, 150, 110), (160, 105, 70), (110, 72, 48))  # low saturation: never an object colour
SLEEVE = ((40, 40, 45), (90, 90, 95), (150, 150, 150))
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
           "cx": 0.5 + rng.uniform(-0.04, 0.04),
           "r": OBJECT_SCALE * min(1.0, 4 / max(1, len(spec["table"]))) * rng.uniform(0.09, 0.105)}
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
              "held": _obj(rng, spec["held"][s], r=OBJECT_SCALE * rng.uniform(0.09, 0.11)) if spec["held"][s] else None}
             for s in HANDS]
    light = {"gain": rng.uniform(0.8, 1.15), "tint": [rng.uniform(0.93, 1.07) for _ in range(3)],
             "gradient": rng.uniform(0.0, 0.1), "vertical": rng.random() < 0.5, "noise": rng.uniform(0.0, 4.0),
             "shadow_dx": rng.uniform(-0.3, 0.3)}
    return {"surface": surface, "geo": geo, "objects": objects, "hands": hands, "light": light, "clutter": clutter,
            "skin": rng.choice(SKIN), "sleeve": rng.choice(SLEEVE), "bg_jitter": rng.uniform(0.92, 1.08),
            "detail_seed": rng.getrandbits(32)}


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


def _make_record(cfg: dict, split: str, index: int, stream: str | None = None) -> dict:
    """The index alone decides media and qtype (round robin), so a record does not depend on the split size.

    ``stream`` names a separate seed stream (the embedded models' pre-training, ``fslib.world.pretrain``): its scenes are
    seeded by the string ``f"firstsight-{stream}-{index}"``, which no split's integer scene seed can produce."""
    f = cfg["video_fraction"]
    n_video_before = math.floor(index * f)
    is_video = math.floor((index + 1) * f) > n_video_before
    kinds, k = (cfg["video_q"], n_video_before) if is_video else (cfg["image_q"], index - n_video_before)
    qtype, ss = kinds[k % len(kinds)], scene_seed(cfg["seed"], split, index)
    # A string seed is hashed (sha512) by Random; an int seed is split into 32-bit words and CPython's
    # init_by_array maps words [a, a-1] to the same state as [a]: Random(5) == Random((4 << 32) + 5), which would
    # repeat scenes across splits.
    rng = random.Random(f"firstsight-{ss}" if stream is None else f"firstsight-{stream}-{index}")
    surface = rng.choice(SURFACES)
    ctx = _Ctx(cfg["allowed"], cfg["held_out"], split == "ood", cfg["max_objects"], surface, k // len(kinds))
    spec = SPECS[qtype](rng, ctx)
    scene = _layout_scene(rng, spec, surface, cfg["clutter"])
    rendered = spec["table"] + [p for p in spec["held"].values() if p]
    return {"id": f"{stream or split}-{index:06d}", "split": split, "scene_seed": -1 if stream else ss, "qtype": qtype,
            "media": "video" if is_video else "image", "question": spec["question"], "answer": spec["answer"],
            "aliases": list(ALIASES.get(spec["answer"], [])),
            "image": None if is_video else render_scene(scene, cfg["image_size"]),
            "video": render_clip(scene, spec["motion"], cfg["video_frames"], cfg["image_size"]) if is_video else None,
            "pairs": sorted({f"{c} {o}" for c, o in rendered}),
            "target": " ".join(spec["target"]) if spec["target"] else None,
            **({"scene": scene} if stream else {})}


def stream_records(stream: str, n: int, *, seed: int = 0, image_size: int = 112, max_objects: int = 3,
                   clutter: int = 2, video_fraction: float = 0.25, video_frames: int = 4,
                   held_out_pairs: tuple[str, ...] = DEFAULT_HELD_OUT, qtypes=None) -> list[dict]:
    """``n`` training-style records from the named seed stream (disjoint from every split); each also carries its
    ``scene`` layout, from which exact dense labels and captions are derived (``fslib.world.pretrain``). ``qtypes``
    restricts the question kinds (default: all, round robin)."""
    cfg = _config(seed, {"train": n, "val": 0, "test": 0, "ood": 0}, image_size, max_objects, clutter,
                  video_fraction, video_frames, held_out_pairs, qtypes)
    return [_make_record(cfg, "train", i, stream=f"{stream}-{seed}") for i in range(n)]


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


# The master seed of 02's unlabelled pool is seed + this, never the data's own seed, so the pool is disjoint from
# train, val and test by construction.
POOL_SEED_OFFSET = 100_003
_SYNTH_KEYS = ("image_size", "max_objects", "clutter", "video_fraction", "video_frames")


def synthetic_pool(n: int, *, data_params: dict, seed: int) -> list[dict]:
    """``n`` unlabelled synthetic scenes rendered with 01's settings (``data_params``, from data_stats.json)."""
    if n <= 0:
        return []
    if data_params.get("data_source", "synthetic") != "synthetic":
        raise ValueError(f"n_unlabelled={n} renders synthetic scenes, but the data is {data_params['data_source']!r}: "
                         "set n_unlabelled to 0 and add records without an answer to your own data instead")
    missing = [k for k in _SYNTH_KEYS if k not in data_params]
    if missing:
        raise ValueError(f"the data was not built by fslib.world.synth (no {missing} in its params): an unlabelled "
                         "pool cannot be rendered; add records with answer None to your own data instead")
    kw = {k: data_params[k] for k in _SYNTH_KEYS}
    recs = build_synthetic(seed=seed + POOL_SEED_OFFSET, n_train=n, n_val=0, n_test=0, n_ood=0, **kw)["train"]
    return [{**r, "id": f"unlabelled-{i:06d}", "split": "unlabelled", "answer": None, "aliases": []}
            for i, r in enumerate(recs)]
