# Copyright (c) 2026 The kernel_delay authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Build and drive the tests/workload.c test process."""

import os
import queue
import signal
import subprocess
import threading
import time

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "workload.c")


class WorkloadError(Exception):
    """The workload failed to build, start or answer."""


def build(outdir):
    """Compile workload.c into outdir and return the binary's path, or
    the binary KD_WORKLOAD names (make check-vm's guest: its host built
    it, faster than the guest's emulated CPUs would)."""
    if os.environ.get("KD_WORKLOAD"):
        return os.environ["KD_WORKLOAD"]
    os.makedirs(outdir, exist_ok=True)
    binary = os.path.join(outdir, "workload")
    # Frame pointers: the tests read user stacks, walked through them.
    cmd = ["gcc", "-O2", "-g", "-fno-omit-frame-pointer", "-pthread",
           "-Wall", "-Wextra",
           "-o", binary, SOURCE]
    res = subprocess.run(cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    if res.returncode != 0:
        raise WorkloadError("building workload failed ({}):\n{}".format(
            " ".join(cmd), res.stderr))
    return binary


def read_schedstat(pid, tid):
    """Return (run_ns, wait_ns, timeslices) of one thread."""
    path = "/proc/{}/task/{}/schedstat".format(pid, tid)
    with open(path) as f:
        run_ns, wait_ns, slices = f.read().split()[:3]
    return int(run_ns), int(wait_ns), int(slices)


class Workload:
    """A running workload process, driven over its stdin/stdout."""

    def __init__(self, binary, spin_cpu=None):
        args = [binary]
        if spin_cpu is not None:
            args += ["--spin", str(int(spin_cpu))]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            universal_newlines=True, bufsize=1)
        self._lines = queue.Queue()
        self._stale = 0  # answers of timed-out commands still to come
        self._reader = threading.Thread(target=self._read_loop,
                                        daemon=True)
        self._reader.start()
        try:
            line = self._next_line(10)
            parts = line.split()
            if len(parts) != 2 or parts[0] != "ready":
                raise WorkloadError("unexpected startup line: %r" % line)
            self.pid = int(parts[1])
            if self.pid != self.proc.pid:
                raise WorkloadError("ready pid %d != process pid %d"
                                    % (self.pid, self.proc.pid))
        except BaseException:
            self._kill()
            raise

    def _read_loop(self):
        # Forward stdout lines to the queue; None marks EOF.
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(None)

    def _next_line(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkloadError("workload %d: no answer within %s s"
                                    % (self.proc.pid, timeout)) from None
            if line is None:
                # Keep the EOF marker for later callers.
                self._lines.put(None)
                raise WorkloadError("workload %d exited (rc=%s)"
                                    % (self.proc.pid, self.proc.poll()))
            if self._stale:
                # Late answer of an earlier, timed-out command.
                self._stale -= 1
                continue
            return line.strip()

    def command(self, line, timeout=10):
        """Send one command line and return its answer line."""
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise WorkloadError("workload %d: cannot send %r: %s"
                                % (self.proc.pid, line, e)) from e
        try:
            return self._next_line(timeout)
        except WorkloadError:
            if self.proc.poll() is None:
                self._stale += 1
            raise

    def tids(self):
        """Return a dict thread name -> tid."""
        answer = self.command("tids")
        parts = answer.split()
        if not parts or parts[0] != "tids":
            raise WorkloadError("unexpected tids answer: %r" % answer)
        result = {}
        for item in parts[1:]:
            name, tid = item.split("=", 1)
            result[name] = int(tid)
        return result

    def wait_spinners_sharing(self, timeout=60):
        """Return once the two spinners (--spin) each ran 20 ms and waited
        for their CPU behind the other: they share it.  Told by the
        kernel's own accounting (schedstat), so it holds on a loaded
        machine, where a fixed pause may not be enough."""
        tids = self.tids()
        spinners = [tids["kd-spin1"], tids["kd-spin2"]]
        first = {tid: read_schedstat(self.pid, tid) for tid in spinners}
        deadline = time.monotonic() + timeout
        while True:
            now = {tid: read_schedstat(self.pid, tid) for tid in spinners}
            if all(now[tid][0] - first[tid][0] >= 20 * 10 ** 6 and
                   now[tid][1] > first[tid][1] for tid in spinners):
                return
            if time.monotonic() > deadline:
                raise WorkloadError("spinners did not share a CPU within "
                                    "{} s: {}".format(timeout, now))
            time.sleep(0.01)

    def _kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self):
        # The process is gone: let the reader see EOF before closing.
        self._reader.join(timeout=2)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def stop(self):
        """Ask the workload to quit; kill it if it does not within 5 s."""
        if self.proc.poll() is not None:
            self._close()
            return
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        return False
