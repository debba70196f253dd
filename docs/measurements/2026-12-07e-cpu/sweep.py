# Realise-threshold sweep on blockbytes.py's block; output: mbconv_block_thresholds.txt (FUSED=1: the bngelu.py prototype)
import os, sys
here = os.path.dirname(os.path.abspath(__file__)); sys.path[:0] = [here, os.path.join(here, "..", "..", "..", "bench")]
import torch._inductor.config as ic
import blockbytes
if __name__ == "__main__":
    for setting in [{}, {"realize_reads_threshold": 8}, {"realize_opusers_threshold": 10}, {"realize_opcount_threshold": 60},
                    {"realize_reads_threshold": 8, "realize_opusers_threshold": 10, "realize_opcount_threshold": 60}]:
        with ic.patch(setting):
            print(setting, end=" ")
            blockbytes.measure(os.environ.get("FUSED") == "1", True)
