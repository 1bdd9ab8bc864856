"""Properties of the synthetic egocentric world: determinism, disjoint splits, held-out pairs, exact answers."""
import collections
import io

import numpy as np
import pytest
from PIL import Image

from fslib.engine import collate
from fslib.world import synth

SEED = 0
SMALL = dict(n_train=8, n_val=4, n_test=4, n_ood=4)


@pytest.fixture(scope="module")
def built():
    return synth.build_synthetic(seed=SEED, n_train=160, n_val=16, n_test=16, n_ood=48)


def _all(built):
    return [r for recs in built.values() for r in recs]


def _frames(rec):
    return [rec["image"]] if rec["media"] == "image" else rec["video"]


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_same_params_give_identical_bytes():
    a, b = synth.build_synthetic(seed=SEED, **SMALL), synth.build_synthetic(seed=SEED, **SMALL)
    for ra, rb in zip(_all(a), _all(b), strict=True):
        assert {k: v for k, v in ra.items() if k not in ("image", "video")} == \
               {k: v for k, v in rb.items() if k not in ("image", "video")}
        for fa, fb in zip(_frames(ra), _frames(rb), strict=True):
            assert fa.tobytes() == fb.tobytes() and _png(fa) == _png(fb)


def test_different_seed_gives_different_images():
    a, b = synth.build_synthetic(seed=SEED, **SMALL), synth.build_synthetic(seed=SEED + 1, **SMALL)
    same = [fa.tobytes() == fb.tobytes() for ra, rb in zip(_all(a), _all(b)) for fa, fb in zip(_frames(ra), _frames(rb))]
    assert not any(same)


def test_record_does_not_depend_on_split_size():
    a = synth.build_synthetic(seed=SEED, n_train=4, n_val=0, n_test=0, n_ood=0)["train"]
    b = synth.build_synthetic(seed=SEED, n_train=9, n_val=0, n_test=0, n_ood=0)["train"][:4]
    assert [r["question"] for r in a] == [r["question"] for r in b]
    assert all(fa.tobytes() == fb.tobytes() for ra, rb in zip(a, b) for fa, fb in zip(_frames(ra), _frames(rb)))


def test_splits_are_disjoint_by_scene_seed(built):
    seeds = {name: {r["scene_seed"] for r in recs} for name, recs in built.items()}
    assert all(len(seeds[n]) == len(built[n]) for n in built)
    names = list(seeds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seeds[a] & seeds[b], (a, b)
    # different master seeds never collide either, whatever the index
    assert synth.scene_seed(0, "val", 5) != synth.scene_seed(1, "train", 5)
    assert synth.scene_seed(0, "ood", 2 ** 32 - 1) < synth.scene_seed(1, "train", 0)
    assert len({r["id"] for r in _all(built)}) == len(_all(built))


def test_held_out_pairs_only_in_ood(built):
    held = set(synth.DEFAULT_HELD_OUT)
    for name in ("train", "val", "test"):
        for r in built[name]:
            assert not held & set(r["pairs"]), r["id"]
            assert not any(p in r["question"] for p in held), r["question"]
            assert r["target"] is None or r["target"] not in held
    for r in built["ood"]:
        assert r["target"] in held, r["id"]
        if r["answer"] != "no":  # a "no" presence answer asks about a held-out pair that is absent
            assert r["target"] in r["pairs"]
    assert {r["qtype"] for r in built["ood"]} == set(synth.QTYPES)


def test_custom_held_out_pair_is_respected():
    out = synth.build_synthetic(seed=3, n_train=24, n_val=0, n_test=0, n_ood=8, held_out_pairs=("red book",))
    assert all("red book" not in r["pairs"] for r in out["train"])
    assert all(r["target"] == "red book" for r in out["ood"])


def test_answers_are_closed_vocabulary_and_consistent(built):
    vocab = set(synth.answer_vocabulary())
    for r in _all(built):
        assert r["answer"] in vocab and r["aliases"] == synth.ALIASES.get(r["answer"], [])
        colour, _, name = (r["target"] or "").partition(" ")
        if r["qtype"] == "colour":
            assert r["answer"] == colour
        elif r["qtype"] in ("spatial", "video_pickup", "video_putdown"):
            assert r["answer"] == name and r["target"] in r["pairs"]
        elif r["qtype"] == "held_object":
            assert r["answer"] == (name or "nothing")
        elif r["qtype"] == "count":
            assert 0 <= int(r["answer"]) <= 3
        elif r["qtype"] == "presence" and r["answer"] == "yes":
            assert r["target"] is None or r["target"] in r["pairs"]
        elif r["qtype"] == "video_hand":
            assert r["answer"] in synth.HANDS


def test_answers_are_balanced(built):
    by_type = collections.defaultdict(list)
    for r in built["train"]:
        by_type[r["qtype"]].append(r["answer"])
    assert set(by_type) == set(synth.QTYPES)
    for qtype, answers in by_type.items():
        top = collections.Counter(answers).most_common(1)[0][1] / len(answers)
        assert top <= (0.6 if qtype in ("presence", "video_hand") else 0.45), (qtype, collections.Counter(answers))
    presence = collections.Counter(by_type["presence"])
    assert abs(presence["yes"] - presence["no"]) <= 1
    assert set(by_type["count"]) == {"0", "1", "2", "3"}


def test_video_records(built):
    videos = [r for r in _all(built) if r["media"] == "video"]
    assert 0.2 <= len(videos) / len(_all(built)) <= 0.3
    for r in videos:
        assert r["image"] is None and len(r["video"]) == 4
        assert {f.size for f in r["video"]} == {(112, 112)} and all(f.mode == "RGB" for f in r["video"])
        assert r["video"][0].tobytes() != r["video"][-1].tobytes()  # the hand moved
    for r in _all(built):
        if r["media"] == "image":
            assert r["video"] is None and r["image"].size == (112, 112) and r["image"].mode == "RGB"


def test_video_frames_and_image_size_params():
    out = synth.build_synthetic(seed=SEED, n_train=4, n_val=0, n_test=0, n_ood=0, image_size=224, video_frames=6,
                                video_fraction=0.5)
    assert [r["media"] for r in out["train"]] == ["image", "video"] * 2
    assert all(len(r["video"]) == 6 and r["video"][0].size == (224, 224) for r in out["train"] if r["video"])


def test_answer_colour_is_drawn(built):
    """The asked colour is visible: some strongly saturated pixels have the hue of that palette colour."""
    palette = {c: Image.new("RGB", (1, 1), rgb).convert("HSV").getpixel((0, 0))[0] for c, rgb in synth.RGB.items()}

    def nearest(h):
        return min(palette, key=lambda c: min(abs(h - palette[c]), 256 - abs(h - palette[c])))

    for r in built["train"]:
        if r["qtype"] == "colour":
            hsv = np.asarray(r["image"].convert("HSV")).reshape(-1, 3)
            hues = collections.Counter(nearest(int(h)) for h, s, v in hsv if s > 180 and v > 70)
            assert hues[r["answer"]] >= 10, (r["id"], r["answer"], hues)


def test_corpus_covers_every_emitted_text(built):
    corpus = set(synth.corpus_text())
    for r in _all(built):
        assert r["question"] in corpus and r["answer"] in corpus and set(r["aliases"]) <= corpus


def test_blank_media_is_uniform_grey_and_copies(built):
    for r in (built["train"][0], next(r for r in built["train"] if r["media"] == "video")):
        blank = collate.blank_media(r)
        for orig, b in zip(_frames(r), _frames(blank), strict=True):
            assert b.size == orig.size and (np.asarray(b) == collate.BLANK_GREY).all()
            assert np.asarray(orig).std() > 0  # the original is left as it was
        assert blank["question"] == r["question"] and blank["answer"] == r["answer"]


def test_qtype_filter():
    out = synth.build_synthetic(seed=SEED, n_train=6, n_val=0, n_test=0, n_ood=0, qtypes=("count",), video_fraction=0)
    assert {r["qtype"] for r in out["train"]} == {"count"}


@pytest.mark.parametrize("kwargs", [dict(held_out_pairs=("pink apple",)), dict(qtypes=("nope",)),
                                    dict(qtypes=("count",)), dict(max_objects=7), dict(video_frames=2),
                                    dict(held_out_pairs=tuple(f"{c} apple" for c in synth.COLOURS))])
def test_bad_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        synth.build_synthetic(**SMALL, **kwargs)
