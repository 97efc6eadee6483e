"""What the benchmark and soak scripts read while a run goes: a process's /proc status, CPU
time and open files, and fleetsim's snapshot from the control API its log names. Imported by
the samplers embedded in scripts/soak.sh, scripts/gateway-bench.sh and scripts/scale-100k.sh
(run with PYTHONPATH=scripts)."""

import json
import os
import re
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def status(pid):
    """/proc/PID/status as {key: first word of its value} (VmRSS, VmHWM, Threads, ... in kB);
    None once the process is gone."""
    r = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                r[k] = v.split()[0] if v.split() else ""
    except OSError:
        return None
    return r


def cpu_and_parent(pid):
    """(user + system CPU seconds, parent pid) of a process; (None, None) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / TICK, int(rest[1])
    except (OSError, IndexError, ValueError):
        return None, None


def cpu(pid):
    """User + system CPU seconds of a process ("" once it is gone, for a CSV cell)."""
    c, _ = cpu_and_parent(pid)
    return "" if c is None else c


def nfds(pid):
    """Open files of a process ("" once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return ""


class ApiFromLog:
    """fleetsim's `GET /api/v1/snapshot?histograms=false`, at the address its log announced
    ("control API on http://..."); None until it has, or when it does not answer."""

    def __init__(self, log, timeout=3):
        self.log = log
        self.timeout = timeout
        self.api = None

    def snapshot(self):
        if self.api is None:
            try:
                with open(self.log) as f:
                    m = re.search(r"control API on (http://[0-9.:]+)", f.read())
                self.api = m.group(1) if m else None
            except OSError:
                pass
        if self.api is None:
            return None
        try:
            with urllib.request.urlopen(self.api + "/api/v1/snapshot?histograms=false", timeout=self.timeout) as r:
                return json.load(r)
        except Exception:
            return None
