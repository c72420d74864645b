"""The main job, as a script: ``python studies/experts_sweep.py [--config ...] [--set key=value ...]`` is
``sbmoe study [...]`` (:mod:`sbmoe_ray.stages.pipeline`): a two-stage study of SB-MoE configurations.

    python studies/experts_sweep.py [--config studies/experts_sweep.yaml] [--set key=value ...]
                                    [--paper] [--resume] [--tracking-uri URI] [--address ADDR]
"""

import sys

from sbmoe_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
