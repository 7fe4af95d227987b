"""Imported by worker processes in a test: holds their start-up until a gate file exists."""

import os
import time
from pathlib import Path

_gate = os.environ.get("STOKER_TEST_START_GATE")
if _gate:
    while not Path(_gate).exists():
        time.sleep(0.005)
