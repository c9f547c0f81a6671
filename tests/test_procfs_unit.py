# SPDX-License-Identifier: Apache-2.0
"""Processes and threads as /proc shows them, read from this test's own
process: no eBPF (the privileged ones are in test_procfs.py)."""

import os
import threading
import time


# ---- Threads born after the window closed (issue 18 case 7) ----------------

def test_threads_born_after_the_window_are_left_out(kd):
    """A thread that started after the window closed is no quiet thread of
    it; one that started before is, as /proc and psutil show them."""
    before = threading.Event()
    done = threading.Event()
    tids = []

    def live():
        tids.append(threading.get_native_id())
        before.set()
        done.wait(30)
    old = threading.Thread(target=live)
    old.start()
    before.wait(10)
    # Start times count in clock ticks (10 ms): wait past the next one.
    time.sleep(0.03)
    closed = time.monotonic_ns()
    time.sleep(0.03)
    before.clear()
    new = threading.Thread(target=live)
    new.start()
    before.wait(10)
    try:
        tasks = kd.snapshot_tasks(os.getpid(), kd.task_list(os.getpid()))
        quiet = [tid for tid, _, _ in kd.quiet_of(
            tasks, {}, {}, kd.monotonic_since_boot(closed))]
        assert tids[0] in quiet and os.getpid() in quiet
        assert tids[1] not in quiet
        # Without the window's end, every thread counts.
        assert tids[1] in [tid for tid, _, _ in kd.quiet_of(tasks, {}, {})]
    finally:
        done.set()
        old.join()
        new.join()
