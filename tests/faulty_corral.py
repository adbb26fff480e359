"""`python -m corral`, with an engine child that segfaults once (or, with
$CORRAL_FAULT_HANG=1, hangs) when the file named by $CORRAL_FAULT_FILE appears:
tests/test_faults.py runs the daemon this way."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corral.daemon.service as service
from corral.cli import main
from engine_faults import SegfaultOnce

FAULT, HANG = os.environ["CORRAL_FAULT_FILE"], os.environ.get("CORRAL_FAULT_HANG") == "1"
service.IsolatedEvaluator = lambda *args, **kwargs: SegfaultOnce(  # type: ignore[misc,assignment]
    *args, fault_file=FAULT, hang=HANG, **kwargs)

if __name__ == "__main__":
    main()
