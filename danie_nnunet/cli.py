"""`danie-nnunet`: one console script with subcommands."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional


# modules that add their own subcommands with register(subparsers)
COMMAND_MODULES = ("danie_nnunet.convert", "danie_nnunet.evaluation", "danie_nnunet.checks", "danie_nnunet.cam",
                   "danie_nnunet.compare", "danie_nnunet.export", "danie_nnunet.ablation_table", "danie_nnunet.bench")


def _size(text: str):
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)


def cmd_info(args) -> int:
    from .config import get_config
    from .cost import PAPER_GMACS_256, count_cost
    cost = count_cost(args.variant, args.size, args.in_chans, args.classes)
    cfg = get_config(args.variant)
    print(f"DANIE-{args.variant}: SAP {cfg.sap_model if cfg.use_sap else '(off)'}, dims {list(cfg.dims)}, "
          f"input {args.in_chans}x{args.size[0]}x{args.size[1]}, {args.classes} classes")
    print(cost.table())
    if args.variant in PAPER_GMACS_256 and tuple(args.size) == (256, 256):
        paper = PAPER_GMACS_256[args.variant]
        print(f"paper (Table 1 'GFLOPs' = GMACs at 256x256): {paper:.2f}; ours {cost.gmacs:.2f} "
              f"({100 * (cost.gmacs / paper - 1):+.1f}%)")
    if args.batch:
        from .memory import budget_note, estimate_training_memory, plan_recompute
        for compiled, how in ((False, "eager, nnUNet_compile=f"), (True, "compiled, nnU-Net's default on CUDA")):
            memory = estimate_training_memory(args.variant, args.size, args.in_chans, args.classes, compiled=compiled)
            print(f"training memory estimate (bf16, AdamW; {how}): {memory.fixed_gib:.2f} GiB + "
                  f"{memory.per_slice_gib:.3f} GiB per slice = {memory.total_gib(args.batch):.1f} GiB at batch "
                  f"{args.batch}")
        if args.memory_gib:  # what DANIETrainer does with DANIE_memory_gib set to this
            plan = plan_recompute(args.variant, args.size, args.in_chans, args.classes, args.batch, args.memory_gib,
                                  compiled=not args.eager)
            print(f"with DANIE_memory_gib={args.memory_gib:g}{' and nnUNet_compile=f' if args.eager else ''}: "
                  f"{budget_note(plan)}")
            if plan.segments:
                print("recomputed segments: " + ", ".join(plan.segments))
    return 0


def cmd_ext_path(args) -> int:
    from .demo import ext_trainer_path
    print(ext_trainer_path())
    return 0


def cmd_download_weights(args) -> int:
    from safetensors.torch import save_file

    from .config import get_config
    from .pretrained import _hub_state_dict
    name = get_config(args.variant).sap_model
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}.in1k.safetensors")
    tmp = path + ".part"
    save_file({k: v.contiguous() for k, v in _hub_state_dict(name).items()}, tmp)
    os.replace(tmp, path)  # never leave a truncated file under the final name
    print(f"wrote {path}\nuse it with: export DANIE_PRETRAINED={os.path.abspath(args.out)}")
    return 0


def cmd_check_weights(args) -> int:
    from .network import create_danie
    from .pretrained import load_imagenet_weights
    net = create_danie(args.variant, args.size, 3, 2)
    print(load_imagenet_weights(net, args.source))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.out, args.device, args.trainer)
    return 0


def cmd_plan(args) -> int:
    from danie_nnunet.plans.danie_plans import PlanRequest, PlansError, add_danie_configurations
    requests = [PlanRequest(p, args.variant, args.gpu_memory, args.batch_size) for p in args.protocol]
    try:
        report = add_danie_configurations(args.dataset, requests, args.plans, args.dry_run)
    except PlansError as e:
        print(f"danie-nnunet plan: error: {e}", file=sys.stderr)
        return 2
    for notes in report.values():
        print("\n  ".join(notes))
    if args.dry_run:
        print("(dry run: the plans file was not changed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="danie-nnunet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="params and GMACs of a DANIE variant (torch's FLOP counter)")
    p.add_argument("--variant", default="L", help="S, L, an ablation row (A.1 ... C.5) or S/<row>")
    p.add_argument("--size", type=_size, default=(256, 256), help="input size, e.g. 256 or 256x224")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--batch", type=int, default=0, help="also estimate the training memory at this batch size")
    p.add_argument("--memory-gib", type=float, default=0.0, help="with --batch: the segments DANIETrainer recomputes "
                   "to fit this many GiB (as with DANIE_memory_gib)")
    p.add_argument("--eager", action="store_true", help="with --memory-gib: plan for the uncompiled network, as "
                   "DANIETrainer does with nnUNet_compile=f (default: compiled, as on CUDA)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("ext-path", help="print the folder for nnU-Net's nnUNet_extTrainer variable")
    p.set_defaults(func=cmd_ext_path)

    p = sub.add_parser("download-weights", help="save ImageNet MaxViT weights from the timm hub (needs internet)")
    p.add_argument("--variant", default="L", choices=["S", "L"])
    p.add_argument("--out", required=True, help="folder to write <model>.in1k.safetensors into")
    p.set_defaults(func=cmd_download_weights)

    p = sub.add_parser("check-weights", help="load a weights file or folder into a DANIE network and report")
    p.add_argument("source", help="a .safetensors/.pth file or a folder (what DANIE_PRETRAINED would hold)")
    p.add_argument("--variant", default="L", choices=["S", "L"])
    p.add_argument("--size", type=_size, default=(224, 224))
    p.set_defaults(func=cmd_check_weights)

    p = sub.add_parser("plan", help="add DANIE configurations (native, paper224, paper256) to nnU-Net plans")
    p.add_argument("dataset", help="dataset id or name (already planned with nnUNetv2_plan_and_preprocess -c 2d)")
    p.add_argument("--protocol", nargs="+", default=["native"], choices=["native", "paper224", "paper256"],
                   help="native: nnU-Net's 2d spacing, patch rounded to x32; paper224/256: median slice -> 224/256 px")
    p.add_argument("--variant", default="L", choices=["S", "L"], help="the DANIE the batch size is sized for")
    p.add_argument("--gpu-memory", type=float, default=24.0, help="GiB of the training GPU (default 24)")
    p.add_argument("--batch-size", type=int, default=None, help="fixed batch size (e.g. the paper's 24 on "
                   "Synapse, 12 on ACDC) instead of the memory estimate")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--dry-run", action="store_true", help="explain what would change, write nothing")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="synthetic CT -> nnU-Net plan/preprocess -> DANIE train -> predict -> metrics")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--trainer", default=None, help="default: a few-minute run on CPU, 50 epochs on a GPU")
    p.set_defaults(func=cmd_demo)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"danie-nnunet {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
