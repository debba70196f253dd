"""Tables of a torch.profiler profile: where a step's time goes.

Device time by kernel family (cuDNN, cuBLAS, attention, Inductor-generated, ...), the generated kernels by what
they fuse, host time by family (launching, library operators, Python wrappers, waiting for the device), and the
library operators by input shape. `danie-nnunet bench --profile` prints them; `bench/gpu_launches.py` names its
counted kernels with `kernel_family`, as they are named on a card.
"""
from __future__ import annotations

import re
from typing import List

from .markdown import table_lines


def _device_events(events) -> list:
    # the profiler also credits a kernel's time to the operator that launched it (aten::mm, a Triton launcher), so
    # only device-side events count, as torch's own "Self CUDA time total" counts them
    from torch.autograd import DeviceType
    return [e for e in events if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]


def device_activity(events) -> tuple:
    """Microseconds of device time in profiler events, each kernel once, and how many device operations (kernels,
    copies) ran (summing every event counted the compiled DANIE-S's kernels twice: 129.8 ms busy in a 115.4 ms
    step)."""
    device = _device_events(events)
    return sum(e.self_device_time_total for e in device), sum(e.count for e in device)


# kernel families by CUDA kernel name, first match wins: cuDNN's convolution kernels (fprop / dgrad / wgrad,
# implicit GEMMs and layout transposes) before cuBLAS's GEMMs; what compiling can fuse is "Inductor-generated"
# (compiled), or eager normalisation and "other" (elementwise and reduction kernels)
KERNEL_FAMILIES = (
    ("Inductor-generated (Triton)", re.compile(r"^triton_")),
    ("attention", re.compile(r"fmha|flash|attention", re.I)),
    ("normalisation (eager)", re.compile(r"batch_?norm|bn_fw|bn_bw|layer_?norm", re.I)),  # cuDNN's BN is not a conv
    ("convolutions (cuDNN)", re.compile(r"conv|dgrad|wgrad|fprop|cudnn|nchwToNhwc|nhwcToNchw", re.I)),
    ("matrix products (cuBLAS)", re.compile(r"gemm|nvjet|cublas|cutlass|splitK", re.I)),
    ("optimizer and foreach", re.compile(r"multi_tensor_apply|fused_adam|foreach", re.I)),
    ("copies and memsets", re.compile(r"^Mem(cpy|set)")),
)


# the operators that call cuDNN, cuBLAS or an attention kernel (compiling keeps each one a call of its own)
LIBRARY_OPERATOR = re.compile(r"^aten::(\w*conv\w*|mm|addmm|bmm|baddbmm|\w*attention\w*)$")

# the optimiser's operators (torch's fused AdamW, or the foreach kernels of an unfused one)
OPTIMIZER_OPERATOR = re.compile(r"^aten::(_fused_adamw?_?|_foreach\w*)$")

# host (CPU) events by name, first match wins: where the host spends a step. A step bound by launches shows its
# time in launching (CUDA runtime, Inductor's launchers, the library operators' host side, Python wrappers); one
# bound by the device shows it in the runtime's waits (a blocking copy such as `.item()`, a synchronisation)
HOST_FAMILIES = (
    ("CUDA runtime: waits and copies", re.compile(r"^cu(da)?\w*(Synchronize|Memcpy|Memset)")),
    ("CUDA runtime: kernel launches", re.compile(r"^cu(da)?\w*Launch")),
    ("Inductor kernel launchers", re.compile(r"^triton_")),
    ("library operators (host side)", LIBRARY_OPERATOR),
    ("optimizer and foreach", re.compile(r"^Optimizer\.|" + OPTIMIZER_OPERATOR.pattern)),
    ("compiled-graph runtime (Python)",
     re.compile(r"^(Torch-Compiled Region|## Call CompiledFxGraph|CompiledFunction|TorchDynamo|AOTDispatcher|"
                r"Pregraph bytecode)")),
    ("autograd engine", re.compile(r"^autograd::|^torch::autograd::|Backward\d*$")),
    ("other operators", re.compile(r"^aten::")),
)


def _time_by(events, group, self_time) -> List[tuple]:
    # [(group(event), microseconds, calls)] largest first
    totals = {}
    for e in events:
        key = group(e)
        us, n = totals.get(key, (0.0, 0))
        totals[key] = (us + self_time(e), n + e.count)
    return sorted(((f, us, n) for f, (us, n) in totals.items()), key=lambda row: -row[1])


def _time_by_family(events, families, self_time) -> List[tuple]:
    # [(family, microseconds, calls)] largest first, "other" for names no pattern matches
    return _time_by(events, lambda e: next((name for name, pattern in families if pattern.search(e.key)), "other"),
                    self_time)


def device_time_by_family(events) -> List[tuple]:
    """[(family, microseconds, kernels)] of a profile's device time, largest first, "other" for unmatched names:
    says whether a step's device time is in library calls (which compiling keeps) or in what Inductor fuses."""
    return _time_by_family(_device_events(events), KERNEL_FAMILIES, lambda e: e.self_device_time_total)


def kernel_family(name: str) -> str:
    """An Inductor-generated kernel's name without its number: triton_poi_fused__to_copy_3 -> poi_fused__to_copy
    (what it fuses, named alike on a card and in bench/gpu_launches.py's count on the CPU)."""
    return re.sub(r"_\d+$", "", name.removeprefix("triton_"))


def generated_time_by_family(events, limit: int = 15) -> List[tuple]:
    """[(kernel family, microseconds, launches)] of a profile's Inductor-generated (Triton) kernels, most device
    time first: with bench/gpu_launches.py's bytes of the same families, each family's achieved bandwidth."""
    generated = [e for e in _device_events(events) if e.key.startswith("triton_")]
    return _time_by(generated, lambda e: kernel_family(e.key), lambda e: e.self_device_time_total)[:limit]


def host_time_by_family(events) -> List[tuple]:
    """[(family, microseconds, calls)] of a profile's host time (each CPU event's self time, so nothing twice),
    largest first: says whether a host-bound step's host time goes to launching kernels, to the library
    operators, to Python wrappers, or to waiting for the device."""
    from torch.autograd import DeviceType
    host = [e for e in events if e.device_type == DeviceType.CPU]
    return _time_by_family(host, HOST_FAMILIES, lambda e: e.self_cpu_time_total)


def _has_device_events(events) -> bool:
    from torch.autograd import DeviceType
    return any(e.device_type != DeviceType.CPU for e in events)


def library_calls_by_shape(events, limit: int = 30) -> List[tuple]:
    """[(operator, its first three input shapes, microseconds, calls)] of the library operators in a profile
    recorded with shapes and grouped by them, most time first: which convolution or matrix product, i.e. which
    module's shape, a step's library time goes to. Device time where kernels ran (each kernel counts for the
    innermost operator that launched it, so nothing twice), else host time."""
    from torch.autograd import DeviceType
    on_device = _has_device_events(events)
    rows = []
    for e in events:
        us = e.self_device_time_total if on_device else e.self_cpu_time_total
        if e.device_type == DeviceType.CPU and LIBRARY_OPERATOR.search(e.key) and us > 0:
            shapes = " ".join("x".join(map(str, shape)) for shape in e.input_shapes[:3] if shape)
            rows.append((e.key, shapes, us, e.count))
    return sorted(rows, key=lambda row: -row[2])[:limit]


def library_shape_table(events, limit: int = 30) -> str:
    """`library_calls_by_shape` as a Markdown table."""
    rows = library_calls_by_shape(events, limit)
    unit = "device ms" if _has_device_events(events) else "host ms (profiled)"
    return "\n".join(table_lines(["library operator", "input shapes", unit, "calls"],
                                  [[op, shapes, f"{us / 1e3:.2f}", str(n)] for op, shapes, us, n in rows]))


def _family_lines(rows, first: str, unit: str, calls: str) -> str:
    total = sum(us for _, us, _ in rows) or 1.0
    return "\n".join(table_lines([first, unit, "share", calls],
                                 [[family, f"{us / 1e3:.1f}", f"{100 * us / total:.0f} %", str(n)]
                                  for family, us, n in rows]))


def family_table(events) -> str:
    """`device_time_by_family` as a Markdown table with each family's share of the device time."""
    return _family_lines(device_time_by_family(events), "kernel family", "device ms", "kernels")


def generated_family_table(events, limit: int = 15) -> str:
    """`generated_time_by_family` as a Markdown table."""
    return "\n".join(table_lines(["Inductor-generated kernel family", "device ms", "launches"],
                                  [[f, f"{us / 1e3:.2f}", str(n)] for f, us, n in generated_time_by_family(events, limit)]))


def host_family_table(events) -> str:
    """`host_time_by_family` as a Markdown table with each family's share of the host time."""
    return _family_lines(host_time_by_family(events), "host family", "host ms (profiled)", "calls")
