"""`python -m fer_app` for torchrun in test_distributed, with one fault: on the first attempt
(TORCHELASTIC_RESTART_COUNT 0) rank FER_TEST_KILL_RANK kills itself with SIGKILL at global step
FER_TEST_KILL_STEP, as a crashed or OOM-killed worker would die. Not collected by pytest."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fer_app.training as training  # noqa: E402
from fer_app.cli import main  # noqa: E402

_real_lr_at = training.lr_at


def _lr_at(cfg, step, total):  # called at every step of every rank
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and os.environ.get("RANK") == os.environ["FER_TEST_KILL_RANK"] and \
            step == int(os.environ["FER_TEST_KILL_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_lr_at(cfg, step, total)


training.lr_at = _lr_at
sys.exit(main())
