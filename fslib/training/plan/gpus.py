"""Named GPUs: memory, dense bf16 tensor throughput (no sparsity) and memory bandwidth, from NVIDIA's spec sheets:

* A100 40GB / 80GB (SXM): NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS, HBM2 1,555 GB/s (40GB),
  HBM2e 2,039 GB/s (80GB).
* H100 80GB (SXM): NVIDIA H100 Tensor Core GPU datasheet: BF16 989.5 TFLOPS dense (1,979 with sparsity),
  HBM3 3.35 TB/s.
* H200 (SXM): NVIDIA H200 Tensor Core GPU datasheet: 141 GB HBM3e, 4.8 TB/s, BF16 989.5 TFLOPS dense.
* L40S: NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s, BF16 362.05 TFLOPS dense (733 with sparsity).
* RTX 4090: NVIDIA Ada Lovelace architecture whitepaper (v2.01), appendix table: 24 GB GDDR6X, 1,008 GB/s, peak BF16
  tensor 165.2 TFLOPS with FP32 accumulate (dense).

Capacities are the marketed sizes (GiB for HBM and GDDR stacks; the H200's 141 GB as 141e9 bytes).
"""

from __future__ import annotations

GiB = 2**30

GPUS: dict[str, dict] = {
    "a100-40gb": {"memory_bytes": 40 * GiB, "tflops": 312.0, "bandwidth": 1.555e12, "label": "A100 40GB SXM"},
    "a100-80gb": {"memory_bytes": 80 * GiB, "tflops": 312.0, "bandwidth": 2.039e12, "label": "A100 80GB SXM"},
    "h100-80gb": {"memory_bytes": 80 * GiB, "tflops": 989.5, "bandwidth": 3.35e12, "label": "H100 80GB SXM"},
    "h200": {"memory_bytes": 141 * 10**9, "tflops": 989.5, "bandwidth": 4.8e12, "label": "H200 SXM 141GB"},
    "l40s": {"memory_bytes": 48 * GiB, "tflops": 362.05, "bandwidth": 0.864e12, "label": "L40S 48GB"},
    "rtx4090-24gb": {"memory_bytes": 24 * GiB, "tflops": 165.2, "bandwidth": 1.008e12, "label": "RTX 4090 24GB"},
}
MFU = 0.40  # assumed achievable share of the dense bf16 peak for training matmuls (stated in every plan)
CUDA_RESERVE = GiB // 2  # CUDA context and kernels, outside PyTorch's allocations
FRAGMENTATION = 0.05  # the caching allocator's reserved-but-unused share, kept free


def usable_bytes(memory_bytes: int, kind: str) -> int:
    """What allocations may reach on a device: a GPU's memory less the context and a fragmentation margin."""
    if kind != "cuda":
        return memory_bytes
    return int(memory_bytes * (1 - FRAGMENTATION)) - CUDA_RESERVE


def match(device_name: str) -> str | None:
    """The spec key of a ``torch.cuda.get_device_name`` string, where it is one of ours."""
    n = device_name.lower().replace(" ", "")
    for key, needles in (("h200", ("h200",)), ("h100-80gb", ("h100",)), ("a100-80gb", ("a100", "80g")),
                         ("a100-40gb", ("a100",)), ("l40s", ("l40s",)), ("rtx4090-24gb", ("4090",))):
        if all(x in n for x in needles):
            return key
    return None
