"""Peak memory and time of one KD forward + backward at Qwen2-VL's real sizes, on CPU in float32.

    python benchmarks/kd_loss_memory.py [--trl-python /tmp/trlvenv/bin/python]

writes benchmarks/results/kd_loss_memory.json. Each variant runs in a fresh process (``--variant NAME``), so that
one variant's peak cannot hide in another's:

* naive:   both models' full logits (N, V) for every token, then ``fslib.engine.kd.kd_loss``.
* chunked: ``fslib.engine.kd.chunked_kd_loss`` from hidden states and lm_head weights, ``--chunk-size`` rows at a time.
* trl:     the same full logits into TRL's ``GKDTrainer.generalized_jsd_loss(beta=0)`` (forward KL, no CE term),
           run with the interpreter given by ``--trl-python`` (a venv holding trl); skipped without one.

Beyond its 3.2 GB of inputs, the naive variant needs about 15.3 GB at N = 4,096 and trl more than 17.4 GB; a
worker that cannot allocate reports an error instead of taking the machine down (its address space is capped
below the memory available when it starts). About 25 minutes on 2 shared CPU cores. ``--variants naive --update``
re-runs one variant into the existing file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "kd_loss_memory.json"
V_STUDENT, V_TEACHER, H_STUDENT, H_TEACHER = 151_936, 152_064, 1_536, 3_584
TEMPERATURE, ALPHA = 3.0, 0.7
PEAK_MEANS = ("increase of the worker process's peak resident set size (getrusage RUSAGE_SELF ru_maxrss, KiB x "
              "1024) during the timed forward + backward, over its value once the inputs existed (both hidden "
              "states, both lm_head weights, labels: 3.2 GB fp32, not counted). Includes the student head "
              "weight's gradient (V_s x H_s fp32 = 0.93 GB), which every variant must produce.")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def _cap_address_space(margin: int = 1 << 30) -> int:
    """Make allocations beyond what the machine has free fail in this process, not in its neighbours."""
    with open("/proc/self/oom_score_adj", "w") as f:  # and if memory runs out anyway, this process goes first
        f.write("1000")
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    cap = vm_size + max(_available_bytes() - margin, 1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def _inputs(n_tokens: int):
    import torch

    g = torch.Generator().manual_seed(0)
    # B = 1 sequence of N + 1 positions whose N shifted labels all count: every projected row is an answer token.
    h_s = torch.randn(1, n_tokens + 1, H_STUDENT, generator=g).requires_grad_(True)
    w_s = torch.randn(V_STUDENT, H_STUDENT, generator=g).mul_(0.02).requires_grad_(True)
    h_t = torch.randn(1, n_tokens + 1, H_TEACHER, generator=g)
    w_t = torch.randn(V_TEACHER, H_TEACHER, generator=g).mul_(0.02)
    labels = torch.randint(0, V_STUDENT, (1, n_tokens + 1), generator=g)
    return h_s, w_s, h_t, w_t, labels


def _step(variant: str, h_s, w_s, h_t, w_t, labels, chunk_size: int) -> float:
    """One forward + backward; returns the loss value."""
    import torch
    import torch.nn.functional as F

    if variant == "chunked":
        from fslib.engine.kd import chunked_kd_loss

        loss = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, temperature=TEMPERATURE, alpha=ALPHA,
                               chunk_size=chunk_size).loss
    else:
        s_logits = F.linear(h_s, w_s)  # (1, N + 1, V_s)
        with torch.no_grad():
            t_logits = F.linear(h_t, w_t)  # (1, N + 1, V_t)
        if variant == "naive":
            from fslib.engine.kd import kd_loss

            loss = kd_loss(s_logits, t_logits, labels, temperature=TEMPERATURE, alpha=ALPHA).loss
        else:
            from trl.experimental.gkd import GKDTrainer

            loss = GKDTrainer.generalized_jsd_loss(s_logits, t_logits[..., :V_STUDENT], labels=None, beta=0,
                                                   temperature=TEMPERATURE)
        del s_logits, t_logits  # as a careful training step does: backward keeps only autograd's saved tensors
    loss.backward()
    return loss.item()


def worker(variant: str, n_tokens: int, chunk_size: int, repeats: int) -> dict:
    import torch

    import fslib.engine.kd  # noqa: F401  imported before the baseline, so that no import counts towards a peak

    if variant == "trl":
        import trl.experimental.gkd  # noqa: F401
    h_s, w_s, h_t, w_t, labels = _inputs(n_tokens)
    # Warm-up (thread pools, kernels) on a 1,000-token vocabulary: it must not raise the high-water mark that
    # the timed run is measured against, since ru_maxrss cannot be reset.
    tiny = (h_s[:, :65].detach().requires_grad_(True), w_s[:1000].detach().requires_grad_(True), h_t[:, :65],
            w_t[:1000], labels[:, :65] % 1000)
    _step(variant, *tiny, chunk_size)
    del tiny
    cap = _cap_address_space()
    baseline = _peak_rss()
    seconds, cpu_seconds, loss = [], [], None
    load_before = os.getloadavg()[0]
    try:
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = _step(variant, h_s, w_s, h_t, w_t, labels, chunk_size)
            seconds.append(time.perf_counter() - t0)
            cpu_seconds.append(time.process_time() - c0)
            h_s.grad = w_s.grad = None
    except RuntimeError as e:  # the address-space cap turns running out of memory into this
        return {"error": str(e).splitlines()[0][:300], "address_space_cap_bytes": cap,
                "peak_bytes_before_failure": _peak_rss() - baseline}
    return {"peak_bytes": _peak_rss() - baseline, "seconds": statistics.median(seconds), "seconds_all": seconds,
            "cpu_seconds": statistics.median(cpu_seconds), "loss": loss, "threads": torch.get_num_threads(),
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def _run_variant(python: str, variant: str, n_tokens: int, args) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--variant", variant, "--n-tokens", str(n_tokens),
           "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare(previous: dict, args, n_tokens: int) -> dict:
    """Run ``args.variants`` at one N over ``previous`` results (kept for the others), plus chunked / naive."""
    out = dict(previous)
    for variant in args.variants:
        if variant == "trl" and not args.trl_python:
            out[variant] = {"skipped": "trl not installed (pass --trl-python)"}
            continue
        python = args.trl_python if variant == "trl" else sys.executable
        out[variant] = {**_run_variant(python, variant, n_tokens, args),
                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    naive, chunked = out.get("naive", {}), out.get("chunked", {})
    out.pop("chunked_over_naive", None)
    if "peak_bytes" in naive and "peak_bytes" in chunked:
        out["chunked_over_naive"] = {k: chunked[k] / naive[k] for k in ("peak_bytes", "seconds", "cpu_seconds")}
    return out


def _previous(args) -> dict:
    """The existing results file, when --update re-runs only some variants into it."""
    if not args.update:
        return {}
    old = json.loads(args.out.read_text())
    if (old["setting"]["n_tokens"], old["setting"]["chunk_size"]) != (args.n_tokens, args.chunk_size):
        raise SystemExit(f"--update: {args.out} was measured with another --n-tokens or --chunk-size")
    return old


def _versions(trl_python: str | None) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
           platform.machine(), "cpu_count": os.cpu_count()}
    if trl_python:
        probe = subprocess.run([trl_python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                               text=True)
        out["trl"] = probe.stdout.strip() or None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["naive", "chunked", "trl"], help="run one variant (worker mode)")
    parser.add_argument("--n-tokens", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after a small warm-up (median)")
    parser.add_argument("--small-n-tokens", type=int, default=1024, help="also compare at this N (0: don't)")
    parser.add_argument("--trl-python", help="interpreter of a venv with trl installed; trl is skipped without")
    parser.add_argument("--variants", default="naive,chunked,trl", help="comma-separated subset to run")
    parser.add_argument("--update", action="store_true", help="keep --out's results for the variants not run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args.variant, args.n_tokens, args.chunk_size, args.repeats)))
        return
    args.variants = args.variants.split(",")
    old = _previous(args)
    main_keys = ("naive", "chunked", "trl", "chunked_over_naive")
    results = _compare({k: old[k] for k in main_keys if k in old}, args, args.n_tokens)
    if args.small_n_tokens:  # where the full-logit variants all fit, for a like-for-like comparison
        small = old.get("at_small_n", {})
        if small.get("n_tokens") != args.small_n_tokens:
            small = {"n_tokens": args.small_n_tokens}
        results["at_small_n"] = _compare(small, args, args.small_n_tokens)
    elif "at_small_n" in old:
        results["at_small_n"] = old["at_small_n"]
    results["setting"] = {"n_tokens": args.n_tokens, "vocab_student": V_STUDENT, "vocab_teacher": V_TEACHER,
                          "hidden_student": H_STUDENT, "hidden_teacher": H_TEACHER, "dtype": "float32",
                          "device": "cpu", "temperature": TEMPERATURE, "alpha": ALPHA, "divergence": "forward_kl",
                          "chunk_size": args.chunk_size, "batch": "1 sequence of N + 1 positions, all N counted",
                          "step": "forward + backward, grads w.r.t. student hidden states and head weight"}
    results["protocol"] = (
        f"each variant in a fresh process; a 64-token warm-up on a 1,000-token vocabulary, then {args.repeats} "
        "timed run(s) of the forward + backward (logit matmuls included); seconds = median wall time, cpu_seconds = "
        "median process CPU time (user + sys; steadier than wall time when other jobs share the cores, see "
        f"load_average_1min before/after). peak_bytes: {PEAK_MEANS} Each worker's address space is capped near "
        "the memory free when it starts, so a variant that does not fit reports an error instead of swapping or "
        "being OOM-killed. at_small_n repeats the comparison at a smaller N where every variant fits. trl computes "
        "the KD term only (no CE), summed over tokens and divided by the batch size (1). `command` lists every "
        "invocation that wrote this file (--update re-runs some variants and keeps the rest); results written by "
        "a later invocation carry measured_at.")
    results["versions"] = _versions(args.trl_python)
    command = " ".join(["python", "benchmarks/kd_loss_memory.py"] + [shlex.quote(a) for a in sys.argv[1:]])
    results["command"] = old.get("command", []) + [command] if args.update else [command]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
