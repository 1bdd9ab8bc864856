"""The embedded pair's pre-training: exact labels and captions, disjoint scenes, the stages and the build cache."""
import pytest
import torch

from fslib.engine import models
from fslib.world import pretrain, synth


def _scene(objects, held=None):
    hands = [{"side": "left", "x": 0.2, "y": 0.83, "held": held}, {"side": "right", "x": 0.8, "y": 0.83, "held": None}]
    return {"surface": "table", "objects": objects, "hands": hands}


def test_cell_labels_put_each_thing_in_its_cell_and_every_cell_in_its_third():
    cup = {"name": "cup", "colour": "red", "x": 0.6, "y": 0.35, "r": 0.05}  # inside cell (row 1, col 2) of 4x4
    labels = pretrain.cell_labels(_scene([cup]), 4, 4).reshape(4, 4, -1)
    at = {name: labels[..., pretrain.LABELS.index(name)] for name in pretrain.LABELS}
    assert at["cup"].nonzero().tolist() == [[1, 2]]
    assert at["red"].nonzero().tolist() == [[1, 2]]
    assert at["phone"].sum() == 0 and at["blue"].sum() == 0
    assert at["hand"][3, 0] == 1 and at["hand"][3, 3] == 1 and at["hand"][0].sum() == 0
    assert at["col_left"][:, 0].all() and at["col_right"][:, 3].all() and at["col_centre"][:, 1:3].all()
    assert at["row_top"][0].all() and at["row_bottom"][3].all()
    assert (labels[..., len(synth.OBJECTS) + len(synth.COLOURS) + 1:].sum(-1) == 2).all()  # one column, one row


def test_cell_labels_mark_a_held_object_with_its_colour_near_the_hand():
    held = {"name": "apple", "colour": "green", "r": 0.1}
    labels = pretrain.cell_labels(_scene([], held=held), 4, 4).reshape(4, 4, -1)
    apple = labels[..., pretrain.LABELS.index("apple")]
    assert apple[3, 0] == 1 and apple[:, 2:].sum() == 0
    assert torch.equal(apple, labels[..., pretrain.LABELS.index("green")])


def test_caption_lists_surface_objects_left_to_right_then_the_hands():
    objects = [{"name": "phone", "colour": "blue", "x": 0.7, "y": 0.4, "r": 0.1},
               {"name": "cup", "colour": "red", "x": 0.3, "y": 0.5, "r": 0.1}]
    text = pretrain.caption(_scene(objects, held={"name": "keys", "colour": "yellow", "r": 0.1}))
    assert text == "table: red cup, blue phone. left hand: yellow keys. right hand: nothing."
    assert pretrain.caption(_scene([])) == "table: nothing. left hand: nothing. right hand: nothing."


def test_pretraining_scenes_are_their_own_stream_and_never_show_held_out_pairs():
    stream = synth.stream_records("pretrain-qa", 40, video_fraction=0.25)
    again = synth.stream_records("pretrain-qa", 40, video_fraction=0.25)
    splits = synth.build_synthetic(n_train=40, n_val=0, n_test=0, n_ood=0)
    assert [r["question"] for r in stream] == [r["question"] for r in again]  # deterministic
    assert all(r["id"].startswith("pretrain-qa-0-") and r["scene_seed"] == -1 and "scene" in r for r in stream)
    assert "scene" not in splits["train"][0]
    train_images = {r["image"].tobytes() for r in splits["train"] if r["image"] is not None}
    assert not train_images & {r["image"].tobytes() for r in stream if r["image"] is not None}
    held_out = set(synth.DEFAULT_HELD_OUT)
    assert not held_out & {p for r in stream for p in r["pairs"]}
    captions = pretrain.alignment_records(captions=30, questions=0)
    assert not any(p in r["answer"] for r in captions for p in held_out)


_LANG = {"captions": 8, "questions": 8, "batch_size": 8, "examples": 32, "eval_every": 2, "warmup_steps": 2,
         "probe_questions": 8}


@pytest.mark.slow
def test_the_two_stages_train_the_tower_then_only_the_language_model(student_path, processor):
    model = models.load_model(student_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = pretrain.pretrain(model, processor, {"seed": 0, "vision": {"scenes": 64, "epochs": 1, "lr": 2e-3},
                                                 "language": _LANG}, progress=False)
    assert set(report["vision"]["f1"]) == set(pretrain.LABELS) and report["language"]["records"] == 16
    assert report["vision"]["loss_first"] > 0 and report["language"]["steps"] == 4
    assert [p["step"] for p in report["language"]["curve"]] == [0, 2, 4]  # the curve's points, the start included
    state = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], before[k])}
    assert any(k.startswith("model.visual.") for k in changed)
    assert any(k.startswith("model.language_model.") for k in changed)


def test_the_language_stage_keeps_the_tower_frozen_and_learns_from_cached_tokens(student_path, processor):
    from fslib.world import language

    model = models.load_model(student_path)
    visual = {k: v.clone() for k, v in model.model.visual.state_dict().items()}
    records = pretrain.alignment_records(captions=4, questions=4)
    batches = language.cache_batches(model, processor, records, batch_size=4, progress=False)
    assert all("pixel_values" not in b["inputs"] and b["feats"] for b in batches)  # the tower ran once, here
    mean_loss = lambda: sum(language._step(model, b).item() for b in batches) / len(batches)  # noqa: E731
    with torch.no_grad():
        before = mean_loss()
    out = language.train_language(model, processor, batches, examples=48, lr=3e-3, warmup_steps=1, eval_every=100,
                                  probe=records[:2], prior=records)
    assert all(torch.equal(v, model.model.visual.state_dict()[k]) for k, v in visual.items())
    with torch.no_grad():
        assert out["steps"] == 12 and mean_loss() < before  # it learns the few records it sees
    assert len(out["curve"]) == 2 and not out["stopped_early"]


def test_stop_at_em_ends_the_stage_at_the_first_probe_that_reaches_it(student_path, processor):
    from fslib.world import language

    model = models.load_model(student_path)
    records = pretrain.alignment_records(captions=0, questions=4)
    batches = language.cache_batches(model, processor, records, batch_size=4, progress=False)
    out = language.train_language(model, processor, batches, examples=40, lr=1e-3, warmup_steps=1, eval_every=2,
                                  probe=records[:2], prior=records, stop_at_em=0.0)  # the start already reaches 0
    assert out["steps"] == 0 and out["stopped_early"] and len(out["curve"]) == 1


def test_the_vision_key_says_when_a_tower_is_the_same():
    from fslib.world import embedded

    recipe = embedded.recipe()["models"]["tiny-student"]
    key = pretrain.vision_key(recipe)
    deeper = {**recipe, "preset": {**recipe["preset"], "layers": 8}}  # the language model's depth: same tower
    assert pretrain.vision_key(deeper) == key
    for changed in ({"preset": {**recipe["preset"], "hidden": 96}},  # the merger's output width
                    {"pretrain": {**recipe["pretrain"], "seed": 5}},
                    {"pretrain": {**recipe["pretrain"], "vision": {**recipe["pretrain"]["vision"], "epochs": 1}}}):
        assert pretrain.vision_key({**recipe, **changed}) != key
