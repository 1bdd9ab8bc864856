"""FSDP (configs/accelerate/fsdp.yaml, FSDP2) on two gloo CPU processes, launched as 02_distill launches them: the
distillation equals one process with the same global batch, the student is sharded, the frozen teacher stays a full
copy per process that no optimizer sees, and a run killed after a checkpoint resumes to the uninterrupted result.
The ZeRO configs are parsed and validated the way ``accelerate launch`` reads them (DeepSpeed itself is not needed).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from fslib.training import checkpoint, jobs
from fslib.training.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    TeacherConfig,
)

FSDP = "configs/accelerate/fsdp.yaml"
KILL_ENV = "FIRSTSIGHT_TEST_KILL_AT"

# What every launched process runs: fslib.training.jobs.main, with setup() and the optimizer step wrapped to record,
# per process, what the engine did with the two models (probe_<rank>.json); with KILL_ENV set, every process SIGKILLs
# itself just before that optimizer step.
WORKER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from torch.distributed.tensor import DTensor
from fslib.training import jobs, loop
kill_at, seen = int(os.environ.get("%s", "0")), {}
real_setup, real_step = loop.setup, loop._optimizer_step
def setup(student, teacher, *args, **kwargs):
    seen["teacher_before"] = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    seen["run"] = real_setup(student, teacher, *args, **kwargs)
    return seen["run"]
def step(run, group):
    if run.step + 1 == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(run, group)
loop.setup, loop._optimizer_step = setup, step
jobs.main(sys.argv[1:])
run = seen["run"]
local = lambda p: p.to_local() if isinstance(p, DTensor) else p
storage = lambda p: local(p).untyped_storage().data_ptr()
in_opt = [p for g in run.opt.param_groups for p in g["params"]]
trainable = [p for p in run.student.parameters() if p.requires_grad]
teacher = dict(run.teacher.named_parameters())
probe = {"engine": run.acc.distributed_type.value, "rank": run.acc.process_index,
         "student_dtensor": all(isinstance(p, DTensor) for p in run.student.parameters()),
         "student_numel": sum(p.numel() for p in run.student.parameters()),
         "student_local_numel": sum(local(p).numel() for p in run.student.parameters()),
         "opt_params": len(in_opt), "opt_all_student": all(any(p is q for q in trainable) for p in in_opt),
         "trainable": len(trainable),
         "teacher_in_opt": sum(any(p is t for t in teacher.values()) for p in in_opt)
                           + len({storage(p) for p in in_opt} & {storage(t) for t in teacher.values()}),
         "teacher_dtensor": any(isinstance(t, DTensor) for t in teacher.values()),
         "teacher_numel": sum(t.numel() for t in teacher.values()),
         "teacher_trainable": any(t.requires_grad or t.grad is not None for t in teacher.values()),
         "teacher_moved": max(float((t.detach() - seen["teacher_before"][n]).abs().max()) for n, t in teacher.items())}
with open(os.path.join(run.cfg.out_dir, "probe_%%d.json" %% probe["rank"]), "w") as f:
    json.dump(probe, f)
""" % KILL_ENV


def _job(small_data_dir, student_path, teacher_path, pixels, out_dir, batch_size):
    # 12 train records (every third a video); a global micro-batch of 4, accumulation 2: 2 optimizer steps per epoch
    # (8 samples, then 4 in one micro-batch), 4 in all; a checkpoint after each epoch's first step. Two samples per
    # process put an image and a video in one process's micro-batch but not in the other's (two vision-tower calls
    # against one). kd_impl full: fslib.training.setup refuses chunked under FSDP (the lm_head is sharded).
    return DistillConfig(label="kd", out_dir=str(out_dir), model=ModelConfig(path=student_path),
                         data=DataConfig(data_dir=str(small_data_dir), pixels=pixels, max_length=256),
                         teacher=TeacherConfig(path=teacher_path),
                         optim=OptimConfig(batch_size=batch_size, grad_accum=2, epochs=2, learning_rate=2e-3, seed=0),
                         runtime=RuntimeConfig(save_every=1)).but(loss={"kd_impl": "full"})


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, small_data_dir, student_path, teacher_path, pixels):
    """One uninterrupted FSDP training on 2 processes (micro-batch 2 each); its folder, worker script and config."""
    root = tmp_path_factory.mktemp("fsdp")
    worker = root / "worker.py"
    worker.write_text(WORKER)
    job = _job(small_data_dir, student_path, teacher_path, pixels, root / "whole", batch_size=2)
    jobs.launch(job, num_processes=2, config_file=FSDP, timeout=600, entry=(str(worker),))
    return root, worker, job


def _weights(folder):
    return load_file(str(folder / "final" / "model.safetensors"))


@pytest.mark.slow
def test_fsdp_two_processes_match_one_and_never_train_the_teacher(fsdp_run, tmp_path, small_data_dir, student_path,
                                                                   teacher_path, pixels):
    root = fsdp_run[0]
    one = jobs.run(_job(small_data_dir, student_path, teacher_path, pixels, tmp_path / "one", batch_size=4))
    two = json.loads((root / "whole" / "training_history.json").read_text())
    assert two["settings"]["engine"] == "FSDP" and two["settings"]["processes"] == 2  # sharded, not silently DDP
    assert one["settings"]["engine"] == "NO"
    assert len(one["steps"]) == len(two["steps"]) == 4
    for a, b in zip(one["steps"], two["steps"]):
        assert a["answer_tokens"] == b["answer_tokens"]  # the same samples in every global step
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["kd"] == pytest.approx(b["kd"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    for a, b in zip(one["epochs"], two["epochs"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    w1, w2, start = _weights(tmp_path / "one"), _weights(root / "whole"), load_file(f"{student_path}/model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max((w1[k] - start[k]).abs().max() for k in w1)
    worst = max((w1[k] - w2[k]).abs().max() for k in w1)
    assert moved > 1e-3 and worst < 1e-4 and worst < 0.02 * moved, (worst, moved)  # see tests/test_distributed.py

    probes = [json.loads((root / "whole" / f"probe_{r}.json").read_text()) for r in (0, 1)]
    teacher_numel = sum(t.numel() for t in load_file(f"{teacher_path}/model.safetensors").values())
    for p in probes:
        assert p["engine"] == "FSDP" and p["student_dtensor"]
        assert p["student_local_numel"] < p["student_numel"]  # each process holds a shard of the student
        assert p["opt_params"] == p["trainable"] > 0 and p["opt_all_student"]  # the optimizer sees the student only
        assert p["teacher_in_opt"] == 0  # neither a teacher tensor nor one sharing a teacher tensor's storage
        # The teacher is replicated, never prepared: a plain full copy per process, frozen, without gradients...
        assert not p["teacher_dtensor"] and p["teacher_numel"] == teacher_numel and not p["teacher_trainable"]
        assert p["teacher_moved"] == 0.0  # ...and bit for bit the weights it was loaded with, after 4 steps
    assert sum(p["student_local_numel"] for p in probes) == probes[0]["student_numel"]  # shards cover it once


@pytest.mark.slow
def test_fsdp_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(fsdp_run, monkeypatch):
    root, worker, job = fsdp_run
    killed = job.but(out_dir=str(root / "killed"))
    monkeypatch.setenv(KILL_ENV, "4")  # steps 1-3 done; checkpoint at step 3 (epoch 2, 1 step in); both processes die
    with pytest.raises(RuntimeError, match="failed on 2 processes"):
        jobs.launch(killed, num_processes=2, config_file=FSDP, timeout=600, entry=(str(worker),))
    monkeypatch.delenv(KILL_ENV)
    state = checkpoint.read_resume(root / "killed")
    assert (state["epoch"], state["position"], state["step"], state["done"]) == (2, 1, 3, False)
    assert state["settings"]["engine"] == "FSDP" and not (root / "killed" / "final").exists()
    shards = root / "killed" / checkpoint.RESUME_DIR / "pytorch_model_fsdp_0"
    assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in shards.iterdir()}  # SHARDED_STATE_DICT: a file per process
    resumed = jobs.launch(killed.but(runtime={"resume": True}), num_processes=2, config_file=FSDP, timeout=600)
    whole = json.loads((root / "whole" / "training_history.json").read_text())
    assert len(resumed["steps"]) == 4 and resumed["settings"]["engine"] == "FSDP"
    for a, b in zip(whole["steps"], resumed["steps"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["grad_norm"] == pytest.approx(b["grad_norm"],
                                                                                                   rel=1e-6)
    a, b = _weights(root / "whole"), _weights(root / "killed")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst


# --- ZeRO configs: read as `accelerate launch` reads them, without a GPU and without DeepSpeed installed ---

def _launch_env(config_file: str) -> tuple[object, dict]:
    """The launch arguments and the environment ``accelerate launch --config_file ... -m fslib.training.jobs`` gives
    every process (accelerate's own parser, validation and DeepSpeed environment), without starting anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "--num_processes", "2", "-m",
                                               "fslib.training.jobs", "distill_config.json"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    # as accelerate.commands.launch.launch_command does before deepspeed_launcher
    args.deepspeed_fields_from_accelerate_config = ",".join(list(defaults.deepspeed_config)
                                                            + (["mixed_precision"] if mp_from_config else []))
    return args, prepare_deepspeed_cmd_env(args)[1]


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_zero_configs_load_and_give_the_plugin_fslib_expects(name, stage, monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from fslib.training import setup

    args, env = _launch_env(f"configs/accelerate/{name}.yaml")
    assert args.use_deepspeed and not args.use_fsdp and args.num_processes == 2 and args.mixed_precision == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # what the Accelerator builds from that environment in each process
    plugin.set_mixed_precision("bf16")
    assert plugin.zero_stage == stage and plugin.deepspeed_config["zero_optimization"]["stage"] == stage
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    # No ZeRO-3 init context: fslib.training.jobs loads the teacher unpartitioned, as a full frozen copy per process.
    assert plugin.zero3_init_flag is False
    if stage == 3:  # get_state_dict (best/final folders) gathers a ZeRO-3 model only with this set
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}
    setup.deepspeed_fill(plugin.deepspeed_config, batch_size=3, max_grad_norm=0.5)
    assert "auto" not in json.dumps(plugin.deepspeed_config)  # nothing left for a dataloader to fill in
    ds = plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (3, 1, 0.5)
    acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))
    assert setup._sharded(acc) is (stage == 3)  # what refuses kd_impl chunked and on-policy sampling under ZeRO-3


def test_fsdp_config_loads_and_wraps_qwen2vl_layers(monkeypatch):
    """fsdp.yaml as the launched processes see it: FSDP2, sharded resume checkpoints, and wrap classes that exist."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    args = launch_command_parser().parse_args(["--config_file", FSDP, "--num_processes", "2", "-m",
                                               "fslib.training.jobs", "distill_config.json"])
    args = _validate_launch_command(args)[0]
    assert args.use_fsdp and not args.use_deepspeed
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.reshard_after_forward is True
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # the no-offload policy (fsdp_offload_params false)
    assert all(hasattr(modeling_qwen2_vl, cls) for cls in plugin.transformer_cls_names_to_wrap), \
        plugin.transformer_cls_names_to_wrap
