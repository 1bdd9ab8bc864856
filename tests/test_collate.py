import pytest
import torch

from fslib.engine import collate, models
from fslib.world import embedded


def test_labels_keep_only_answer_and_im_end(processor, pixels, small_splits):
    recs = small_splits["train"][:4]
    batch = collate.VQACollator(processor, pixels)(recs)
    tok = processor.tokenizer
    for row, rec in enumerate(recs):
        lab = batch["labels"][row]
        kept = tok.decode(lab[lab != -100])
        assert kept == rec["answer"] + "<|im_end|>"
    # padding and visual tokens are never labelled
    assert (batch["labels"][batch["inputs"]["attention_mask"] == 0] == -100).all()
    assert (batch["labels"][batch["inputs"]["mm_token_type_ids"] != 0] == -100).all()


def test_whole_processor_output_reaches_both_vision_towers(processor, pixels, small_splits, teacher_path, student_path):
    recs = [r for r in small_splits["train"] if r["media"] == "image"][:2]
    recs += [r for r in small_splits["train"] if r["media"] == "video"][:1]
    batch = collate.VQACollator(processor, pixels)(recs)
    assert {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"} <= set(batch["inputs"])
    for path in (teacher_path, student_path):
        model = models.load_model(path)
        calls = []
        model.model.visual.register_forward_hook(lambda m, a, k: calls.append(a[0].shape[0]))
        model(**batch["inputs"])
        # one call for the images, one for the video: every patch went through the tower
        n_patches = batch["inputs"]["pixel_values"].shape[0] + batch["inputs"]["pixel_values_videos"].shape[0]
        assert sum(calls) == n_patches and len(calls) == 2


def test_generation_batches_are_left_padded_prompts(processor, pixels, small_splits):
    batch = collate.VQACollator(processor, pixels, train=False)(small_splits["test"][:3])
    assert "labels" not in batch
    assert (batch["inputs"]["attention_mask"][:, -1] == 1).all()
    tail = processor.tokenizer.decode(batch["inputs"]["input_ids"][0, -8:])
    assert tail.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_visual_tokens_are_counted(processor, pixels, small_splits):
    batch = collate.VQACollator(processor, pixels)(small_splits["train"][:3])
    assert (batch["visual_tokens"] > 0).all()
    assert torch.equal(batch["visual_tokens"] + batch["text_tokens"], batch["inputs"]["attention_mask"].sum(1))


def test_too_long_sample_is_an_error(processor, pixels, small_splits):
    with pytest.raises(ValueError, match="max_length=8"):
        collate.VQACollator(processor, pixels, max_length=8)(small_splits["train"][:1])


def test_processor_mismatch_is_named(processor, tmp_path):
    other = embedded.build_tiny_processor(["a completely different corpus"] * 5, **embedded.TINY_PIXELS)
    with pytest.raises(collate.ProcessorMismatchError, match="vocabularies differ"):
        collate.check_processors_agree(other, processor)
    collate.check_processors_agree(processor, processor)
