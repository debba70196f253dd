# DANIE-S step bytes by Inductor realise-threshold setting (bench/gpu_launches.count_compiled_step). Usage: python netsweep.py S 128 2 cl+wcopy+up default,all3
import os, sys, json, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bench"))
import torch._inductor.config as ic
SETTINGS = {"default": {}, "all3": {"realize_reads_threshold": 8, "realize_opusers_threshold": 10, "realize_opcount_threshold": 60},
            "opcount60": {"realize_opcount_threshold": 60}, "reads8": {"realize_reads_threshold": 8},
            "reads8+opcount60": {"realize_reads_threshold": 8, "realize_opcount_threshold": 60}}
if __name__ == "__main__":
    import gpu_launches
    model, patch, batch, variant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    for name in sys.argv[5].split(","):
        t = time.time()
        with ic.patch(SETTINGS[name]):
            r = gpu_launches.count_compiled_step(model, patch, batch, variant=variant)
        print(f"{model} {patch}x{batch} {variant} {name}: {r['launches']} launches, {r['gigabytes']:.3f} GB, compile {r['compile_s']:.0f} s, wall {time.time()-t:.0f} s", flush=True)
