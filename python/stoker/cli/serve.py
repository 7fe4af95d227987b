"""``stoker worker``: run a pool of worker processes for the application's queue."""

from __future__ import annotations

import argparse
import gc

from .app import load_queue
from .exit_codes import EXIT_OK


def worker(args: argparse.Namespace) -> int:
    queue, module_name = load_queue(args.app)
    queues = [q for q in args.queues.split(",") if q] if args.queues else None
    # This process only supervises: what the application's module loaded stays
    # until it exits, so full collections need not traverse it (the supervisor
    # allocates a few objects per job, which keeps triggering collections).
    gc.freeze()
    queue.run_worker(
        processes=args.processes,
        queues=queues,
        lease=args.lease,
        drain_timeout=args.drain_timeout,
        kill_grace=args.kill_grace,
        until_idle=args.until_idle,
        imports=[module_name],
        start_method=args.start_method,
        prefetch=args.prefetch,
        max_tasks_per_worker=args.max_tasks_per_worker,
        max_worker_memory_mb=args.max_worker_memory_mb,
        # This process only supervises: what a worker that crashed left running
        # is re-parented to it, and killed.
        adopt_orphans=True,
    )
    return EXIT_OK
