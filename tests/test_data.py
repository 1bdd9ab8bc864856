"""Saving/loading datasets, users' own data in three formats, and loud validation of every bad-input case."""
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from fslib.data import formats, sources, store
from fslib.world import synth


def _png(path, colour=(200, 30, 30), size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def _mp4(path, n=10):
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def media(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", (10, 200, 10))
    for i in (1, 2, 10):  # natural order must put frame_10 last
        _png(tmp_path / "clip" / f"frame_{i}.png", (20 * i, 0, 0))
    (tmp_path / "corrupt.png").write_bytes(b"this is not a png")
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    return tmp_path


# ---------------------------------------------------------------------------------------------- save / load


def test_save_dataset_round_trip(tmp_path):
    splits = synth.build_synthetic(seed=1, n_train=6, n_val=2, n_test=3, n_ood=2)
    out = tmp_path / "ds"
    store.save_dataset(splits, out, card={"generator_version": synth.GENERATOR_VERSION, "seed": 1})
    ds = datasets.load_from_disk(str(out))
    assert {k: len(v) for k, v in ds.items()} == {"train": 6, "val": 2, "test": 3, "ood": 2}
    back = store.records_from_dataset(ds["train"])
    for orig, rec in zip(splits["train"], back, strict=True):
        assert {k: rec[k] for k in ("id", "qtype", "question", "answer", "aliases", "pairs", "target", "scene_seed")} \
               == {k: orig[k] for k in ("id", "qtype", "question", "answer", "aliases", "pairs", "target", "scene_seed")}
        if orig["media"] == "image":
            assert isinstance(rec["image"], Image.Image) and rec["video"] is None
            assert rec["image"].tobytes() == orig["image"].tobytes()  # PNG storage is lossless
        else:
            assert rec["image"] is None and [f.tobytes() for f in rec["video"]] == [f.tobytes() for f in orig["video"]]
    card = (out / "README.md").read_text()
    assert f"generator_version | {synth.GENERATOR_VERSION}" in card and "| seed | 1 |" in card
    for name, recs in splits.items():
        assert f"| {name} | {len(recs)} | {len(recs)} |" in card
    n_count = sum(r["qtype"] == "count" for r in splits["train"])
    header = next(line for line in card.splitlines() if line.startswith("| split | colour"))
    row = next(line for line in card.splitlines() if line.startswith("| train |") and line.count("|") == header.count("|"))
    assert row.split("|")[header.split("|").index(" count ")].strip() == str(n_count)
    assert len(store.records_from_dataset(store.load_dataset_dir(out))) == 13


def test_user_records_save_unlabelled(tmp_path, media):
    recs, _ = formats.load_jsonl(_jsonl(media / "d.jsonl", [{"image": "a.png", "question": "What is this?"}]))
    store.save_dataset({"user": recs}, tmp_path / "u", card={"source": "d.jsonl"})
    back = store.records_from_dataset(datasets.load_from_disk(str(tmp_path / "u")))
    assert back[0]["answer"] is None and back[0]["scene_seed"] == -1 and back[0]["qtype"] == "user"


# ---------------------------------------------------------------------------------------------- formats


def test_jsonl_round_trip(media):
    _mp4(media / "clip.mp4", n=10)
    path = _jsonl(media / "d.jsonl", [
        {"image": "a.png", "question": "What colour?", "answer": "red", "aliases": ["crimson"]},
        {"video": "clip", "question": "What happened?", "answer": "nothing", "qtype": "video_custom"},
        {"video": ["clip/frame_2.png", "clip/frame_1.png"], "question": "Order?"},
        {"video": "clip.mp4", "question": "How bright?", "answer": "dim", "id": "mp4-sample"},
    ])
    recs, skipped = sources.load_user_data(path, max_frames=4)
    assert skipped == [] and [r["media"] for r in recs] == ["image", "video", "video", "video"]
    assert recs[0]["image"].getpixel((0, 0)) == (200, 30, 30) and recs[0]["aliases"] == ["crimson"]
    assert [f.getpixel((0, 0))[0] for f in recs[1]["video"]] == [20, 40, 200] and recs[1]["qtype"] == "video_custom"
    assert recs[2]["answer"] is None and [f.getpixel((0, 0))[0] for f in recs[2]["video"]] == [40, 20]
    assert len(recs[3]["video"]) == 4 and recs[3]["id"] == "mp4-sample"  # 10 decoded frames cut to max_frames
    assert all(r["split"] == "user" and r["scene_seed"] == -1 for r in recs)


def test_llava_round_trip(media):
    items = [{"id": "s1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A red square."},
        {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Anything else?"}]},
        {"id": "s2", "video": ["clip/frame_1.png", "clip/frame_2.png"], "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "<video> What moved?"},
            {"from": "gpt", "value": "nothing"}]}]
    (media / "llava.json").write_text(json.dumps(items))
    recs, skipped = sources.load_user_data(media / "llava.json")
    assert skipped == [] and [r["id"] for r in recs] == ["s1-t0", "s1-t1", "s1-t2", "s2-t0"]
    assert [r["question"] for r in recs] == ["What is this?", "And its colour?", "Anything else?", "What moved?"]
    assert [r["answer"] for r in recs] == ["A red square.", "red", None, "nothing"]
    assert recs[3]["media"] == "video" and len(recs[3]["video"]) == 2


def _hf_dir(tmp_path, rows):
    features = datasets.Features({"messages": datasets.List({"role": datasets.Value("string"),
                                                             "content": datasets.Value("string")}),
                                  "images": datasets.List(datasets.Image())})
    ds = datasets.Dataset.from_dict({"messages": [r[0] for r in rows], "images": [r[1] for r in rows]}, features)
    ds.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hf_vlm_round_trip(tmp_path):
    img = Image.new("RGB", (20, 20), (0, 0, 255))
    rows = [([{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "blue"},
              {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}], [img]),
            ([{"role": "system", "content": "Short answers."}, {"role": "user", "content": "Shape?"}], [img])]
    recs, skipped = sources.load_user_data(_hf_dir(tmp_path, rows))
    assert skipped == [] and [(r["question"], r["answer"]) for r in recs] == \
           [("What colour?", "blue"), ("Sure?", "yes"), ("Shape?", None)]
    assert recs[0]["image"].getpixel((0, 0)) == (0, 0, 255)


def test_hf_vlm_list_content(tmp_path):
    img = Image.new("RGB", (8, 8))
    msgs = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Count?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]
    datasets.Dataset.from_dict({"messages": [msgs], "images": [[img]]}).save_to_disk(str(tmp_path / "hf"))
    recs, _ = formats.load_hf_vlm(tmp_path / "hf")
    assert [(r["question"], r["answer"]) for r in recs] == [("Count?", "2")]


def test_qtype_is_read_from_every_format_and_defaults_to_user(media, tmp_path):
    """A user's own kinds of question reach the records (03's per-type tables and prior baseline read them)."""
    items = [{"id": "s1", "image": "a.png", "qtype": "colour", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]},
        {"id": "s2", "image": "a.png", "conversations": [{"from": "human", "value": "<image> Shape?"}]}]
    (media / "typed.json").write_text(json.dumps(items))
    recs, _ = formats.load_llava_json(media / "typed.json")
    assert [r["qtype"] for r in recs] == ["colour", "colour", "user"]
    img = Image.new("RGB", (8, 8))
    msgs = lambda q: [{"role": "user", "content": q}, {"role": "assistant", "content": "2"}]  # noqa: E731
    datasets.Dataset.from_dict({"messages": [msgs("Count?"), msgs("Which?")], "images": [[img], [img]],
                                "qtype": ["count", None]}).save_to_disk(str(tmp_path / "typed"))
    recs, _ = formats.load_hf_vlm(tmp_path / "typed")
    assert [r["qtype"] for r in recs] == ["count", "user"]
    (media / "typed.jsonl").write_text(json.dumps({"image": "a.png", "question": "Q?", "qtype": "spatial"}) + "\n"
                                       + json.dumps({"image": "a.png", "question": "Q?"}) + "\n")
    assert [r["qtype"] for r in formats.load_jsonl(media / "typed.jsonl")[0]] == ["spatial", "user"]
    (media / "bad.jsonl").write_text(json.dumps({"image": "a.png", "question": "Q?", "qtype": 3}) + "\n")
    with pytest.raises(store.DataError, match="qtype must be a string"):
        formats.load_jsonl(media / "bad.jsonl")


# ---------------------------------------------------------------------------------------------- bad inputs

JSONL_BAD = [
    ({"image": "missing.png", "question": "Q?"}, "not found"),
    ({"image": "corrupt.png", "question": "Q?"}, "cannot read image"),
    ({"image": "truncated.png", "question": "Q?"}, "cannot read image"),
    ({"image": "a.png", "question": "   "}, "empty or missing question"),
    ({"image": "a.png"}, "empty or missing question"),
    ({"image": "a.png", "question": "Q?", "answer": ""}, "empty or missing answer"),
    ({"question": "Q?"}, "exactly one of 'image' or 'video'"),
    ({"video": "nowhere", "question": "Q?"}, "video not found"),
    ({"video": ["clip/frame_1.png", "b.png"], "question": "Q?"}, "differ in size"),
    ('{"image": "a.png", "question": ', "malformed JSON"),
]


@pytest.mark.parametrize("bad,reason", JSONL_BAD)
def test_jsonl_bad_sample(media, bad, reason):
    _png(media / "b.png", size=(5, 5))
    path = _jsonl(media / "bad.jsonl", [{"image": "a.png", "question": "ok?"}, bad, {"image": "a.png", "question": "ok"}])
    with pytest.raises(store.DataError, match=reason) as err:
        formats.load_jsonl(path)
    assert "bad.jsonl" in str(err.value) and "line 2" in str(err.value)
    recs, skipped = sources.load_user_data(path, on_bad_sample="skip")
    assert len(recs) == 2 and len(skipped) == 1
    assert skipped[0]["record"] == 2 and skipped[0]["file"].endswith("bad.jsonl") and reason in skipped[0]["reason"]


LLAVA_BAD = [
    ({"image": "missing.png", "conversations": [{"from": "human", "value": "Q?"}]}, "not found"),
    ({"image": "corrupt.png", "conversations": [{"from": "human", "value": "Q?"}]}, "cannot read image"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image>\n"}]}, "empty or missing question"),
    ({"image": "a.png", "conversations": [{"from": "gpt", "value": "A"}]}, "alternate"),
    ({"image": "a.png", "conversations": [{"from": "robot", "value": "A"}]}, "each turn needs"),
    ({"image": ["a.png", "a.png"], "conversations": [{"from": "human", "value": "Q?"}]}, "exactly one image"),
    ({"image": "a.png"}, "conversations"),
]


@pytest.mark.parametrize("bad,reason", LLAVA_BAD)
def test_llava_bad_sample(media, bad, reason):
    good = {"image": "a.png", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]}
    (media / "bad.json").write_text(json.dumps([good, good, bad]))
    with pytest.raises(store.DataError, match=reason) as err:
        formats.load_llava_json(media / "bad.json")
    assert "bad.json" in str(err.value) and "index 2" in str(err.value)
    recs, skipped = formats.load_llava_json(media / "bad.json", on_bad_sample="skip")
    assert len(recs) == 2 and [(s["record"], reason in s["reason"]) for s in skipped] == [(2, True)]


def test_llava_malformed_file(media):
    (media / "broken.json").write_text("[{")
    with pytest.raises(store.DataError, match="broken.json.*malformed JSON"):
        formats.load_llava_json(media / "broken.json", on_bad_sample="skip")  # a broken file cannot be skipped around


@pytest.mark.parametrize("bad,reason", [
    (([{"role": "user", "content": "Q?"}], []), "exactly one decoded image"),
    (([{"role": "user", "content": ""}], "img"), "empty or missing question"),
    (([{"role": "assistant", "content": "A"}], "img"), "alternate"),
])
def test_hf_vlm_bad_sample(tmp_path, bad, reason):
    img = Image.new("RGB", (8, 8))
    good = ([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}], [img])
    path = _hf_dir(tmp_path, [good, (bad[0], [img] if bad[1] == "img" else bad[1])])
    with pytest.raises(store.DataError, match=reason) as err:
        formats.load_hf_vlm(path)
    assert "hf" in str(err.value) and "index 1" in str(err.value)
    recs, skipped = formats.load_hf_vlm(path, on_bad_sample="skip")
    assert len(recs) == 1 and skipped[0]["record"] == 1 and reason in skipped[0]["reason"]


def test_bad_arguments(media):
    path = _jsonl(media / "d.jsonl", [{"image": "a.png", "question": "Q?"}])
    with pytest.raises(ValueError, match="'error', 'skip'"):
        sources.load_user_data(path, on_bad_sample="ignore")
    with pytest.raises(ValueError, match="fmt must be"):
        sources.load_user_data(path, fmt="csv")
    with pytest.raises(FileNotFoundError):
        sources.load_user_data(media / "nope.jsonl")


def test_check_sample_limits():
    recs = [{"id": f"r{i}"} for i in range(4)]
    lengths, visual = [10, 50, 10, 10], [5, 5, 90, 5]
    with pytest.raises(store.DataError, match=r"train.jsonl, index 1: record 'r1': 50 tokens exceed max_length=20"):
        sources.check_sample_limits(recs, lengths, visual, max_length=20, max_visual_tokens=64, source="train.jsonl")
    kept, skipped = sources.check_sample_limits(recs, lengths, visual, max_length=20, max_visual_tokens=64,
                                             on_bad_sample="skip", source="train.jsonl")
    assert [r["id"] for r in kept] == ["r0", "r3"]
    assert [(s["record"], s["file"]) for s in skipped] == [(1, "train.jsonl"), (2, "train.jsonl")]
    assert "visual tokens exceed max_visual_tokens=64" in skipped[1]["reason"]
    kept, _ = sources.check_sample_limits(recs, lengths, visual, max_length=100, max_visual_tokens=None)
    assert kept == recs
    with pytest.raises(ValueError):
        sources.check_sample_limits(recs, lengths[:2], visual, max_length=1, max_visual_tokens=None)
    with pytest.raises(ValueError, match="on_bad_sample"):
        sources.check_sample_limits(recs, lengths, visual, max_length=1, max_visual_tokens=None, on_bad_sample="drop")
