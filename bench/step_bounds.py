"""How fast a compiled DANIE training step could be on a card, bounded from two sides (issue 4), from a profile of
the card and Inductor's GPU code counted on this CPU (`bench/gpu_launches.py`). Prints a Markdown table.

- The floor: the step with no launch cost. The library calls (cuDNN convolutions, cuBLAS matrix products,
  attention: compiling keeps each one a call of its own) take what the profile says, the optimiser and copies
  likewise, and every generated kernel moves its bytes at the card's full bandwidth.
- The launch bound: every launch (generated kernels, library calls, the optimiser's) at the host time per launch
  that a host-bound compiled step took on the card (the H100's DANIE-S: 115.4 ms for 3 369 + 20 launches).

Both are estimates against the compiled U-Net's step on the same card, not timings. A profile prints its largest
rows only: a library operator a DANIE step makes that is not among them took at most the smallest row's time, so
the library time is then a range. An eager profile's copies are autocast's casts, which compiling removes, so for
one the optimiser and copies are taken from a compiled profile (`--other-from`), the optimiser's scaled by the
parameter count.

    python bench/step_bounds.py                     # the cases of record (docs/performance.md)
    python bench/step_bounds.py --profile PROFILE.txt --bytes GPU_BYTES.md --row "larger fusions" \
        [--bytes OTHER.md --row ...]
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from danie_nnunet.bench import H100_BANDWIDTH_TB_S
from danie_nnunet.markdown import table_lines
from danie_nnunet.profile_tables import LIBRARY_OPERATOR, OPTIMIZER_OPERATOR

MEASUREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "measurements")

# the H100 of the measurements: the compiled U-Net's step (2026-11-27, 286.6 slices/s at 512 x 512, batch 12); the
# compiled DANIE-S's host-bound step and its launches (the same day's profile)
UNET_STEP_MS = 41.9
HOST_BOUND_STEP = (115.4, 3369 + 20)
OPTIMISER_LAUNCHES = 20
LIBRARY_CALLS = {"S": 688, "L": 690}  # per step (eager count), where a bytes table does not say

# the library operators of a DANIE step, by group (every group is in every DANIE step: 688 calls, section "What a
# training step launches"): a group missing from a profile's rows took at most the profile's smallest row
LIBRARY_GROUPS = (
    ("convolution backward", re.compile(r"^aten::convolution_backward$")),
    ("convolution forward", re.compile(r"conv")),
    ("attention backward", re.compile(r"attention\w*backward")),
    ("attention forward", re.compile(r"attention")),
    ("mm", re.compile(r"^aten::mm$")),
    ("addmm", re.compile(r"^aten::addmm$")),
    ("bmm", re.compile(r"^aten::(bmm|baddbmm)$")),
)
COPIES = re.compile(r"^aten::copy_$")


@dataclass
class Profile:
    """A torch.profiler table as `danie-nnunet bench --profile` writes it."""
    title: str
    rows: Dict[str, Tuple[float, int]]  # operator or kernel name -> (self device microseconds, calls)
    smallest_us: float  # the smallest listed row: what any unlisted row took at most

    @property
    def model(self) -> str:
        """"S" or "L", from the title `bench --profile` writes ("DANIE-S cl, ...")."""
        match = re.match(r"DANIE-([SL])\b", self.title)
        if not match:
            raise ValueError(f"the profile's title {self.title!r} does not name DANIE-S or DANIE-L")
        return match.group(1)

    @property
    def compiled(self) -> bool:
        return " compile" in self.title

    @property
    def host_bound_step(self) -> Optional[Tuple[float, int]]:
        """(wall ms, device operations) of the profiled step, where its title says both (`bench --profile` since
        2026-11-27): the host time per launch of this card and torch, if the step is bound by its launches."""
        wall = re.search(r"([\d.]+) ms wall", self.title)
        launches = re.search(r"in (\d+) kernels and copies", self.title)
        return (float(wall.group(1)), int(launches.group(1))) if wall and launches else None


def _microseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"not a profiler time: {text!r}")
    return float(match.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[match.group(2)]


def parse_profile(text: str) -> Profile:
    """The last torch.profiler table in `text`, its rows by name; raises ValueError naming what is missing."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"-+( +-+)+", line.strip())]
    starts = [i for i in rules if i + 2 in rules and "Name" in lines[i + 1]]
    if not starts:
        raise ValueError("no torch.profiler table (a 'Name ... Self CUDA ...' header between rules) in the profile")
    top = starts[-1]
    # each column ends where its rule does, the last one at the end of the line (its header "# of Calls" is wider)
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[top])]
    spans[-1] = (spans[-1][0], None)
    header = [lines[top + 1][a:b].strip() for a, b in spans]
    for column in ("Name", "Self CUDA", "# of Calls"):
        if column not in header:
            raise ValueError(f"the profile's table has no {column!r} column (columns: {', '.join(header)}); it must "
                             "come from a CUDA profile")
    name_col, time_col, calls_col = (header.index(c) for c in ("Name", "Self CUDA", "# of Calls"))
    end = next(i for i in rules if i > top + 2)
    rows, listed = {}, []
    for line in lines[top + 3:end]:
        cells = [line[a:b].strip() for a, b in spans]
        us = _microseconds(cells[time_col])
        rows[cells[name_col]] = (us, int(cells[calls_col]))
        listed.append(us)
    if listed != sorted(listed, reverse=True):
        raise ValueError("the profile's rows are not sorted by self device time, so an unlisted operator's time "
                         "cannot be bounded: profile with sort_by='self_cuda_time_total'")
    title = next((line for line in lines if line.strip()), "")
    return Profile(title, rows, min(listed))


def library_ms(profile: Profile) -> Tuple[float, float, List[str]]:
    """(lowest, highest) milliseconds of the library operators, and the groups missing from the profile's rows
    (each bounded by its smallest row)."""
    found = {group: 0.0 for group, _ in LIBRARY_GROUPS}
    seen = set()
    for name, (us, _) in profile.rows.items():
        if LIBRARY_OPERATOR.search(name):
            group = next(g for g, pattern in LIBRARY_GROUPS if pattern.search(name))
            found[group] += us
            seen.add(group)
    missing = [group for group, _ in LIBRARY_GROUPS if group not in seen]
    low = sum(found.values()) / 1e3
    return low, low + len(missing) * profile.smallest_us / 1e3, missing


def optimiser_and_copies_ms(profile: Profile) -> Tuple[float, float]:
    """(optimiser, copies) milliseconds of a compiled step's profile."""
    if not profile.compiled:
        raise ValueError(f"{profile.title!r} is not a compiled step: its copies are autocast's casts, which "
                         "compiling removes; take them from a compiled profile (--other-from)")
    pick = lambda pattern: sum(us for name, (us, _) in profile.rows.items() if pattern.search(name)) / 1e3
    return pick(OPTIMIZER_OPERATOR), pick(COPIES)


def parse_bytes(text: str, row: str) -> Tuple[int, Optional[int], float]:
    """(Triton launches, library calls or None, Triton GB) of the first row of a bench/gpu_launches.py table whose
    model names `row`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if not lines:
        raise ValueError("no Markdown table in the bytes file (bench/gpu_launches.py writes one)")
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    try:
        launches = header.index("Triton launches")
        gb = next(i for i, h in enumerate(header) if h.startswith("Triton GB"))
    except (ValueError, StopIteration):
        raise ValueError(f"the bytes table has no 'Triton launches' and 'Triton GB ...' columns: {header}") from None
    library = next((i for i, h in enumerate(header) if h.startswith("library calls")), None)
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if row in cells[0]:
            return (int(cells[launches]), int(cells[library]) if library is not None else None,
                    float(cells[gb]))
    raise ValueError(f"no row naming {row!r} in the bytes table (rows: {[l.split('|')[1].strip() for l in lines[2:]]})")


@functools.lru_cache(maxsize=None)
def parameter_count(model: str) -> int:
    """DANIE-S's or -L's parameters (1 input channel, 9 classes), built on the meta device."""
    import torch
    from danie_nnunet import create_danie
    with torch.device("meta"):
        network = create_danie(model, img_size=(512, 512), in_chans=1, num_classes=9)
    return sum(p.numel() for p in network.parameters())


@dataclass
class Case:
    label: Optional[str]  # None: "DANIE-S (profile file), the bytes of ROW"
    profile: str
    bytes_file: str
    row: str
    other_from: Optional[str] = None  # a compiled profile, for an eager profile's optimiser and copies


def bounds(case: Case, tb_per_s: float = H100_BANDWIDTH_TB_S, unet_ms: float = UNET_STEP_MS) -> dict:
    """The floor and the launch bound of one case, in milliseconds and against the U-Net's step. The host time per
    launch is the profiled step's own where its title gives its wall time and launches (a compiled profile, as
    `bench --profile` writes it now), else the H100's compiled DANIE-S's (HOST_BOUND_STEP)."""
    def read(path):
        with open(path) as f:
            return f.read()
    profile = parse_profile(read(case.profile))
    low, high, missing = library_ms(profile)
    if profile.compiled:
        optimiser, copies = optimiser_and_copies_ms(profile)
    elif case.other_from:
        other = parse_profile(read(case.other_from))
        optimiser, copies = optimiser_and_copies_ms(other)
        optimiser *= parameter_count(profile.model) / parameter_count(other.model)
    else:
        optimiser_and_copies_ms(profile)  # raises, saying why
    launches, library_calls, gb = parse_bytes(read(case.bytes_file), case.row)
    library_calls = library_calls or LIBRARY_CALLS[profile.model]
    generated = gb / tb_per_s
    floor = (low + optimiser + copies + generated, high + optimiser + copies + generated)
    all_launches = launches + library_calls + OPTIMISER_LAUNCHES
    host_bound = (profile.compiled and profile.host_bound_step) or HOST_BOUND_STEP
    us_per_launch = 1e3 * host_bound[0] / host_bound[1]
    launch_bound = all_launches * us_per_launch / 1e3
    label = case.label or f"DANIE-{profile.model} ({os.path.basename(case.profile)}), the bytes of {case.row!r}"
    return dict(label=label, library=(low, high), missing=missing, other=optimiser + copies, gb=gb,
                generated=generated, floor=floor, floor_x=(unet_ms / floor[1], unet_ms / floor[0]),
                launches=all_launches, us_per_launch=us_per_launch, launch_bound=launch_bound,
                launch_x=unet_ms / launch_bound)


def _span(pair, digits=1, suffix="") -> str:
    a, b = (f"{v:.{digits}f}" for v in pair)
    return f"{a}{suffix}" if a == b else f"{a}-{b}{suffix}"


def table(results: List[dict]) -> str:
    rows = [[r["label"], _span(r["library"]) + (f" ({', '.join(r['missing'])} unlisted)" if r["missing"] else ""),
             f"{r['other']:.1f}", f"{r['gb']:.1f}", f"{r['generated']:.1f}", _span(r["floor"]),
             _span(r["floor_x"], 2, "x"), str(r["launches"]), f"{r['us_per_launch']:.1f}",
             f"{r['launch_bound']:.1f}", f"{r['launch_x']:.2f}x"] for r in results]
    return "\n".join(table_lines(
        ["compiled step", "library ms", "optimiser + copies ms", "generated GB", "generated ms at full bandwidth",
         "floor ms", "floor vs U-Net", "launches", "host us per launch", "launch bound ms", "launch bound vs U-Net"],
        rows))


def _measurement(*parts) -> str:
    return os.path.join(MEASUREMENTS, *parts)


S_COMPILED = _measurement("2026-11-27-h100-second", "call3_profile_S_compiled.txt")
L_EAGER_H200 = _measurement("2026-11-26-h200", "call1_profile_L_cl_eager.txt")

# DANIE-L has no compiled profile yet: its library time is the H200's eager profile's (on the H100, DANIE-S's
# eager and compiled profiles agree within 4 % on their convolutions and matrix products: 24.3 against 23.3 ms)
CASES_OF_RECORD = (
    Case("DANIE-S, the default compile (H100 profile)", S_COMPILED,
         _measurement("2026-12-07f-cpu", "gpu_bytes_512x12_S_cl_qkv_split.md"), "DANIE-S, bf16"),
    Case("DANIE-S, the three flags (H100 profile)", S_COMPILED,
         _measurement("2026-12-07f-cpu", "gpu_bytes_512x12_S_qkv_split.md"), "larger fusions"),
    Case("DANIE-L, the default compile before the q, k, v split (H200 eager profile)", L_EAGER_H200,
         _measurement("2026-12-07c-cpu", "gpu_bytes_512x12_gpu_rules.md"), "DANIE-L, bf16",
         other_from=S_COMPILED),
    Case("DANIE-L, the three flags (H200 eager profile)", L_EAGER_H200,
         _measurement("2026-12-07f-cpu", "gpu_bytes_512x12_L_qkv_split.md"), "larger fusions",
         other_from=S_COMPILED),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="a `danie-nnunet bench --profile` output of the step (CUDA)")
    parser.add_argument("--bytes", action="append", default=[],
                        help="a bench/gpu_launches.py table of the same step (repeatable: one row each)")
    parser.add_argument("--row", action="append", default=[],
                        help="the bytes table's row, a part of its model name (one per --bytes)")
    parser.add_argument("--other-from", default=S_COMPILED,
                        help="for an eager profile: a compiled profile to take the optimiser and copies from")
    parser.add_argument("--tb-per-s", type=float, default=H100_BANDWIDTH_TB_S, help="the card's memory bandwidth")
    parser.add_argument("--unet-ms", type=float, default=UNET_STEP_MS, help="the compiled U-Net's step there")
    args = parser.parse_args(argv)
    if bool(args.profile) != bool(args.bytes) or len(args.row) not in (0, len(args.bytes)):
        parser.error("--profile goes with one --bytes or more, and --row with each --bytes (none: the cases of "
                     "record)")
    rows = args.row or ["DANIE"] * len(args.bytes)
    cases = ([Case(None, args.profile, path, row, other_from=args.other_from)
              for path, row in zip(args.bytes, rows)] if args.profile else CASES_OF_RECORD)
    try:
        results = [bounds(case, args.tb_per_s, args.unet_ms) for case in cases]
    except (OSError, ValueError) as error:
        print(f"step_bounds: {error}", file=sys.stderr)
        return 1
    print(f"Estimates, not timings: generated kernels at {args.tb_per_s} TB/s, against a {args.unet_ms} ms "
          "compiled U-Net step (the H100's of 2026-11-27 unless --unet-ms gives the card's)")
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
