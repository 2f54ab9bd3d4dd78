"""Keep one CPU core busy for ``make test-contended``.

The Makefile stops each hog by its PID when pytest ends; should the recipe's shell itself be
killed before it can (SIGKILL), the hog notices that its parent is gone and exits too, so no
spinning process outlives the run.
"""

import os

parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):  # about 20-50 ms of pure CPU between checks
        pass
