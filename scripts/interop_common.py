"""What the interop check scripts share: PASS/FAIL lines, waiting for a map file fleetsim
writes, and opening a run report. Imported by modbus_interop.py and serial_interop.py (the
scripts' own folder is on sys.path when python3 runs them by path)."""

import csv
import json
import os
import threading
import time


class Results:
    """PASS/FAIL lines. Checks running in threads can build their line with `line` and print
    it later with `emit`, so the output's order does not depend on timing."""

    def __init__(self, test):
        self.test = test
        self.passed = 0
        self.failed = 0
        self.lock = threading.Lock()

    def line(self, name, ok, detail):
        return ok, f"{'PASS' if ok else 'FAIL'}  {self.test}  {name}: {detail}"

    def emit(self, ok, text):
        with self.lock:
            self.passed += bool(ok)
            self.failed += not ok
            print(text, flush=True)
        return ok

    def check(self, name, ok, detail):
        return self.emit(*self.line(name, ok, detail))


class Skip(Exception):
    """A check could not go on because an earlier step failed."""


def run_check(fn):
    """(ok, detail) from a check function; a Skip or an unexpected error fails it with a reason."""
    try:
        return fn()
    except Skip as e:
        return False, str(e)
    except Exception as e:  # a crash of the check itself is a failure with a reason, not a traceback
        return False, f"{type(e).__name__}: {e}"


def wait_for_map(path, timeout_s):
    """(text, rows, mtime) of a map file once complete: a header and rows, the same twice in a
    row (fleetsim writes it in one go, but not atomically)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            with open(path, newline="") as f:
                text = f.read()
        except FileNotFoundError:
            text = None
        if text and text.endswith("\n") and text == last:
            rows = list(csv.DictReader(text.splitlines()))
            if rows:
                return text, rows, os.stat(path).st_mtime
        last = text
        time.sleep(0.1)
    raise TimeoutError(f"{path} not written within {timeout_s:.0f} s")


def resolve(path, base):
    return path if os.path.isabs(path) else os.path.join(base, path)


def report_section(args, section):
    """The `exit` check and the report's `section`, as (Results, dict or None)."""
    r = Results(args.test)
    r.check("fleetsim exit", args.exit_code == 0, f"{args.exit_code} (want 0: SLOs met)")
    try:
        with open(args.report) as f:
            return r, json.load(f)[section]
    except (OSError, ValueError, KeyError, TypeError) as e:
        r.check(f"report {section} counters", False, f"{args.report}: {type(e).__name__}: {e}")
        return r, None
