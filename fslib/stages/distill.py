"""02_distill's decisions: which trainings run and with what (the fair protocol), which records the teacher answers
and caches, and what ``training.json`` says. The notebook calls these once per step and shows what they return.

The fair protocol: the KD student and the SFT-only baseline train on the same labelled questions, for the same number
of optimizer steps, at the same learning rate and schedule. With teacher-answered questions the KD student's epochs
are windows of ``len(labelled)`` samples over the larger set (``samples_per_epoch``): the SFT baseline's steps, yet
every question is used; KD on the labelled questions alone is then trained too, so the two effects can be told apart.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fslib.core.fsio import read_json, write_json
from fslib.data import store
from fslib.engine import adapters, collate, generate, models
from fslib.engine.losspaths import LossConfig
from fslib.evaluation import teachercheck
from fslib.evaluation.metrics import exact_match, references
from fslib.training import cache, jobs, seqkd
from fslib.training.config import (DataConfig, DistillConfig, ModelConfig, OnPolicyConfig, OptimConfig, RuntimeConfig,
                                   TeacherConfig, pixel_bounds)
from fslib.world import synth
from fslib.world.embedded import resolve_model

# 02's parameters that decide which trainings run and how the teacher is used, rather than how one training runs.
PROTOCOL_KEYS = ("teacher_model", "student_model", "prepare_teacher", "teacher_epochs", "teacher_learning_rate",
                 "teacher_patience", "teacher_check", "teacher_check_margin", "teacher_check_sft_margin",
                 "teacher_freeze_vision", "teacher_lora", "student_lora", "teacher_dtype", "teacher_quantization",
                 "student_dtype", "teacher_device_map", "train_sft_baseline", "train_kd_labelled_baseline",
                 "n_unlabelled", "teacher_answer_tokens", "teacher_answer_min_confidence", "teacher_cache",
                 "teacher_cache_topk", "teacher_cache_tail", "num_processes", "accelerate_config", "cpu_threads")


def load_records(out: Path) -> tuple[dict, list[dict], list[dict]]:
    """01's splits, and train's labelled and unlabelled records (no answer: only the teacher can answer them)."""
    dataset = store.load_dataset_dir(Path(out) / "data")
    splits = {name: store.records_from_dataset(dataset[name]) for name in dataset}
    labelled, unlabelled = seqkd.split_labelled(splits["train"])
    return splits, labelled, unlabelled


def _config(P: dict, out: Path, label: str, model_path: str) -> DistillConfig:
    """A training of ``model_path`` on the labels alone with 02's shared settings (alpha 0, no teacher)."""
    return DistillConfig(
        label=label, out_dir=str(Path(out) / label),
        model=ModelConfig(path=str(model_path), dtype=P["student_dtype"], lora=P["student_lora"], lora_r=P["lora_r"],
                          lora_alpha=P["lora_alpha"], lora_dropout=P["lora_dropout"], freeze_vision=P["freeze_vision"],
                          gradient_checkpointing=P["gradient_checkpointing"],
                          trust_remote_code=P["trust_remote_code"]),
        data=DataConfig(data_dir=str(Path(out) / "data"), pixels=pixel_bounds(P), max_length=P["max_length"]),
        loss=LossConfig(temperature=P["temperature"], alpha=0.0, divergence=P["divergence"], beta=P["beta"],
                        kd_impl=P["kd_impl"], kd_chunk_size=P["kd_chunk_size"]),
        optim=OptimConfig(epochs=P["epochs"], batch_size=P["batch_size"], grad_accum=P["grad_accum"],
                          learning_rate=P["learning_rate"], warmup_ratio=P["warmup_ratio"],
                          weight_decay=P["weight_decay"], max_grad_norm=P["max_grad_norm"], seed=P["seed"]),
        runtime=RuntimeConfig(save_every=P["save_every"], resume=P["resume"], report_to=P["report_to"],
                              vision_memo_gb=P["vision_memo_gb"]))


def teacher_preparation(P: dict, out: Path, teacher_path: str) -> DistillConfig | None:
    """Plain fine-tuning of the teacher on the labelled train split, with its own epochs, learning rate, dtype,
    adapters and tower freezing; None when ``prepare_teacher`` is off."""
    if not P["prepare_teacher"]:
        return None
    return _config(P, out, "teacher", teacher_path).but(
        model={"dtype": P["teacher_dtype"], "lora": P["teacher_lora"], "freeze_vision": P["teacher_freeze_vision"]},
        optim={"epochs": P["teacher_epochs"], "learning_rate": P["teacher_learning_rate"],
               "patience": P["teacher_patience"]})


def models_and_processor(P: dict, out: Path) -> tuple[str, str, object, object, dict]:
    """Teacher and student folders (``embedded:`` names built into the run folder), the student's processor (checked
    against the teacher's: distillation compares logits token by token, so ids and pixels must agree), its collator,
    and what each ``config.json`` says (nothing is loaded yet)."""
    trust = P["trust_remote_code"]
    teacher_path = resolve_model(P["teacher_model"], Path(out) / "embedded")
    student_path = resolve_model(P["student_model"], Path(out) / "embedded")
    processor = models.load_processor(student_path, trust_remote_code=trust)
    collate.check_processors_agree(models.load_processor(teacher_path, trust_remote_code=trust), processor)
    collator = collate.VQACollator(processor, pixel_bounds(P), max_length=P["max_length"])
    described = {"teacher": adapters.describe_checkpoint(teacher_path, dtype=P["teacher_dtype"],
                                                         quantization=P["teacher_quantization"],
                                                         trust_remote_code=trust),
                 "student": adapters.describe_checkpoint(student_path, dtype=P["student_dtype"],
                                                         trust_remote_code=trust)}
    return teacher_path, student_path, processor, collator, described


def teacher_ref(P: dict, teacher_path: str) -> cache.TeacherRef:
    return cache.TeacherRef(str(teacher_path), dtype=P["teacher_dtype"], quantization=P["teacher_quantization"],
                            device_map=P["teacher_device_map"], trust_remote_code=P["trust_remote_code"])


def sft_training(P: dict, out: Path, student_path: str) -> dict[str, DistillConfig]:
    """The SFT-only baseline (labels alone, the KD student's data, steps and schedule), trained before the teacher
    check: what fine-tuning reaches is what the teacher must beat. Empty when ``train_sft_baseline`` is off."""
    return {"sft_student": _config(P, out, "sft_student", student_path)} if P["train_sft_baseline"] else {}


def teacher_curve_note(history: dict | None, P: dict) -> str:
    """How teacher preparation ended, in words: stopped on validation (patience), or at the epoch ceiling while its
    validation loss was still falling (then ``teacher_epochs`` should be raised)."""
    if not history:
        return "The teacher was not prepared (prepare_teacher: false)."
    epochs, best = history["epochs"], history.get("best_epoch")
    head = (f"Teacher preparation ran {len(epochs)} of at most {P['teacher_epochs']} epochs; its best validation loss "
            f"{history.get('best_val_loss', float('nan')):.4f} came at epoch {best}, and that checkpoint is the teacher.")
    if history.get("stopped_early"):
        return head + f" It stopped on validation: {P['teacher_patience']} epochs without a lower validation loss."
    if best == len(epochs) and len(epochs) > 1:
        return head + (" Its validation loss was still falling at the ceiling: raise teacher_epochs (or "
                       "teacher_learning_rate) for a stronger teacher.")
    return head


def check_teacher(P: dict, out: Path, ref, processor, student_path: str, val: list[dict],
                  sft: dict | None = None) -> dict | None:
    """Does the prepared teacher lead what fine-tuning reaches (the SFT-only student of ``sft``, already trained),
    the student's starting weights and its own blind score on the validation questions
    (``fslib.evaluation.teachercheck``)? Written to ``teacher_check.json``; None when ``teacher_check`` is off."""
    if not P["teacher_check"]:
        return None
    pixels = pixel_bounds(P)
    gen = collate.VQACollator(processor, pixels, max_length=P["max_length"], train=False)
    blind = collate.VQACollator(processor, pixels, max_length=P["max_length"], train=False, blind=True)
    labelled = [r for r in val if r.get("answer") is not None]
    kw = {"batch_size": P["batch_size"], "max_new_tokens": P["teacher_answer_tokens"]}
    load = lambda path: models.load_model(path, dtype=P["student_dtype"], frozen=True,  # noqa: E731
                                          trust_remote_code=P["trust_remote_code"])
    scores = {"student_start_em": _exact_match(load(student_path), gen, labelled, **kw),
              "sft_em": _exact_match(load(str(Path(sft["sft_student"].out_dir) / "best")), gen, labelled, **kw)
              if sft else None}
    teacher = ref.load()
    result = teachercheck.verdict({"n": len(labelled), "margin": P["teacher_check_margin"],
                                   "sft_margin": P["teacher_check_sft_margin"],
                                   "teacher_em": _exact_match(teacher, gen, labelled, **kw),
                                   "teacher_blind_em": _exact_match(teacher, blind, labelled, **kw), **scores})
    teachercheck.write(out, result)
    return result


def _exact_match(model, collator, records: list[dict], **gen) -> float:
    answers = generate.generate_answers(model, collator, records, desc="teacher check", **gen)
    return sum(exact_match(a, references(r)) for a, r in zip(answers, records)) / max(len(records), 1)


def unlabelled_pool(P: dict, out: Path, unlabelled: list[dict], check: dict | None = None) -> list[dict]:
    """What the teacher answers: the data's unlabelled records, plus, for the synthetic world, ``n_unlabelled`` scenes
    rendered with 01's scene settings from another seed (disjoint from every split). A user's data brings its own
    unlabelled records: synthetic scenes would be another domain, so ``n_unlabelled`` is not used there (said so).
    Nothing when the teacher failed its check (``check_teacher``): its answers would not be used, so they are not
    generated (on a user's data, answering and caching them is most of 02's time)."""
    if check is not None and not check["ahead"]:
        print("The teacher failed its check: it does not answer the unlabelled questions, and the KD student learns "
              "from it on the labelled questions only.", flush=True)
        return []
    data_params = read_json(Path(out) / "data_stats.json").get("params", {})
    source = data_params.get("data_source", "synthetic")
    if source != "synthetic":
        if P["n_unlabelled"]:
            print(f"n_unlabelled={P['n_unlabelled']} renders synthetic scenes, another domain than {source}: not used; "
                  f"the teacher answers the data's own {len(unlabelled)} unlabelled records (questions without an "
                  "answer) instead.", flush=True)
        return unlabelled
    return unlabelled + synth.synthetic_pool(P["n_unlabelled"], data_params=data_params, seed=P["seed"])


def teacher_answers(P: dict, out: Path, ref, collator, pool: list[dict]) -> tuple[list[dict], bool]:
    """The teacher's greedy answers to ``pool`` (sequence-level KD), stored under ``seqkd/`` by fingerprint."""
    return seqkd.teacher_answers(ref, collator, pool, Path(out) / "seqkd", max_new_tokens=P["teacher_answer_tokens"],
                                 batch_size=P["batch_size"])


def keep_answers(P: dict, out: Path, answered: list[dict], check: dict | None = None) -> tuple[list[dict], list[str]]:
    """Pseudo-label filtering: the teacher's answers at least ``teacher_answer_min_confidence`` probable (an answer
    the teacher itself finds improbable is more often wrong than right), and the dataset folders that hold them.
    None are kept from a teacher that failed its check (``check_teacher``): its answers would be guesses."""
    if check is not None and not check["ahead"]:
        return [], []
    kept = seqkd.confident(answered, P["teacher_answer_min_confidence"])
    if not kept:
        return [], []
    if len(kept) == len(answered):
        return kept, [str(Path(out) / "seqkd" / "data")]
    folder = Path(out) / "seqkd" / "kept"
    store.save_dataset({"train": kept}, folder, card={"answered_by": "teacher",
                                                      "min_confidence": P["teacher_answer_min_confidence"]})
    return kept, [str(folder)]


def cache_records(labelled: list[dict], kept: list[dict], splits: dict) -> list[dict]:
    """What the teacher cache covers: every question a KD student trains on, and the labelled validation questions
    (its validation loss has a KD term too)."""
    return labelled + kept + seqkd.split_labelled(splits["val"])[0]


def build_cache(P: dict, out: Path, ref, collator, records: list[dict], vocab: int) -> tuple[str | None, dict]:
    """The offline teacher cache when ``teacher_cache`` is on: (its folder, what it holds); (None, ...) otherwise."""
    if not P["teacher_cache"]:
        return None, {"teacher_cache": False}
    folder = Path(out) / "teacher_cache"
    cached, rebuilt = cache.ensure(ref, collator, records, folder, k=P["teacher_cache_topk"], vocab=vocab,
                                   batch_size=P["batch_size"],
                                   temperature=cache.tail_temperature(P["teacher_cache_tail"], P["temperature"]))
    return str(folder), {"rebuilt": rebuilt, **{k: cached.meta[k] for k in ("fingerprint", "k", "records", "rows",
                                                                             "shards")}}


def student_trainings(P: dict, out: Path, *, student_path: str, teacher_path: str, cache_dir: str | None,
                      extra_train_dirs: list[str], n_labelled: int) -> dict[str, DistillConfig]:
    """The fair protocol's trainings, by label: the KD student; KD on the labelled questions only (when there are
    teacher-answered ones and ``train_kd_labelled_baseline``); the SFT-only baseline (``train_sft_baseline``)."""
    sft = _config(P, out, "sft_student", student_path)
    kd = sft.but(label="kd_student", out_dir=str(Path(out) / "kd_student"), loss={"alpha": P["alpha"]},
                 teacher=TeacherConfig(path=str(teacher_path), dtype=P["teacher_dtype"],
                                       quantization=P["teacher_quantization"], device_map=P["teacher_device_map"],
                                       cache_dir=cache_dir),
                 onpolicy=OnPolicyConfig(P["onpolicy_lambda"], P["onpolicy_max_new_tokens"],
                                         P["onpolicy_temperature"]))
    plan = {"kd_student": kd.but(data={"extra_train_dirs": tuple(extra_train_dirs),
                                       "samples_per_epoch": n_labelled if extra_train_dirs else None})}
    if extra_train_dirs and P["train_kd_labelled_baseline"]:
        plan["kd_labelled_student"] = kd.but(label="kd_labelled_student", out_dir=str(Path(out) / "kd_labelled_student"))
    if P["train_sft_baseline"]:
        plan["sft_student"] = sft
    return plan


def memory_plan(plan: dict[str, DistillConfig], P: dict, out: Path) -> pd.DataFrame:
    """Each training's predicted peak memory and time on this machine's device (``fslib.training.plan``, as
    ``python -m fslib.plan`` prints it), before anything is loaded; a warning, with what to change, for every training
    predicted above the device's memory."""
    from fslib.training import plan as planner
    from fslib.training.plan import weights, workload

    if not plan:
        return pd.DataFrame()
    dev, how = planner.this_device()
    stats = workload.read_stats(out)
    work = workload.from_params({**(stats or {}).get("params", {}), **P}, stats=stats)
    engine = weights.engine_of(P["accelerate_config"], P["num_processes"])
    plans = {label: planner.plan(planner.job_for(cfg, work, dev, engine=engine, processes=P["num_processes"]))
             for label, cfg in plan.items()}
    print(f"Memory plan on {how}; {work.sources}.", flush=True)
    for label, p in plans.items():
        if not p["fits"]:
            change = "; ".join(", ".join(f"{k}={v}" for k, v in a["params"].items())
                               + f" -> {a['total_bytes'] / 2**30:.1f} GiB" for a in p["advice"][:3])
            print(f"WARNING: {label} is predicted to need {p['total_bytes'] / 2**30:.1f} GiB, above the "
                  f"{p['device']['usable_bytes'] / 2**30:.1f} GiB usable here. Change: {change}", flush=True)
    return pd.DataFrame({label: planner.table_row(p) for label, p in plans.items()})


def run_trainings(plan: dict[str, DistillConfig], P: dict) -> dict[str, dict]:
    """Each training in this process, or on ``num_processes`` processes through accelerate; their histories."""
    return {label: jobs.run_job(cfg, num_processes=P["num_processes"], config_file=P["accelerate_config"])
            for label, cfg in plan.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "pixels" else {f"{prefix}{k}": v})
    return out


def write_training_summary(out_dir, histories: dict, plan: dict[str, DistillConfig], *, teacher_path: str,
                           student_path: str, params: dict) -> dict:
    """``training.json``: which checkpoint is which model, for 03 and 04 to read (no hidden state between stages);
    every training's whole config (``trainings``) and the protocol's settings (``protocol``). ``training`` is the KD
    student's config, flattened, beside the protocol; ``training_by_model`` the same for every trained student (the
    model card shows the published one's)."""
    out_dir = Path(out_dir)
    models = {"teacher": {"path": str(teacher_path), "role": "teacher"}}
    if "kd_student" in histories:
        models["student"] = {"path": str(out_dir / "kd_student" / "best"), "role": "KD student"
                             + (" (labelled + teacher-answered questions)" if "kd_labelled_student" in histories else "")}
    if "kd_labelled_student" in histories:
        models["kd_labelled_student"] = {"path": str(out_dir / "kd_labelled_student" / "best"),
                                         "role": "KD student, labelled questions only"}
    if "sft_student" in histories:
        models["sft_student"] = {"path": str(out_dir / "sft_student" / "best"), "role": "SFT-only student"}
    models["base_student"] = {"path": str(student_path), "role": "student's starting weights"}
    protocol = {k: params[k] for k in PROTOCOL_KEYS}
    trainings = {label: cfg.to_dict() for label, cfg in plan.items()}
    by_model = {key: {**protocol, **_flat(plan[label].resume_settings())} for key, label in
                (("student", "kd_student"), ("kd_labelled_student", "kd_labelled_student"),
                 ("sft_student", "sft_student")) if label in plan and label in histories}
    published = plan.get("kd_student") or next(iter(plan.values()))
    summary = {"models": models, "teacher_model": params["teacher_model"], "student_model": params["student_model"],
               "embedded": params["student_model"].startswith("embedded:"),
               "protocol": protocol, "trainings": trainings,
               "training": {**protocol, **_flat(published.resume_settings())}, "training_by_model": by_model,
               "best_val_loss": {k: h.get("best_val_loss") for k, h in histories.items()},
               "params": params}
    write_json(out_dir / "training.json", summary)
    return summary


def plan_table(plan: dict[str, DistillConfig]) -> pd.DataFrame:
    """Every setting of each training (flattened ``DistillConfig``), one column per training; rows where the
    trainings differ come first, so the fair protocol's differences are read at a glance."""
    cols = {label: {k: str(v) for k, v in _flat({k: v for k, v in cfg.to_dict().items() if k != "label"}).items()}
            for label, cfg in plan.items()}
    table = pd.DataFrame(cols)
    differs = table.nunique(axis=1) > 1
    return pd.concat([table[differs], table[~differs]]) if len(table) else table


def summary_table(histories: dict) -> pd.DataFrame:
    """One row per trained model: what was trained against what, memory and speed (medians over steps)."""
    rows = {}
    for label, h in histories.items():
        described, steps = h.get("models") or {}, h["steps"]
        s, t = described.get("student") or {}, described.get("teacher")
        source = "labels only" if not h["settings"]["loss"]["alpha"] else (
            "teacher cache (top-k)" if h["settings"].get("cached") else
            f"live teacher ({t['dtype']}, {t['quantization']})" if t else "live teacher")
        rows[label] = {"trained params": s.get("trainable_params"), "trainable share": s.get("trainable_share"),
                       "dtype": s.get("dtype"), "KD target": source, "steps": len(steps),
                       "processes": h["settings"].get("processes"),
                       "best val loss": h.get("best_val_loss"),
                       "tokens/s": _median([x["tokens_per_s"] for x in steps]),
                       "samples/s": _median([x["samples_per_s"] for x in steps]),
                       "peak memory (GB)": max([e.get("peak_memory_bytes", 0) for e in h["epochs"]] or [0]) / 1e9}
    return pd.DataFrame(rows)


def _median(values: list) -> float | None:
    return float(sorted(values)[len(values) // 2]) if values else None
