"""The bertforge CLI as a torchrun worker script, with one fault to inject for tests.

``CRASH=RANK:STEP`` makes the process of that rank die abruptly (``os._exit``, as a killed process would)
when it reaches optimizer step STEP of pretraining, before applying it.
"""

import os
import sys

from bertforge import pretrain
from bertforge.cli import main

crash_rank, _, crash_step = os.environ.get("CRASH", "").partition(":")
if crash_rank == os.environ.get("RANK"):
    apply_step, calls = pretrain.optimizer_step, []

    def step_or_die(*args, **kwargs):
        calls.append(None)
        if len(calls) == int(crash_step):
            os._exit(3)
        return apply_step(*args, **kwargs)

    pretrain.optimizer_step = step_or_die

sys.exit(main(sys.argv[1:]))
