#!/usr/bin/env python3
"""Interop checks of fleetsim's live surfaces, used as a person (or Prometheus) uses them: the
control API's /metrics read by Python's prometheus_client (the reference parser of the text
format 0.0.4) and its JSON endpoints read with urllib; the dashboard (`run --tui`) and
`top --attach` driven by keys in a real terminal (tmux: send-keys to type, capture-pane to
read the screen). Used by scripts/interop.sh (test H).

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
and the exit status is 1 when any check failed, else 0. A failed screen check also prints the
last screen it read; every screen read is saved in --tmp (H-<subcommand>-NN-<what>.txt).

Subcommands (each starts what it needs with --fleetsim, from --cwd, so that `fleetsim run`
without a scenario plays scenarios/demo.toml: 2,000 devices; every wait is bounded, every
process and tmux session it started is ended on the way out, SIGTERM included):
  metrics  `run --headless --duration 30s --api-listen 127.0.0.1:0`: the address from its
           stderr; /api/v1/health; /metrics (once the first snapshot is there) parsed with
           prometheus_client: every family docs/api.md lists, with its type, and nothing else;
           only fleetsim_ names; devices by state summing to fleetsim_devices_total = 2000;
           counters growing between two scrapes 2 s apart; latency histograms with the
           documented buckets, cumulative, +Inf = _count > 0; pause (the snapshot says paused,
           published and simulated time stand still over 2 s, /metrics says fleetsim_paused 1)
           and resume (409 when not paused); a fault (202, then a "control" event in the
           snapshot's events and devices going offline); malformed bodies (400 with
           {"error": {...}}); GET /api/v1/pause (405); devices by id and number (200) and an
           unknown one (404); the run's end, exit code and report.
  tui      `run --tui --duration 60s` in a tmux session 140x45: the overview and its header;
           screens 2-6 by their keys; the help overlay (?, Esc); an outage of 20 % from the
           form (o, 20, Enter, [y/N], y) seen on the Events screen as a "control" line and then
           a "storm" line; a device looked up with / (env-000042, its sensors, read again
           while shown); q: the dashboard leaves, the summary is on the terminal, the exit
           code is an SLO verdict (0 or 1), the report says interrupted; log lines went to
           RUN_DIR/fleetsim.log, never onto the dashboard.
  attach   two `run --headless --api-listen 127.0.0.1:0 --devices 300 --duration 40s` (seeds 11
           and 12) and `top --attach URL1 --attach URL2` in tmux: the merged header (processes
           2, devices 600) and shards of both processes; p/y pauses both runs (their snapshots
           say so; the header says PAUSED), r/y resumes both; q leaves top with exit 0 and both
           runs go on; then Ctrl-C (SIGINT) ends each with its report (interrupted).
"""

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from interop_common import Results

TEST = "H"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMUX_SOCKET = "fleetsim-interop"

API_LINE = re.compile(r"control API on (http://127\.0\.0\.1:\d+)")
# Latency histogram buckets (docs/api.md, "Metrics"), in seconds.
BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.inf]
STATES = {"off", "booting", "connecting", "online", "offline", "dead"}
# A log line (human format) that would have landed on the dashboard instead of the log file.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z\s+(TRACE|DEBUG|INFO|WARN|ERROR)\b")
# A row of the Events screen: number, elapsed, simulated time, kind, message.
EVENT_ROW = re.compile(r"│\s*(\d+)\s+([\d.]+)s\s+(\d\d:\d\d:\d\d)\s+(\w+)\s+(.*?)\s*│?$")


def note(text):
    print(f"   {text}", flush=True)


def indent(text, n=60):
    lines = text.rstrip("\n").splitlines()[-n:]
    return "\n".join("   | " + line.rstrip() for line in lines)


# ------------------------------------------------------------------------------- HTTP ----

class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def ctype(self):
        return self.headers.get("Content-Type", "") if self.headers is not None else ""

    def __str__(self):
        return f"{self.status} {self.text()[:200]}"


def http(method, url, body=None, ctype="application/json", timeout=5.0):
    """One request; an HTTP error status is an Answer too. Connection errors raise OSError."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    if data is None and method == "POST":
        data = b""
    req = urllib.request.Request(url, data=data, method=method)
    if data and ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


def get_json(url, timeout=5.0):
    a = http("GET", url, timeout=timeout)
    if a.status != 200:
        raise RuntimeError(f"GET {url}: {a}")
    return a.json()


def snapshot(api):
    return get_json(f"{api}/api/v1/snapshot?histograms=false")


def wait_until(fn, timeout, step=0.2):
    """fn() until it returns something truthy (returned) or `timeout` s pass (the last value).
    Connection errors count as falsy."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except (OSError, ValueError, RuntimeError) as e:
            last = None
            err = e
        else:
            err = None
        if last:
            return last
        if time.monotonic() >= deadline:
            if last is None and err is not None:
                note(f"(last error while waiting: {type(err).__name__}: {err})")
            return last
        time.sleep(step)


# ------------------------------------------------------------------------ processes ----

class Fleet:
    """A fleetsim process run here, its stdout/stderr in files."""

    def __init__(self, name, argv, tmp, cwd):
        self.name = name
        self.argv = argv
        self.out = os.path.join(tmp, f"H-{name}.out")
        self.err = os.path.join(tmp, f"H-{name}.err")
        self.api = None
        self.rc = None
        note(f"{name}: {' '.join(shlex.quote(a) for a in argv)}")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.started = time.monotonic()

    def running(self):
        return self.proc.poll() is None

    def stderr(self):
        try:
            with open(self.err, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_api(self, timeout=20):
        """The control API's URL from the log line on stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = API_LINE.search(self.stderr())
            if m:
                self.api = m.group(1)
                return self.api
            if not self.running():
                break
            time.sleep(0.1)
        return None

    def wait(self, timeout):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.rc = None
        return self.rc

    def interrupt(self, timeout=20):
        """Ctrl-C, as a person would; the exit code, or None when it did not end in time."""
        if self.running():
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def kill(self):
        if self.running():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, n=12):
        return indent(self.stderr(), n)


def tmux(*args, check=False, timeout=10):
    # -u: the panes' text is UTF-8 whatever the locale; -f /dev/null: no user configuration
    # (it only applies when this call starts the private server).
    return subprocess.run(["tmux", "-u", "-f", "/dev/null", "-L", TMUX_SOCKET, *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=check)


class Pane:
    """A detached tmux session on the private socket running one shell command; screens read
    with capture-pane are kept in `tmp`."""

    def __init__(self, name, command, cwd, tmp, tag, width=140, height=45):
        self.name = f"{name}-{tag}"
        self.target = f"={self.name}:"  # exactly this session (a bare name also matches by prefix)
        self.tmp = tmp
        self.label = name
        self.n = 0
        self.last = ""
        env = "env NO_COLOR=1 LC_ALL=C.UTF-8 "
        tmux("kill-session", "-t", "=" + self.name)
        note(f"tmux -L {TMUX_SOCKET} session {self.name} ({width}x{height}): {command}")
        tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), "-c", cwd,
             env + command, check=True)
        # The pane stays when its command ends (the summary stays readable).
        tmux("set-option", "-t", self.target, "remain-on-exit", "on")

    def keys(self, *keys):
        tmux("send-keys", "-t", self.target, *keys, check=True)

    def type(self, text):
        tmux("send-keys", "-t", self.target, "-l", text, check=True)

    def capture(self, what=None, history=False):
        args = ["capture-pane", "-p", "-t", self.target]
        if history:
            args += ["-S", "-"]
        p = tmux(*args)
        text = p.stdout if p.returncode == 0 else f"(capture-pane failed: {p.stderr.strip()})\n"
        self.last = text
        if what:
            self.n += 1
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", what)[:40]
            with open(os.path.join(self.tmp, f"H-{self.label}-{self.n:02d}-{safe}.txt"), "w") as f:
                f.write(text)
        return text

    def wait(self, pred, timeout, what):
        """Reads the screen until pred(text) is truthy or `timeout` s pass: (value, text). The
        last screen read is saved as `what`."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.capture()
            v = pred(text)
            if v or time.monotonic() >= deadline:
                self.capture(what)
                return v, self.last
            time.sleep(0.15)

    def kill(self):
        tmux("kill-session", "-t", "=" + self.name)


def wait_file(path, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return text
        except OSError:
            pass
        time.sleep(0.2)
    return None


def load_report(path):
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"{path}: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------- checks ----

class Checks(Results):
    """Results that print the last screen (or process output) under a failed check."""

    def check(self, name, ok, detail, screen=None):
        ok = bool(ok)
        super().check(name, ok, detail)
        if not ok and screen:
            print(indent(screen), flush=True)
        return ok


# ---------------------------------------------------------------------------- metrics ----

def documented_metrics(path):
    """{name: type} of the metrics table in docs/api.md."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\|\s*`(fleetsim_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram|summary)\s*\|", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def scrape(api):
    """(families by name, text) of /metrics parsed with prometheus_client, or raises."""
    from prometheus_client.parser import text_string_to_metric_families

    a = http("GET", f"{api}/metrics")
    if a.status != 200:
        raise RuntimeError(f"GET /metrics: {a}")
    text = a.text()
    fams = {}
    for fam in text_string_to_metric_families(text):
        fams[fam.name] = fam
    return fams, text, a


def family(fams, name):
    """A family by its exposed name; prometheus_client names a counter without `_total`."""
    if name in fams:
        return fams[name]
    if name.endswith("_total") and name[:-6] in fams and fams[name[:-6]].type == "counter":
        return fams[name[:-6]]
    return None


def value(fams, name, **labels):
    fam = family(fams, name)
    if fam is None:
        raise KeyError(f"no family {name}")
    sample = name if fam.type != "counter" or name.endswith("_total") else name + "_total"
    hits = [s.value for s in fam.samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} samples {name}{labels}")
    return hits[0]


def scrape_when(api, cond, timeout=5):
    """The first parsed /metrics for which cond(families) holds, polled for `timeout` s; None."""
    def attempt():
        fams = scrape(api)[0]
        return fams if cond(fams) else None
    return wait_until(attempt, timeout)


def snapshot_when(api, cond, timeout=5):
    """The first snapshot for which cond(snapshot) holds, polled for `timeout` s; None."""
    def attempt():
        snap = snapshot(api)
        return snap if cond(snap) else None
    return wait_until(attempt, timeout)


def histogram_problems(fam):
    """What is wrong with a histogram family (empty list: nothing), and its _count."""
    name = fam.name
    buckets = [(s.labels.get("le"), s.value) for s in fam.samples if s.name == name + "_bucket"]
    counts = [s.value for s in fam.samples if s.name == name + "_count"]
    sums = [s.value for s in fam.samples if s.name == name + "_sum"]
    problems = []
    if len(counts) != 1 or len(sums) != 1:
        return [f"{len(counts)} _count and {len(sums)} _sum samples"], None
    count = counts[0]
    les = []
    for le, _ in buckets:
        try:
            les.append(float(le))
        except (TypeError, ValueError):
            problems.append(f"le={le!r} is not a number")
    if not problems and les != BUCKETS:
        problems.append(f"buckets le={les}, documented {BUCKETS}")
    vals = [v for _, v in buckets]
    if any(b < a for a, b in zip(vals, vals[1:])):
        problems.append(f"buckets not cumulative: {vals}")
    if not buckets or buckets[-1][0] != "+Inf":
        problems.append("no le=\"+Inf\" bucket last")
    elif buckets[-1][1] != count:
        problems.append(f"+Inf bucket {buckets[-1][1]} != _count {count}")
    if sums[0] < 0:
        problems.append(f"_sum {sums[0]} < 0")
    return problems, count


def cmd_metrics(args):
    r = Checks(args.test)
    report = os.path.join(args.tmp, "H-metrics.json")
    if os.path.exists(report):
        os.remove(report)
    fleet = Fleet("metrics", [args.fleetsim, "run", "--headless", "--duration", "30s", "--api-listen", "127.0.0.1:0",
                              "--report", report, "--run-dir", os.path.join(args.tmp, "H-metrics-run")],
                  args.tmp, args.cwd)
    try:
        try:
            if not metrics_live(args, r, fleet):
                return r  # no API to talk to: nothing else to check
        except Exception as e:  # a crash of the checks is a failure with a reason, not a traceback
            r.check("metrics: the live checks ran to the end", False, f"{type(e).__name__}: {e}")
        rc = fleet.wait(args.run_timeout - (time.monotonic() - fleet.started))
        if rc is None:
            r.check("metrics: the run ends", False, f"still running {args.run_timeout:.0f} s after its start")
            fleet.kill()
            return r
        r.check("metrics: run exit", rc in (0, 1), f"{rc} (want 0 or 1: an SLO verdict; the injected outage "
                f"may fail the delivered ratio)", fleet.tail() if rc not in (0, 1) else None)
        rep, err = load_report(report)
        if rep is None:
            r.check("metrics: report", False, err)
            return r
        m = rep.get("messages", {})
        parts = sum(m.get(k, 0) for k in ("acked", "failed", "in_flight", "buffered"))
        total = rep.get("devices", {}).get("total")
        interrupted = rep.get("run", {}).get("interrupted")
        r.check("metrics: report", total == 2000 and interrupted is False and m.get("published", 0) > 0
                and parts == m.get("published") and rep.get("ok") == (rc == 0),
                f"{report}: devices.total {total}, run.interrupted {interrupted}, published {m.get('published')} "
                f"= acked+failed+in_flight+buffered {parts}, ok {rep.get('ok')} with exit {rc}")
        return r
    finally:
        fleet.kill()


def metrics_live(args, r, fleet):
    """The checks while the run goes on; False when there was no API to check."""
    api = fleet.wait_api()
    if not r.check("metrics: API address on stderr", api, api or f"no 'control API on http://...' line; "
                   f"running: {fleet.running()}", None if api else fleet.tail()):
        return False
    a = wait_until(lambda: http("GET", f"{api}/api/v1/health"), 10)
    ok = a is not None and a.status == 200 and a.json() == {"status": "ok"}
    if not r.check("metrics: GET /api/v1/health", ok, str(a)):
        return False
    first = wait_until(lambda: (lambda x: x if x.status == 200 else None)(http("GET", f"{api}/metrics")), 15)
    if not r.check("metrics: GET /metrics after the first snapshot", first, "200 within 15 s" if first
                   else "no 200 within 15 s (503 before the first snapshot)"):
        return False
    r.check("metrics: Content-Type", first.ctype().replace(" ", "") == "text/plain;version=0.0.4;charset=utf-8",
            first.ctype())

    # -- the exposition as prometheus_client reads it
    try:
        fams, text, _ = scrape(api)
    except Exception as e:  # a parse error is the finding
        r.check("metrics: prometheus_client parses /metrics", False, f"{type(e).__name__}: {e}")
        return True
    samples = [s for f in fams.values() for s in f.samples]
    r.check("metrics: prometheus_client parses /metrics", samples, f"{len(fams)} families, {len(samples)} samples")
    foreign = sorted({s.name for s in samples if not s.name.startswith("fleetsim_")}
                     | {n for n in fams if not n.startswith("fleetsim_")})
    r.check("metrics: every name starts with fleetsim_", not foreign, f"others: {foreign[:10]}" if foreign else
            f"all {len(samples)} samples")
    doc = documented_metrics(args.api_doc)
    wrong = []
    for name, typ in doc.items():
        fam = family(fams, name)
        if fam is None:
            wrong.append(f"{name} missing")
        elif fam.type != typ:
            wrong.append(f"{name} is {fam.type}, documented {typ}")
    exposed = set()
    for fam in fams.values():
        exposed.add(fam.name + "_total" if fam.type == "counter" and fam.name + "_total" in doc else fam.name)
    extra = sorted(exposed - set(doc))
    r.check("metrics: families and types as docs/api.md lists them", doc and not wrong and not extra,
            f"{len(doc)} documented, {len(fams)} exposed" + (f"; {wrong[:8]}" if wrong else "")
            + (f"; undocumented: {extra[:8]}" if extra else ""))
    try:
        devs = family(fams, "fleetsim_devices")
        by_state = {s.labels.get("state"): s.value for s in devs.samples}
        total = value(fams, "fleetsim_devices_total")
        r.check("metrics: fleetsim_devices by state sums to fleetsim_devices_total", devs.type == "gauge"
                and set(by_state) == STATES and sum(by_state.values()) == total == 2000,
                f"{devs.type} {by_state}, sum {sum(by_state.values()):g}, total {total:g} (want 2000)")
        info = [s.labels for s in family(fams, "fleetsim_run_info").samples]
        processes, paused = value(fams, "fleetsim_processes"), value(fams, "fleetsim_paused")
        r.check("metrics: fleetsim_run_info and fleetsim_processes", len(info) == 1
                and info[0].get("scenario") == "demo" and info[0].get("clock") == "wall"
                and processes == 1 and paused == 0,
                f"{info}, processes {processes:g}, paused {paused:g}")
    except (KeyError, AttributeError) as e:
        r.check("metrics: fleetsim_devices by state sums to fleetsim_devices_total", False, f"{type(e).__name__}: {e}")

    # -- counters grow between two scrapes 2 s apart
    try:
        c1 = {n: value(fams, n) for n in ("fleetsim_telemetry_published_total", "fleetsim_telemetry_acked_total",
                                          "fleetsim_device_steps_total", "fleetsim_elapsed_seconds")}
        time.sleep(2)  # then a snapshot at least 1.5 s newer (they come once a second)
        fams2 = scrape_when(api, lambda f: value(f, "fleetsim_elapsed_seconds") >= c1["fleetsim_elapsed_seconds"] + 1.5)
        if not fams2:
            raise RuntimeError("no newer snapshot within 7 s")
        c2 = {n: value(fams2, n) for n in c1}
        grew = c2["fleetsim_telemetry_published_total"] > c1["fleetsim_telemetry_published_total"] \
            and c2["fleetsim_device_steps_total"] > c1["fleetsim_device_steps_total"] \
            and c2["fleetsim_telemetry_acked_total"] >= c1["fleetsim_telemetry_acked_total"]
        r.check("metrics: counters grow between scrapes 2 s apart",
                grew and family(fams2, "fleetsim_telemetry_published_total").type == "counter",
                "; ".join(f"{n} {c1[n]:g} -> {c2[n]:g}" for n in c1))
    except Exception as e:
        r.check("metrics: counters grow between scrapes 2 s apart", False, f"{type(e).__name__}: {e}")
        fams2 = fams

    # -- latency histograms
    def acked(f):
        fam = family(f, "fleetsim_publish_ack_latency_seconds")
        return fam is not None and histogram_problems(fam)[1]

    fams3 = scrape_when(api, acked, 10) or fams2
    for name, want_count in (("fleetsim_publish_ack_latency_seconds", True), ("fleetsim_connect_latency_seconds", True),
                             ("fleetsim_modbus_service_seconds", False)):
        fam = family(fams3, name)
        if fam is None:
            r.check(f"metrics: histogram {name}", False, "missing")
            continue
        problems, count = histogram_problems(fam)
        if want_count and not count:
            problems.append(f"_count {count} (want > 0)")
        r.check(f"metrics: histogram {name}", fam.type == "histogram" and not problems,
                f"{fam.type}, {len(BUCKETS)} buckets cumulative, +Inf = _count = {count}" if not problems
                else f"{fam.type}: {'; '.join(problems)}")

    # -- pause: simulated time and publishing stand still
    a = http("POST", f"{api}/api/v1/pause")
    ok = a.status == 202 and "paused" in a.json().get("message", "")
    r.check("metrics: POST /api/v1/pause", ok, str(a))
    snap = snapshot_when(api, lambda s: s.get("paused") is True)
    r.check("metrics: snapshot paused after pause", snap, "paused true" if snap else "not paused within 5 s")
    try:
        # the first snapshot that says paused, and one at least 1.5 s newer
        f1 = scrape_when(api, lambda f: value(f, "fleetsim_paused") == 1)
        if not f1:
            raise RuntimeError("fleetsim_paused not 1 within 5 s")
        t1 = value(f1, "fleetsim_elapsed_seconds")
        time.sleep(2)
        f2 = scrape_when(api, lambda f: value(f, "fleetsim_elapsed_seconds") >= t1 + 1.5)
        if not f2:
            raise RuntimeError("no newer snapshot within 7 s of the pause")
        names = ("fleetsim_telemetry_published_total", "fleetsim_sim_time_seconds", "fleetsim_paused",
                 "fleetsim_elapsed_seconds")
        v1 = {n: value(f1, n) for n in names}
        v2 = {n: value(f2, n) for n in names}
        r.check("metrics: paused: published and simulated time stand still over 2 s",
                v1["fleetsim_telemetry_published_total"] == v2["fleetsim_telemetry_published_total"]
                and v1["fleetsim_sim_time_seconds"] == v2["fleetsim_sim_time_seconds"] and v2["fleetsim_paused"] == 1,
                "; ".join(f"{n} {v1[n]:g} -> {v2[n]:g}" for n in names))
    except Exception as e:
        r.check("metrics: paused: published and simulated time stand still over 2 s", False, f"{type(e).__name__}: {e}")
    a = http("POST", f"{api}/api/v1/resume")
    r.check("metrics: POST /api/v1/resume", a.status == 202 and "resumed" in a.text(), str(a))
    snap = snapshot_when(api, lambda s: s.get("paused") is False)
    r.check("metrics: snapshot not paused after resume", snap, "paused false" if snap else "still paused after 5 s")
    try:
        base = value(scrape(api)[0], "fleetsim_telemetry_published_total")
        moved = scrape_when(api, lambda f: value(f, "fleetsim_telemetry_published_total") > base, 6)
        r.check("metrics: publishing goes on after resume", moved, f"published {base:g} -> more within 6 s"
                if moved else f"published stays {base:g} for 6 s")
    except Exception as e:
        r.check("metrics: publishing goes on after resume", False, f"{type(e).__name__}: {e}")
    a = http("POST", f"{api}/api/v1/resume")
    try:
        err = a.json().get("error", {})
    except ValueError:
        err = {}
    r.check("metrics: resume when not paused -> 409", a.status == 409 and err.get("kind") == "conflict", str(a))

    # -- a fault
    offline0 = snapshot(api)["states"].get("offline", 0)
    a = http("POST", f"{api}/api/v1/faults", '{"kind":"outage","fraction":0.2,"duration":"20s"}')
    r.check("metrics: POST /api/v1/faults (outage of 20 % for 20 s)", a.status == 202 and "outage" in a.text(), str(a))

    def control_event():
        s = snapshot(api)
        ev = [e for e in s.get("events", []) if e.get("kind") == "control" and "outage of 20%" in e.get("message", "")]
        return (ev[-1], s) if ev else None

    got = wait_until(control_event, 5)
    r.check("metrics: a control event in the snapshot's events", got, json.dumps(got[0]) if got else
            "no event of kind control with 'outage of 20%' within 5 s")
    snap = snapshot_when(api, lambda s: s["states"].get("offline", 0) >= offline0 + 300, 8)
    r.check("metrics: devices go offline in the outage", snap, f"offline {offline0} -> {snap['states']['offline']} "
            f"(want >= +300 of 2,000)" if snap else f"offline did not reach {offline0 + 300} within 8 s")

    # -- malformed requests
    for what, body, ctype in (("malformed JSON", '{"kind":"outage","fraction":0.2', "application/json"),
                              ("an unknown field", '{"kind":"outage","frac":0.2}', "application/json"),
                              ("not application/json", '{"kind":"outage","fraction":0.2}', "text/plain")):
        a = http("POST", f"{api}/api/v1/faults", body, ctype=ctype)
        try:
            e = a.json()
            ok = a.status == 400 and a.ctype().startswith("application/json") and set(e) == {"error"} \
                and e["error"].get("kind") == "bad_request" and e["error"].get("message")
        except (ValueError, AttributeError):
            ok = False
        r.check(f"metrics: POST /api/v1/faults with {what} -> 400 JSON error", ok, str(a))
    a = http("GET", f"{api}/api/v1/pause")
    allow = a.headers.get("Allow", "") if a.headers is not None else ""
    r.check("metrics: GET /api/v1/pause -> 405", a.status == 405 and '"method_not_allowed"' in a.text()
            and "POST" in allow, f"{a}; Allow: {allow}")

    # -- devices
    for key in ("env-000042", "42"):
        a = http("GET", f"{api}/api/v1/devices/{key}")
        try:
            d = a.json()
            ok = a.status == 200 and d.get("device_id") == "env-000042" and d.get("id") == 42 \
                and d.get("cohort") == "env-sensors" and d.get("sensors")
        except ValueError:
            d, ok = {}, False
        sensors = [s.get("name") for s in d.get("sensors") or []]
        r.check(f"metrics: GET /api/v1/devices/{key}", ok, f"{a.status} device_id {d.get('device_id')}, "
                f"id {d.get('id')}, cohort {d.get('cohort')}, state {d.get('state')}, sensors {sensors}")
    a = http("GET", f"{api}/api/v1/devices/nope-999999")
    r.check("metrics: GET /api/v1/devices/nope-999999 -> 404", a.status == 404 and '"not_found"' in a.text(), str(a))
    return True


# -------------------------------------------------------------------------------- tui ----

def screen_has(*needles):
    return lambda text: all(n in text for n in needles)


def dashboard_up(text):
    return "1 Overview" in text and re.search(r"│online\s+[\d,]+", text)


def events(text):
    """Rows of the Events screen as (number, kind, message)."""
    out = []
    for line in text.splitlines():
        m = EVENT_ROW.search(line)
        if m:
            out.append((int(m.group(1)), m.group(4), m.group(5)))
    return out


def cmd_tui(args):
    r = Checks(args.test)
    run_dir = os.path.join(args.tmp, "H-tui-run")
    report = os.path.join(args.tmp, "H-tui.json")
    exit_file = os.path.join(args.tmp, "H-tui.exit")
    cmd = (f"{shlex.quote(args.fleetsim)} run --tui --duration 60s --run-dir {shlex.quote(run_dir)} "
           f"--report {shlex.quote(report)}; echo EXIT=$? > {shlex.quote(exit_file)}; sleep 600")
    for stale in (report, exit_file, os.path.join(run_dir, "fleetsim.log")):
        if os.path.exists(stale):
            os.remove(stale)
    pane = Pane("tui", cmd, args.cwd, args.tmp, args.tag)
    screens = []  # every dashboard screen read (none may show a log line)
    try:
        try:
            if not tui_live(r, pane, screens, exit_file):
                return r  # no dashboard: nothing else to check
        except Exception as e:  # a crash of the checks is a failure with a reason, not a traceback
            r.check("tui: the live checks ran to the end", False, f"{type(e).__name__}: {e}", pane.last)
        pane.keys("q")
        text = wait_file(exit_file, 30)
        m = re.match(r"EXIT=(\d+)", text or "")
        rc = int(m.group(1)) if m else None
        summary = pane.capture("after-quit", history=True)
        r.check("tui: q ends the run", rc is not None,
                f"exit file {text.strip() if text else 'not written within 30 s'}", None if rc is not None else summary)
        if rc is None:
            return r
        r.check("tui: exit code", rc in (0, 1), f"{rc} (want 0 or 1: an SLO verdict; the outage may fail the "
                                               f"delivered ratio)", summary if rc not in (0, 1) else None)
        visible = pane.capture("summary")
        res = re.search(r"^result\s+(.*)$", visible, re.M)
        r.check("tui: the summary is on the terminal after the dashboard left",
                res and "1 Overview" not in visible and "(interrupted)" in visible
                and re.search(r"^SLOs\s", visible, re.M)
                and re.search(r"control\s+outage of 20% of the fleet for 30s", visible),
                f"result line: {res.group(0).strip() if res else 'none'}; tab bar gone: {'1 Overview' not in visible}; "
                f"(interrupted), SLOs and the control event listed", visible)
        rep, err = load_report(report)
        r.check("tui: report run.interrupted", rep and rep.get("run", {}).get("interrupted") is True
                and rep.get("devices", {}).get("total") == 2000 and rep.get("ok") == (rc == 0),
                err or f"{report}: run.interrupted {rep['run'].get('interrupted')}, devices.total "
                f"{rep.get('devices', {}).get('total')}, ok {rep.get('ok')}, elapsed {rep['run'].get('elapsed_s')} s")
        leaks = [line.strip()[:100] for s in screens for line in s.splitlines() if LOG_LINE.search(line)]
        try:
            with open(os.path.join(run_dir, "fleetsim.log"), encoding="utf-8", errors="replace") as f:
                log = f.read()
        except OSError as e:
            log = f"({e})"
        r.check("tui: log lines go to RUN_DIR/fleetsim.log, not onto the dashboard",
                not leaks and re.search(r'outage of 20% of the fleet for 30s.*kind="control"', log),
                f"{len(screens)} dashboard screens without a log line; the log file has the control event"
                if not leaks else f"log lines on the dashboard: {leaks[:3]}")
        return r
    finally:
        pane.kill()


def tui_live(r, pane, screens, exit_file):
    """The checks while the dashboard is up; False when it never came up."""
    def wait(pred, timeout, what):
        v, text = pane.wait(pred, timeout, what)
        screens.append(text)
        return v, text

    _, text = wait(lambda t: dashboard_up(t) or os.path.exists(exit_file), 20, "overview")
    up = dashboard_up(text)
    ended = wait_file(exit_file, 0.5) if not up else None
    why = "no Overview with devices online within 20 s" + (f"; fleetsim ended: {ended.strip()}" if ended else "")
    if not r.check("tui: the Overview shows", up, "tab bar and the Devices panel (online) within 20 s" if up else why,
                   text):
        return False
    head = "\n".join(text.splitlines()[:3])
    hm = re.search(r"shards (\d+)", head)
    ok = re.search(r"^\s*demo\s+seed 1\s+clock wall\s+broker embedded", text, re.M) and "devices 2,000" in head \
        and "processes 1" in head and hm
    r.check("tui: header", ok, " / ".join(line.strip() for line in head.splitlines()[1:]), None if ok else text)
    shards = int(hm.group(1)) if hm else 0

    # screens 2-6
    # process, shard, devices, online, online %, sim time, max lag, steps, state
    shard_row = re.compile(r"│\s+0\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+[\d.]+%\s+\d\d:\d\d:\d\d\s+\S+\s+[\d,]+\s+"
                           r"(running|done)")

    def shards_table(t):
        rows = shard_row.findall(t)
        devices = sum(int(row[1].replace(",", "")) for row in rows)
        return rows if "online %" in t and len(rows) == shards and devices == 2000 else None

    for key, what, pred, detail in (
            ("2", "firmware",
             screen_has("Firmware versions", "Update stages", "env-fw 2.4.1", "Update counters", "Rollouts"),
             "Firmware versions (env-fw 2.4.1 ...), Update stages, Update counters, Rollouts"),
            ("3", "protocols", lambda t: re.search(r"MQTT.*\n.*connect attempts\s+[\d,]+", t)
             and re.search(r"connects ok\s+[1-9][\d,]*", t) and re.search(r"published\s+[1-9][\d,]*", t)
             and "Serial" in t and "Modbus" in t, "MQTT connect attempts, connects ok, published; Serial, Modbus"),
            ("4", "shards", shards_table, f"Shards table: {shards} rows of process 0 whose devices sum to 2,000"),
            ("5", "events", lambda t: re.search(r"╭ Events", t) and "kind" in t and "what" in t,
             "Events (# elapsed sim time kind what)"),
            ("6", "device", screen_has("╭ Device", "Press / to look up a device"), "Device (press / to look up)")):
        pane.keys(key)
        v, text = wait(pred, 8, what)
        r.check(f"tui: key {key} -> {what}", v, detail if v else f"not seen within 8 s: {detail}", text)

    pane.keys("1")
    wait(dashboard_up, 5, "overview-again")
    pane.keys("?")
    v, text = wait(screen_has("Keys", "pause the fleet", "fault form"), 5, "help")
    r.check("tui: ? shows the help overlay", v, "Keys: ... p pause the fleet ... o network fault form" if v else
            "no help listing 'pause the fleet' within 5 s", text)
    pane.keys("Escape")
    v, text = wait(lambda t: "pause the fleet" not in t and dashboard_up(t), 5, "help-closed")
    r.check("tui: Esc closes the help", v, "closed" if v else "still open after 5 s", text)

    # an outage from the form, once the whole fleet is online (the ramp takes 4 s), so that
    # it cuts sessions
    v, text = wait(lambda t: re.search(r"│online\s+2,000\s", t), 15, "all-online")
    r.check("tui: the whole fleet comes online", v, "online 2,000" if v else "not 2,000 online within 15 s", text)
    pane.keys("o")
    v, text = wait(lambda t: re.search(r"percent of the fleet\s+10(?!\d)", t) and re.search(r"duration\s+30s", t),
                   5, "outage-form")
    r.check("tui: o opens the outage form", v, "percent of the fleet 10, duration 30s, cohort" if v else
            "no form with 'percent of the fleet 10' and 'duration 30s' within 5 s", text)
    pane.type("20")
    v, text = wait(lambda t: re.search(r"percent of the fleet\s+20_?\s", t), 5, "outage-20")
    r.check("tui: typing 20 replaces the suggested 10", v, "percent of the fleet 20" if v else
            "the field does not read 20", text)
    pane.keys("Enter")
    v, text = wait(lambda t: re.search(r"outage of 20%.*30s\?\s*\[y/N\]", t), 5, "outage-confirm")
    r.check("tui: Enter asks [y/N]", v, v.group(0) if v else "no 'outage of 20% ... 30s? [y/N]' within 5 s", text)
    pane.keys("y")
    v, text = wait(lambda t: "[y/N]" not in t and re.search(r"outage of 20%.*sim \d\d:\d\d:\d\d", t), 5, "outage-sent")
    r.check("tui: y sends the outage (status line)", v, v.group(0).strip() if v else
            "no status line with the run's answer within 5 s", text)
    pane.keys("5")
    ctrl = lambda t: [e for e in events(t) if e[1] == "control" and "outage of 20%" in e[2]]  # noqa: E731
    v, text = wait(ctrl, 10, "events-control")
    r.check("tui: Events shows the control line", v, f"#{v[0][0]} control {v[0][2]}" if v else
            "no 'control ... outage of 20%' row within 10 s", text)
    if v:
        n = v[0][0]
        storm = lambda t: [e for e in events(t) if e[1] == "storm" and e[0] > n]  # noqa: E731
        s, text = wait(storm, 15, "events-storm")
        r.check("tui: then a storm line", s, f"#{s[0][0]} storm {s[0][2][:90]}" if s else
                f"no 'storm' row after #{n} within 15 s", text)

    # a device
    pane.keys("/")
    v, text = wait(screen_has("device id or number"), 5, "device-prompt")
    r.check("tui: / opens the device prompt", v, "device id or number:" if v else "no prompt within 5 s", text)
    pane.type("env-000042")
    pane.keys("Enter")
    dev = lambda t: ("Device 42 · env-000042" in t and re.search(r"cohort\s+env-sensors", t)  # noqa: E731
                     and re.search(r"Sensors · \d+", t) and all(re.search(rf"│{s}\s+[-\d.]+ ", t) for s in
                                                               ("temperature", "humidity", "co2", "pressure"))
                     and re.search(r"read at sim\s+(\d\d:\d\d:\d\d)", t))
    v, text = wait(dev, 8, "device")
    r.check("tui: the Device screen shows env-000042 and its sensors", v,
            "Device 42 · env-000042, cohort env-sensors, sensors temperature humidity co2 pressure" if v else
            "not within 8 s", text)
    if v:
        t0 = v.group(1)
        v2, text = wait(lambda t: (lambda m: m if m and m.group(1) != t0 else None)(
            re.search(r"read at sim\s+(\d\d:\d\d:\d\d)", t)), 5, "device-again")
        r.check("tui: the device is read again while shown", v2, f"read at sim {t0} -> {v2.group(1)}" if v2 else
                f"read at sim stays {t0} for 5 s", text)
    return True


# ----------------------------------------------------------------------------- attach ----

def cmd_attach(args):
    r = Checks(args.test)
    runs = []
    pane = None
    try:
        for i, seed in enumerate((11, 12)):
            stale = os.path.join(args.tmp, f"H-attach{i + 1}.json")
            if os.path.exists(stale):
                os.remove(stale)
            runs.append(Fleet(f"attach{i + 1}", [
                args.fleetsim, "run", "--headless", "--api-listen", "127.0.0.1:0", "--devices", "300",
                "--duration", "40s", "--seed", str(seed), "--report", os.path.join(args.tmp, f"H-attach{i + 1}.json"),
                "--run-dir", os.path.join(args.tmp, f"H-attach{i + 1}-run")], args.tmp, args.cwd))
        urls = [f.wait_api() for f in runs]
        if not r.check("attach: two runs with their API", all(urls), ", ".join(map(str, urls)),
                       None if all(urls) else "\n".join(f.tail() for f in runs)):
            return r
        ready = wait_until(lambda: all(http("GET", f"{u}/metrics").status == 200 for u in urls), 15)
        if not r.check("attach: both runs have a snapshot", ready, "GET /metrics 200 on both" if ready else
                       "not within 15 s"):
            return r
        exit_file = os.path.join(args.tmp, "H-top.exit")
        if os.path.exists(exit_file):
            os.remove(exit_file)
        cmd = (f"{shlex.quote(args.fleetsim)} top --attach {urls[0]} --attach {urls[1]}; "
               f"echo EXIT=$? > {shlex.quote(exit_file)}; sleep 600")
        pane = Pane("top", cmd, args.cwd, args.tmp, args.tag)
        try:
            if not attach_live(r, pane, urls):
                return r  # no merged view: nothing else to check
        except Exception as e:  # a crash of the checks is a failure with a reason, not a traceback
            r.check("attach: the live checks ran to the end", False, f"{type(e).__name__}: {e}", pane.last)
        pane.keys("q")
        text = wait_file(exit_file, 15)
        screen = pane.capture("after-quit")
        r.check("attach: q leaves top with exit 0", text and text.strip() == "EXIT=0",
                text.strip() if text else "no exit within 15 s", screen)
        # top's exit does not stop the runs
        alive = [f.running() for f in runs]
        answering = []
        for f in runs:
            try:
                s1 = snapshot(f.api)
                answering.append(wait_until(lambda: snapshot(f.api)["elapsed_s"] > s1["elapsed_s"], 4))
            except Exception:
                answering.append(False)
        r.check("attach: both runs go on after top quit", all(alive) and all(answering),
                f"running {alive}, new snapshots {answering}")
        for f in runs:
            rc = f.interrupt(20)
            rep, err = load_report(os.path.join(args.tmp, f"H-{f.name}.json"))
            ok = rc in (0, 1) and rep and rep["run"].get("interrupted") is True and rep["devices"].get("total") == 300
            r.check(f"attach: Ctrl-C ends {f.name} with its report", ok,
                    err or f"exit {rc}, run.interrupted {rep['run'].get('interrupted')}, devices.total "
                    f"{rep['devices'].get('total')}, seed {rep['run'].get('seed')}", None if ok else f.tail())
        return r
    finally:
        if pane:
            pane.kill()
        for f in runs:
            f.kill()


def attach_live(r, pane, urls):
    """The checks while top is up; False when its merged view never came up."""
    v, text = pane.wait(lambda t: "processes 2" in t and "devices 600" in t and dashboard_up(t), 20, "merged")
    r.check("attach: merged header (processes 2, devices 600)", v, "processes 2, devices 600" if v else
            "not within 20 s", text)
    if not v:
        return False
    v, text = pane.wait(screen_has(f"attached to {urls[0]}, {urls[1]}"), 3, "status")
    r.check("attach: status line names both runs", v, f"attached to {urls[0]}, {urls[1]}" if v else "not shown", text)
    pane.keys("4")
    processes = re.compile(r"│\s+([01])\s+\d+\s+[\d,]+\s+[\d,]+\s+[\d.]+%")  # process, shard, devices, online
    v, text = pane.wait(lambda t: set(processes.findall(t)) == {"0", "1"}, 8, "shards")
    r.check("attach: shards of both processes", v, "rows of process 0 and 1" if v else "not within 8 s", text)
    pane.keys("1")

    def paused_all(want):
        return all(snapshot(u).get("paused") is want for u in urls)

    for key, question, want in (("p", "Pause the fleet? [y/N]", True), ("r", "Resume the fleet? [y/N]", False)):
        word = "pause" if want else "resume"
        pane.keys(key)
        v, text = pane.wait(screen_has(question), 5, f"{word}-confirm")
        r.check(f"attach: {key} asks", v, question if v else "no confirmation within 5 s", text)
        pane.keys("y")
        v = wait_until(lambda: paused_all(want), 6)
        r.check(f"attach: y {word}s both runs", v, f"both snapshots paused {str(want).lower()}" if v else
                f"paused: {[snapshot(u).get('paused') for u in urls]} after 6 s")
        badge = (lambda t: re.search(r"^\s*PAUSED\s", t, re.M) and "on all 2 processes" in t) if want else \
            (lambda t: not re.search(r"^\s*PAUSED\s", t, re.M) and "resumed (on all 2 processes)" in t)
        v, text = pane.wait(badge, 6, f"{word}d")
        seen = "PAUSED badge; status: paused (on all 2 processes)" if want else \
            "no badge; status: resumed (on all 2 processes)"
        r.check(f"attach: the header {'shows' if want else 'drops'} PAUSED", v, seen if v else "not within 6 s", text)
    return True


# ------------------------------------------------------------------------------- main ----

def main():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--test", default=TEST, help="label printed on each line (default H)")
    common.add_argument("--fleetsim", required=True, help="the fleetsim binary")
    common.add_argument("--tmp", required=True, help="a folder for reports, outputs and screens")
    common.add_argument("--cwd", default=ROOT, help="fleetsim's working directory (default: the repository, "
                                                    "for scenarios/demo.toml)")
    common.add_argument("--tag", default=str(os.getpid()),
                        help=f"tmux sessions are NAME-TAG on the socket {TMUX_SOCKET} (default: this pid)")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("metrics", parents=[common], help="/metrics with prometheus_client, the JSON API")
    m.add_argument("--api-doc", default=os.path.join(ROOT, "docs", "api.md"), help="docs/api.md (its metrics table)")
    m.add_argument("--run-timeout", type=float, default=90, help="seconds from the start until the run must end")
    sub.add_parser("tui", parents=[common], help="run --tui in tmux (sessions tui-TAG)")
    sub.add_parser("attach", parents=[common], help="top --attach over two runs, in tmux (session top-TAG)")
    args = p.parse_args()
    args.fleetsim = os.path.abspath(args.fleetsim)
    os.makedirs(args.tmp, exist_ok=True)
    # `timeout` (interop.sh) ends this script with SIGTERM: leave through the finally blocks,
    # which stop the fleets and tmux sessions started here. It sends SIGTERM twice (to the
    # script, then to its process group): the second must not cut the finally blocks short.
    def on_term(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    r = {"metrics": cmd_metrics, "tui": cmd_tui, "attach": cmd_attach}[args.cmd](args)
    note(f"{args.cmd}: {r.passed} passed, {r.failed} failed in {time.monotonic() - t0:.0f} s")
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
