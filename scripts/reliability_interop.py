#!/usr/bin/env python3
"""Interop checks of fleetsim's reliability against a real mosquitto (Debian's, /usr/sbin) and a
real subscriber (paho-mqtt 2.x): faults survived and every message accounted for. Used by
scripts/interop.sh (test I).

Every check prints one line:
  PASS  I  <check>: <detail>
  FAIL  I  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

The fleets are made of device-profiles/reliable-sensor.toml (1 msg/s, QoS 1, clean_session =
false, keep-alive 2 s, offline buffer 600, reconnect backoff 0.5 s doubling to 4 s with jitter
0.5) in two cohorts, "north" and "south". Each subcommand starts its own mosquitto (a fresh
config and port on 127.0.0.1, persistence where said), its subscriber and its fleetsim, bounds
every wait, and ends all of it on the way out (SIGTERM from `timeout` included):

  restart    200 devices for 30 s; mosquitto with persistence is stopped with SIGTERM at ~10 s
             and started again on the same port 3 s later. A paho subscriber with a persistent
             session (fixed client id, QoS 1, reconnecting) sees every device's seqs 1..max
             without a gap, as many distinct (device, seq) as the report's acked; the report
             shows nothing failed, unaccounted 0, sessions lost for every device, the storm
             (attempts, connect latency).
  halfopen   100 devices for 24 s; mosquitto is frozen (SIGSTOP) for 3 x keep-alive (6 s), then
             thawed: every device's keep-alive notices (event log), every device is back online
             at the end, nothing lost (report and subscriber).
  events     scenarios/reliability.toml as shipped (200 devices, 40 s): a partition of half the
             fleet at 8 s for 6 s, a latency spike of 1 s on every device at 22 s for 8 s and,
             within it, an outage of half of cohort "south" at 25 s for 4 s. Arrival - ts of the
             messages due in the spike is >= 1 s (median; devices out of the outage); sessions
             lost by the partition are 30-70 % of the fleet, each one a partitioned device that
             timed out its keep-alive; the outage hits 30-70 % of "south"; nothing lost (report
             and subscriber: what waited out the spike when the link went must arrive too).
  api        100 devices with --api-listen: POST /api/v1/faults partition, latency_spike and
             outage (one after the other) are accepted (2xx with a message), the snapshot's
             sessions_lost grows after the partition, the subscriber sees the spike, devices go
             offline after the outage; {"kind":"partition"} without a duration and a
             latency_spike without a delay are 400s naming the field; nothing lost.
  signals    500 devices for 10 minutes against mosquitto with `log_type all`; once all are
             online, SIGINT (then, in a second run, SIGTERM): fleetsim exits within 5 s with
             its report written (run.interrupted), mosquitto logs a DISCONNECT ("Client <id>
             disconnected.") of every device and no will goes out (exactly one online:false
             status per device, the device's own).
  reject     20 devices over MQTT 5, mosquitto with an acl_file that lets "south" publish its
             status but not its telemetry: the PUBACKs carry reason code 0x87 (not
             authorized), the report counts exactly south's messages as broker_rejected, north
             loses nothing.
  preflight  more devices than the open-file hard limit allows, against an external broker:
             fleetsim refuses before it starts (non-zero exit, a message naming --devices and
             more processes), and nothing connects to the broker.
"""

import argparse
import json
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from interop_common import Results

try:
    import paho.mqtt.client as mqtt
except ImportError:  # reported as a failure of the check that needs it
    mqtt = None

TEST = "I"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.path.join(ROOT, "device-profiles", "reliable-sensor.toml")
SHIPPED_SCENARIO = os.path.join(ROOT, "scenarios", "reliability.toml")
TELEMETRY = "fleetsim/reliable-sensor/+/+/telemetry"
STATUS = "fleetsim/reliable-sensor/+/+/status"
API_LINE = re.compile(r"control API on (http://127\.0\.0\.1:\d+)")
KEEP_ALIVE_S = 2.0  # the profile's mqtt.keep_alive

STARTED = []  # processes to end on the way out (brokers, fleets)


def note(text):
    print(f"   {text}", flush=True)


def indent(text, n=15):
    lines = text.rstrip("\n").splitlines()[-n:]
    return "\n".join("   | " + line.rstrip() for line in lines)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(fn, timeout, step=0.1):
    """fn() until truthy (returned) or `timeout` s pass (the last value); errors count as falsy."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except (OSError, ValueError, RuntimeError, KeyError):
            last = None
        if last or time.monotonic() >= deadline:
            return last
        time.sleep(step)


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def get(d, dotted, default=None):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


# --------------------------------------------------------------------------- mosquitto ----

class Broker:
    """A mosquitto on 127.0.0.1 with its own config; can be stopped, frozen and started again
    on the same port. Its log (stdout) goes to NAME-mosquitto-N.log, one file per start."""

    def __init__(self, tmp, name, extra="", log_all=False):
        self.tmp = tmp
        self.name = name
        self.port = free_port()
        self.conf = os.path.join(tmp, f"{name}-mosquitto.conf")
        self.starts = 0
        self.proc = None
        self.logs = []
        types = ["all"] if log_all else ["error", "warning", "notice", "information"]
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\n"
                    "allow_anonymous true\n"
                    "max_connections -1\n"
                    # Persistent sessions queue for their subscriber while it is away: keep all.
                    "max_queued_messages 0\n"
                    "log_dest stdout\n"
                    # Started as root, mosquitto drops to the user "mosquitto", which cannot
                    # reach a private temp folder (its acl_file, its database): `user root`
                    # keeps it as it is (the option does nothing when not started as root).
                    + ("user root\n" if os.geteuid() == 0 else "")
                    + "".join(f"log_type {t}\n" for t in types)
                    + "connection_messages true\n"
                    + extra)

    def start(self, timeout=15):
        self.starts += 1
        log = os.path.join(self.tmp, f"{self.name}-mosquitto-{self.starts}.log")
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        STARTED.append(self.proc)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError("exited")
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True

        if not wait_until(up, timeout):
            raise RuntimeError(f"mosquitto ({self.conf}) does not accept connections on port {self.port} "
                               f"after {timeout} s (exit {self.proc.poll()}):\n{indent(read(log))}")
        note(f"{self.name}: mosquitto pid {self.proc.pid} on 127.0.0.1:{self.port} (start {self.starts})")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Ends it (SIGTERM: mosquitto saves its database, logs, flushes); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)  # a frozen broker cannot end
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return rc

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)

    def log(self):
        return "".join(read(p) for p in self.logs)

    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"


# -------------------------------------------------------------------------- subscriber ----

class Subscriber:
    """A paho-mqtt client subscribed at QoS 1, recording (arrival, topic, payload, retain).
    persistent: clean_session false with a fixed client id (the broker keeps its subscription
    and queues for it while it is away); it reconnects on its own."""

    def __init__(self, broker, name, topics, persistent=False, username=None):
        if mqtt is None:
            raise RuntimeError("paho-mqtt is not installed")
        self.broker = broker
        self.name = name
        self.marker = f"interop/I/{name}"
        self.topics = list(topics) + [f"{self.marker}/#"]
        self.msgs = []
        self.connects = 0
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"interop-I-{name}-{os.getpid()}",
                             clean_session=not persistent, protocol=mqtt.MQTTv311)
        if username:
            self.c.username_pw_set(username)
        self.c.max_inflight_messages_set(100)
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(min_delay=1, max_delay=2)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect_async("127.0.0.1", broker.port, keepalive=60)
        self.c.loop_start()
        if not self.subscribed.wait(15):
            self.close()
            raise RuntimeError(f"subscriber {name} not subscribed within 15 s")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        self.connects += 1
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        now = time.time()
        with self.lock:
            self.msgs.append((now, msg.topic, msg.payload, msg.retain))

    def drain(self, timeout=30):
        """Waits until everything queued for it has arrived: a marker published now (QoS 1,
        same session, in order behind the rest) comes back. True when it did."""
        token = f"{time.time():.6f}"
        topic = f"{self.marker}/done"

        def seen():
            with self.lock:
                return any(t == topic and p == token.encode() for _, t, p, _ in self.msgs[-2000:])

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.c.publish(topic, token, qos=1)
            if wait_until(seen, 2):
                return True
        return False

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()

    def telemetry(self):
        """[(arrival, device_id, seq, ts_ms, topic)] of well-formed telemetry messages."""
        out = []
        with self.lock:
            msgs = list(self.msgs)
        for at, topic, payload, retain in msgs:
            if not topic.endswith("/telemetry"):
                continue
            try:
                j = json.loads(payload)
                out.append((at, j["device_id"], int(j["seq"]), int(j["ts"]), topic))
            except (ValueError, KeyError, TypeError):
                out.append((at, None, None, None, topic))
        return out

    def statuses(self):
        """[(device_id, online, ts)] of live (not retained) status messages."""
        out = []
        with self.lock:
            msgs = list(self.msgs)
        for _, topic, payload, retain in msgs:
            if topic.endswith("/status") and not retain:
                try:
                    j = json.loads(payload)
                    out.append((j["device_id"], bool(j["online"]), j.get("ts")))
                except (ValueError, KeyError, TypeError):
                    out.append((None, None, None))
        return out


def continuity(tel):
    """Per-device seq audit of subscriber telemetry: a dict with devices, distinct, duplicates,
    malformed, gaps {device: [missing seqs]}, sum_max (sum of each device's highest seq)."""
    seqs = {}
    total = 0
    malformed = 0
    for _, dev, seq, _, _ in tel:
        if dev is None:
            malformed += 1
            continue
        total += 1
        seqs.setdefault(dev, set()).add(seq)
    gaps = {}
    for dev, s in seqs.items():
        missing = sorted(set(range(1, max(s) + 1)) - s)
        if missing or min(s) < 1:
            gaps[dev] = missing
    distinct = sum(len(s) for s in seqs.values())
    return {"devices": len(seqs), "distinct": distinct, "duplicates": total - distinct,
            "malformed": malformed, "gaps": gaps, "sum_max": sum(max(s) for s in seqs.values()),
            "seqs": seqs}


def show_gaps(gaps, limit=6):
    items = sorted(gaps.items())[:limit]
    text = "; ".join(f"{d} missing {m[:10]}{'...' if len(m) > 10 else ''}" for d, m in items)
    return text + (f"; ... ({len(gaps)} devices)" if len(gaps) > limit else "")


# ------------------------------------------------------------------------------ fleetsim ----

class Fleet:
    """A fleetsim run (`run SCENARIO --headless --report --event-log [--api-listen]`)."""

    def __init__(self, args, name, scenario, broker, extra=(), api=True):
        self.name = name
        self.report = os.path.join(args.tmp, f"I-{name}.json")
        self.events = os.path.join(args.tmp, f"I-{name}-events.log")
        self.out = os.path.join(args.tmp, f"I-{name}.out")
        self.err = os.path.join(args.tmp, f"I-{name}.err")
        for p in (self.report, self.events):
            if os.path.exists(p):
                os.remove(p)
        self.argv = [args.fleetsim, "run", scenario, "--headless", "--broker", broker.url(),
                     "--report", self.report, "--event-log", self.events,
                     "--run-dir", os.path.join(args.tmp, f"I-{name}-run")]
        if api:
            self.argv += ["--api-listen", "127.0.0.1:0"]
        self.argv += list(extra)
        self.api = None
        self.rc = None
        note(f"{name}: {' '.join(shlex.quote(a) for a in self.argv)}")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=args.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        STARTED.append(self.proc)
        self.started_wall = time.time()
        self.started = time.monotonic()
        if api:
            m = wait_until(lambda: API_LINE.search(read(self.err)) or (self.proc.poll() is not None and "exit"), 20)
            if not m or m == "exit":
                raise RuntimeError(f"{name}: no control API address on stderr (exit {self.proc.poll()}):\n"
                                   f"{indent(read(self.err))}")
            self.api = m.group(1)

    def elapsed(self):
        return time.monotonic() - self.started

    def snapshot(self):
        with urllib.request.urlopen(f"{self.api}/api/v1/snapshot?histograms=false", timeout=5) as r:
            return json.loads(r.read())

    def wait_online(self, n, timeout):
        """Snapshot once `n` devices are online (None when not within `timeout` s)."""
        return wait_until(lambda: (lambda s: s if s["states"]["online"] >= n else None)(self.snapshot()), timeout, 0.2)

    def wait(self, timeout):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.rc = None
        return self.rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            if self.wait(10) is None:
                self.proc.kill()
                self.proc.wait()

    def load_report(self):
        try:
            with open(self.report) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def event_lines(self, kind=None):
        """[(device, t_us, kind, rest)] of the event log."""
        out = []
        for line in read(self.events).splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            try:
                dev, t = int(parts[0]), int(parts[1])
            except ValueError:
                continue
            if kind is None or parts[2] == kind:
                out.append((dev, t, parts[2], parts[3] if len(parts) > 3 else ""))
        return out

    def tail(self):
        return indent(read(self.out), 14) + "\n" + indent(read(self.err), 8)


def scenario_file(args, name, devices, duration, mqtt_version="v311", ramp=200.0, events="", drain="5s"):
    """A scenario of `devices` reliable sensors (half "north", half "south") in the temp folder."""
    north = devices // 2
    path = os.path.join(args.tmp, f"I-{name}.toml")
    with open(path, "w") as f:
        f.write(f'''name = "reliability-{name}"
seed = 7
duration = "{duration}"
clock = "wall"
drain = "{drain}"

[mqtt]
version = "{mqtt_version}"

[ramp]
mode = "rate"
per_second = {ramp}

[[cohorts]]
name = "north"
profile = "{PROFILE}"
count = {north}

[[cohorts]]
name = "south"
profile = "{PROFILE}"
count = {devices - north}
{events}''')
    return path


def end(fleet, sub, broker):
    """Ends what a check started: the fleet (if it got as far), the subscriber, the broker."""
    if fleet:
        fleet.kill()
    sub.close()
    broker.stop()


def report_loaded(r, fleet, label):
    rep = fleet.load_report()
    if rep is None:
        r.check(f"{label}: report", False, f"{fleet.report} missing or not JSON (exit {fleet.rc})\n{fleet.tail()}")
    return rep


def accounting_checks(r, label, rep, expect_no_failures=True):
    """unaccounted 0, devices_unaccounted 0, (and nothing failed, by reason)."""
    m = rep["messages"]
    acc = f"published {m['published']} = acked {m['acked']} + in flight {m['in_flight']} + buffered " \
          f"{m['buffered']} + failed {m['failed']}"
    r.check(f"{label}: unaccounted 0", m.get("unaccounted") == 0,
            f"unaccounted {m.get('unaccounted')} ({acc})")
    r.check(f"{label}: devices_unaccounted 0", m.get("devices_unaccounted") == 0,
            f"devices_unaccounted {m.get('devices_unaccounted')}")
    if expect_no_failures:
        by = m.get("failed_by_reason", {})
        bad = {k: v for k, v in by.items() if v}
        r.check(f"{label}: nothing failed (every failed_by_reason 0)", m["failed"] == 0 and not bad,
                f"failed {m['failed']}" + (f", by reason {bad}" if bad else f" ({len(by)} reasons all 0)"))


def subscriber_checks(r, label, sub, rep, devices):
    """The subscriber's seq continuity against the report."""
    tel = sub.telemetry()
    c = continuity(tel)
    m = rep["messages"]
    r.check(f"{label}: subscriber saw every device", c["devices"] == devices and c["malformed"] == 0,
            f"{c['devices']} of {devices} devices, {len(tel)} telemetry messages, {c['malformed']} malformed")
    r.check(f"{label}: seq continuity per device (1..max, no gap)", not c["gaps"],
            f"{c['distinct']} distinct (device, seq), {c['duplicates']} duplicates (QoS 1)"
            + (f"; GAPS: {show_gaps(c['gaps'])}" if c["gaps"] else ""))
    settled = m["in_flight"] == 0 and m["buffered"] == 0
    r.check(f"{label}: distinct (device, seq) received == report acked", c["distinct"] == m["acked"],
            f"received {c['distinct']}, acked {m['acked']}, published {m['published']}, sum of per-device max seq "
            f"{c['sum_max']}" + ("" if settled else f" (in flight {m['in_flight']}, buffered {m['buffered']} at the end)"))
    r.check(f"{label}: highest seqs add up to published", c["sum_max"] == m["published"],
            f"sum of per-device max seq {c['sum_max']}, published {m['published']}")
    return c


def missing_analysis(fleet, c, limit=5):
    """For a loss: what fleetsim's event log says of the missing seqs (published? acked?)."""
    if not c["gaps"]:
        return
    want = {}
    for dev, missing in sorted(c["gaps"].items())[:limit]:
        num = int(re.sub(r"\D", "", dev) or -1)
        want[num] = (dev, set(missing[:5]))
    lines = {}
    for d, t, kind, rest in fleet.event_lines():
        if d in want:
            lines.setdefault(d, []).append(f"{t / 1e6:9.3f} {kind} {rest[:110]}")
    for num, (dev, missing) in want.items():
        note(f"{dev}: missing seqs {sorted(missing)}; its event log around them:")
        for line in lines.get(num, []):
            if any(f"seq={s} " in line or line.endswith(f"seq={s}") or f'"seq":{s},' in line for s in missing) \
                    or "session" in line or "connect" in line:
                print(f"   |   {line}")


# ------------------------------------------------------------------------------ checks ----

def cmd_restart(args, r):
    devices, duration = 200, 30
    label = "restart"
    tmp = args.tmp
    pdir = os.path.join(tmp, "I-restart-db")
    os.makedirs(pdir, exist_ok=True)
    broker = Broker(tmp, "I-restart", extra=f"persistence true\npersistence_location {pdir}/\n"
                                              "autosave_interval 1\n")
    broker.start()
    sub = Subscriber(broker, "restart", [TELEMETRY], persistent=True)
    fleet = None
    try:
        scen = scenario_file(args, "restart", devices, f"{duration}s",
                             events='\n[[slo]]\nname = "no message lost"\nmetric = "messages.failed"\nmax = 0.0\n')
        fleet = Fleet(args, "restart", scen, broker)
        snap = fleet.wait_online(devices, 15)
        r.check(f"{label}: all {devices} devices online", snap is not None,
                f"at {fleet.elapsed():.1f} s" if snap else "not within 15 s")
        wait_until(lambda: fleet.elapsed() >= 10, 12)
        t_kill = fleet.elapsed()
        rc = broker.stop(signal.SIGTERM)
        note(f"{label}: mosquitto stopped with SIGTERM at {t_kill:.1f} s (exit {rc}); restarting in 3 s")
        time.sleep(3)
        broker.start()
        note(f"{label}: mosquitto started again at {fleet.elapsed():.1f} s on the same port")
        back = fleet.wait_online(devices, 20)
        r.check(f"{label}: every device back online after the restart", back is not None,
                f"{devices} online at {fleet.elapsed():.1f} s ({fleet.elapsed() - t_kill:.1f} s after the kill)"
                if back else "not within 20 s of the restart")
        rc = fleet.wait(duration + 40)
        r.check(f"{label}: fleetsim exit 0", rc == 0, f"exit {rc} after {fleet.elapsed():.1f} s"
                + ("" if rc == 0 else "\n" + fleet.tail()))
        drained = sub.drain()
        r.check(f"{label}: subscriber drained (its end marker came back)", drained,
                f"{len(sub.msgs)} messages, {sub.connects} connects" if drained else "no marker within 30 s")
    finally:
        end(fleet, sub, broker)
    rep = report_loaded(r, fleet, label)
    if rep is None:
        return
    m, cn = rep["messages"], rep["connections"]
    accounting_checks(r, label, rep)
    r.check(f"{label}: unacked_when_session_lost 0 (persistent sessions resend)",
            m["failed_by_reason"].get("unacked_when_session_lost") == 0,
            f"{m['failed_by_reason'].get('unacked_when_session_lost')}")
    r.check(f"{label}: nothing in flight or buffered at the end", m["in_flight"] == 0 and m["buffered"] == 0,
            f"in flight {m['in_flight']}, buffered {m['buffered']}, flushed from buffers {m.get('flushed_from_buffer')}")
    r.check(f"{label}: sessions_lost >= devices", cn["sessions_lost"] >= devices,
            f"sessions lost {cn['sessions_lost']} of {devices} devices")
    r.check(f"{label}: the reconnect storm (attempts > devices)", cn["attempts"] > devices,
            f"attempts {cn['attempts']}, succeeded {cn['succeeded']}, failed {cn['failed']}")
    lc = get(rep, "latency_us.connect", {})
    r.check(f"{label}: connect latency histogram has the reconnects", lc.get("count", 0) >= 2 * devices,
            f"latency_us.connect count {lc.get('count')} p50 {lc.get('p50')} us p99 {lc.get('p99')} us "
            f"max {lc.get('max')} us")
    blog = read(broker.logs[0]) if broker.logs else ""
    saved = re.findall(r"Saving in-memory database[^\n]*", blog)
    errors = re.findall(r"Error saving[^\n]*", blog)
    r.check(f"{label}: mosquitto saved its database (persistence)", saved and not errors,
            f"{len(saved)} saves, {len(errors)} errors" + (f": {errors[0]}" if errors else ""))
    c = subscriber_checks(r, label, sub, rep, devices)
    missing_analysis(fleet, c)


def cmd_halfopen(args, r):
    devices, duration, frozen = 100, 24, 3 * KEEP_ALIVE_S
    label = "halfopen"
    broker = Broker(args.tmp, "I-halfopen")
    broker.start()
    sub = Subscriber(broker, "halfopen", [TELEMETRY], persistent=True)
    fleet = None
    try:
        scen = scenario_file(args, "halfopen", devices, f"{duration}s")
        fleet = Fleet(args, "halfopen", scen, broker)
        r.check(f"{label}: all {devices} devices online", fleet.wait_online(devices, 15) is not None,
                f"at {fleet.elapsed():.1f} s")
        wait_until(lambda: fleet.elapsed() >= 6, 8)
        t0 = fleet.elapsed()
        broker.freeze()
        note(f"{label}: mosquitto frozen (SIGSTOP) at {t0:.1f} s for {frozen:.0f} s (3 x keep-alive)")
        lost = wait_until(lambda: (lambda s: s if s["totals"]["sessions_lost"] >= devices else None)(fleet.snapshot()),
                          frozen)
        t_lost = fleet.elapsed()
        time.sleep(max(0.0, t0 + frozen - fleet.elapsed()))
        broker.thaw()
        note(f"{label}: mosquitto thawed (SIGCONT) at {fleet.elapsed():.1f} s")
        r.check(f"{label}: keep-alive noticed the silent broker while frozen", lost is not None,
                f"sessions lost {lost['totals']['sessions_lost']} of {devices} by {t_lost - t0:.1f} s into the freeze "
                f"(snapshots come once a second; the event log has the exact times)" if lost else f"not every device within {frozen:.0f} s")
        back = fleet.wait_online(devices, 20)
        r.check(f"{label}: every device back online after the thaw", back is not None,
                f"{devices} online at {fleet.elapsed():.1f} s" if back else "not within 20 s")
        rc = fleet.wait(duration + 40)
        r.check(f"{label}: fleetsim exit 0", rc == 0, f"exit {rc}" + ("" if rc == 0 else "\n" + fleet.tail()))
        r.check(f"{label}: subscriber drained", sub.drain(), f"{len(sub.msgs)} messages")
    finally:
        end(fleet, sub, broker)
    rep = report_loaded(r, fleet, label)
    if rep is None:
        return
    # When each device noticed: from the last thing it heard (an ack) to its timeout.
    heard, waited = {}, []
    for d, t, kind, rest in fleet.event_lines():
        if kind == "ack":
            heard[d] = t
        elif kind == "session_error" and "keep-alive timeout" in rest and d in heard:
            waited.append((t - heard[d]) / 1e6)
    ka = {d for d, _, _, rest in fleet.event_lines("session_error") if "keep-alive timeout" in rest}
    r.check(f"{label}: event log: a keep-alive timeout for every device", len(ka) == devices,
            f"{len(ka)} devices with 'session_error reason=keep-alive timeout (broker silent)'"
            + (f"; last ack -> timeout {min(waited):.2f}-{max(waited):.2f} s (1.5 x keep-alive = "
               f"{1.5 * KEEP_ALIVE_S:.1f} s)" if waited else ""))
    cn = rep["connections"]
    r.check(f"{label}: sessions_lost >= devices", cn["sessions_lost"] >= devices,
            f"sessions lost {cn['sessions_lost']}, attempts {cn['attempts']} (failed {cn['failed']})")
    online = get(rep, "devices.by_state.online")
    r.check(f"{label}: all online at the end", online == devices,
            f"by_state.online {online}, peak {get(rep, 'devices.peak_online')}")
    accounting_checks(r, label, rep)
    c = subscriber_checks(r, label, sub, rep, devices)
    missing_analysis(fleet, c)


def cmd_events(args, r):
    """scenarios/reliability.toml as shipped: partition at 8 s for 6 s (half), spike at 22 s for 8 s."""
    label = "events"
    devices = 200
    spike_at, spike_for, delay_s = 22.0, 8.0, 1.0
    broker = Broker(args.tmp, "I-events")
    broker.start()
    sub = Subscriber(broker, "events", [TELEMETRY], persistent=True)
    fleet = None
    try:
        fleet = Fleet(args, "events", SHIPPED_SCENARIO, broker, api=False)
        rc = fleet.wait(120)
        r.check(f"{label}: fleetsim exit 0", rc == 0, f"exit {rc} after {fleet.elapsed():.1f} s"
                + ("" if rc == 0 else "\n" + fleet.tail()))
        r.check(f"{label}: subscriber drained", sub.drain(), f"{len(sub.msgs)} messages")
    finally:
        end(fleet, sub, broker)
    rep = report_loaded(r, fleet, label)
    if rep is None:
        return
    total = rep["devices"]["total"]
    r.check(f"{label}: the shipped scenario's fleet", total == devices, f"{total} devices (want {devices})")
    # The run's t=0 on the wall clock: a device's "report seq=N" line (scheduled time, run
    # clock) against the ts (epoch ms) of its telemetry with that seq.
    t0 = None
    reports = {}
    for d, t, kind, rest in fleet.event_lines():
        if kind == "report" and rest.startswith("seq="):
            reports.setdefault(d, {})[int(rest[4:].split()[0])] = t
        elif kind == "publish" and rest.startswith("telemetry") and t0 is None:
            mm = re.search(r'"seq":(\d+),"ts":(\d+)', rest)
            if mm and int(mm.group(1)) in reports.get(d, {}):
                t0 = int(mm.group(2)) / 1e3 - reports[d][int(mm.group(1))] / 1e6
    if t0 is None:
        t0 = fleet.started_wall
        note(f"{label}: run start from the process start (no report/publish pair in the event log)")
    parted = {d for d, _, _, _ in fleet.event_lines("partition")}
    spiked = {d for d, _, _, _ in fleet.event_lines("latency_spike")}
    outaged = {d for d, _, _, _ in fleet.event_lines("outage")}
    tel = sub.telemetry()
    lat = {"before": [], "spike": [], "after": []}
    for at, dev, seq, ts, _ in tel:
        if ts is None or int(re.sub(r"\D", "", dev) or -1) in outaged:
            continue
        rel = ts / 1e3 - t0
        if 15.0 <= rel < spike_at - 0.5:
            lat["before"].append(at - ts / 1e3)
        elif spike_at + 0.5 <= rel < spike_at + spike_for - 0.5:
            lat["spike"].append(at - ts / 1e3)
        elif spike_at + spike_for + 2.0 <= rel:
            lat["after"].append(at - ts / 1e3)
    med = {k: (statistics.median(v) if v else None) for k, v in lat.items()}
    fmt = lambda k: f"{med[k] * 1e3:.0f} ms (n={len(lat[k])})" if med[k] is not None else "no messages"
    r.check(f"{label}: latency spike: median arrival - ts >= {delay_s:.0f} s for messages due in it",
            med["spike"] is not None and med["spike"] >= delay_s,
            f"spike {fmt('spike')}; before {fmt('before')}; after {fmt('after')}")
    r.check(f"{label}: latency back to normal after the spike",
            med["after"] is not None and med["after"] < 0.5, f"after {fmt('after')}")
    ka = {d for d, _, _, rest in fleet.event_lines("session_error") if "keep-alive timeout" in rest}
    lost = rep["connections"]["sessions_lost"]
    r.check(f"{label}: partition hit 30-70 % of the fleet", 0.3 * total <= len(parted) <= 0.7 * total,
            f"{len(parted)} of {total} devices have a 'partition' line; latency_spike lines: {len(spiked)} devices")
    r.check(f"{label}: sessions lost by the partition: 30-70 % of the fleet", 0.3 * total <= lost <= 0.7 * total,
            f"sessions_lost {lost} of {total}")
    r.check(f"{label}: keep-alive timeouts only on partitioned devices, on all of them", ka == parted,
            f"{len(ka)} devices timed out, {len(ka - parted)} of them not partitioned, "
            f"{len(parted - ka)} partitioned ones did not")
    south = total // 2
    r.check(f"{label}: outage hit 30-70 % of cohort south, only south",
            0.3 * south <= len(outaged) <= 0.7 * south and all(d >= total - south for d in outaged),
            f"{len(outaged)} of {south} south devices have an 'outage' line")
    kinds = [e["message"] for e in rep.get("events", []) if e["kind"] == "fault"]
    r.check(f"{label}: the report's events list all three", len(kinds) == 3 and any("partition" in k for k in kinds)
            and any("latency" in k for k in kinds) and any("outage" in k for k in kinds),
            "; ".join(kinds) or "no fault events")
    accounting_checks(r, label, rep)
    c = subscriber_checks(r, label, sub, rep, total)
    missing_analysis(fleet, c)


def http(method, url, body=None, timeout=5):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data if data is not None else (b"" if method == "POST" else None),
                                 method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def cmd_api(args, r):
    label = "api"
    devices, duration = 100, 30
    broker = Broker(args.tmp, "I-api")
    broker.start()
    sub = Subscriber(broker, "api", [TELEMETRY], persistent=True)
    fleet = None
    try:
        scen = scenario_file(args, "api", devices, f"{duration}s")
        fleet = Fleet(args, "api", scen, broker)
        faults = f"{fleet.api}/api/v1/faults"
        r.check(f"{label}: all {devices} devices online", fleet.wait_online(devices, 15) is not None,
                f"at {fleet.elapsed():.1f} s")
        before = fleet.snapshot()["totals"]["sessions_lost"]

        def post(body):
            st, text = http("POST", faults, json.dumps(body))
            try:
                msg = json.loads(text).get("message")
            except (ValueError, AttributeError):
                msg = None
            ok = st in (200, 202) and bool(msg)
            r.check(f"{label}: POST {body['kind']} accepted with a description", ok, f"{st} {text[:160]}")
            return ok

        st, text = http("POST", faults, json.dumps({"kind": "partition"}))
        try:
            err = json.loads(text)["error"]
            names = "duration" in json.dumps(err)
        except (ValueError, KeyError, TypeError):
            names = False
        r.check(f"{label}: partition without duration -> 400 naming duration", st == 400 and names,
                f"{st} {text[:200]}")
        st, text = http("POST", faults, json.dumps({"kind": "latency_spike", "duration": "5s"}))
        r.check(f"{label}: latency_spike without delay -> 400 naming delay", st == 400 and "delay" in text,
                f"{st} {text[:200]}")
        t_part = fleet.elapsed()
        if post({"kind": "partition", "fraction": 0.5, "duration": "6s"}):
            snap = wait_until(lambda: (lambda s: s if s["totals"]["sessions_lost"] >= before + 0.3 * devices
                                       else None)(fleet.snapshot()), 8, 0.2)
            got = fleet.snapshot()["totals"]["sessions_lost"]
            r.check(f"{label}: snapshot: sessions_lost grows after the partition (30-70 % of the fleet)",
                    snap is not None and got - before <= 0.7 * devices,
                    f"sessions_lost {before} -> {got} within {fleet.elapsed() - t_part:.1f} s")
        # After the partition heals and the fleet is back: a latency spike of 1 s.
        fleet.wait_online(devices, 15)
        t_spike = time.time()
        if post({"kind": "latency_spike", "delay": "1s", "duration": "5s"}):
            time.sleep(5)
            cut = time.time()
            lat = [at - ts / 1e3 for at, _, _, ts, _ in sub.telemetry()
                   if ts is not None and t_spike + 0.5 <= ts / 1e3 <= cut - 1.0]
            med = statistics.median(lat) if lat else None
            r.check(f"{label}: subscriber sees the spike: median arrival - ts >= 1 s",
                    med is not None and med >= 1.0,
                    f"median {med * 1e3:.0f} ms over {len(lat)} messages" if lat else "no messages due in it")
        time.sleep(1.5)  # the spike's last delayed messages are out (an outage in a spike: `events`)
        fleet.wait_online(devices, 10)
        if post({"kind": "outage", "fraction": 0.3, "duration": "4s"}):
            off = wait_until(lambda: (lambda s: s if s["states"]["online"] <= 0.85 * devices else None)(fleet.snapshot()), 3)
            r.check(f"{label}: snapshot: devices offline after the outage", off is not None,
                    f"online {off['states']['online']} of {devices}" if off else "no drop in online within 3 s")
        rc = fleet.wait(duration + 40)
        r.check(f"{label}: fleetsim ended", rc in (0, 1), f"exit {rc}" + ("" if rc in (0, 1) else "\n" + fleet.tail()))
        r.check(f"{label}: subscriber drained", sub.drain(), f"{len(sub.msgs)} messages")
    finally:
        end(fleet, sub, broker)
    rep = report_loaded(r, fleet, label)
    if rep is None:
        return
    ctrl = [e["message"] for e in rep.get("events", []) if e["kind"] == "control"]
    r.check(f"{label}: the report lists the three faults as control events", len(ctrl) == 3, "; ".join(ctrl))
    accounting_checks(r, label, rep)
    c = subscriber_checks(r, label, sub, rep, devices)
    missing_analysis(fleet, c)


def cmd_signals(args, r):
    for sig in (signal.SIGINT, signal.SIGTERM):
        one_signal(args, r, sig)


def one_signal(args, r, sig):
    name = signal.Signals(sig).name
    label = name
    devices = 500
    broker = Broker(args.tmp, f"I-{name}", log_all=True)
    broker.start()
    sub = Subscriber(broker, name, [STATUS])
    fleet = None
    took = None
    try:
        scen = scenario_file(args, name, devices, "10m", ramp=1000.0)
        fleet = Fleet(args, name, scen, broker)
        snap = fleet.wait_online(devices, 30)
        r.check(f"{label}: all {devices} devices online", snap is not None,
                f"at {fleet.elapsed():.1f} s" if snap else "not within 30 s")
        time.sleep(1.5)  # every device's online status is out and a report or two made
        t = time.monotonic()
        fleet.proc.send_signal(sig)
        while time.monotonic() - t < 30 and not (fleet.proc.poll() is not None and os.path.exists(fleet.report)):
            time.sleep(0.02)
        took = time.monotonic() - t
        fleet.rc = fleet.proc.poll()
        r.check(f"{label}: exits within 5 s with the report written", took <= 5.0 and fleet.rc is not None
                and os.path.exists(fleet.report),
                f"{took:.2f} s from {name} to exit (code {fleet.rc}) and report present")
        r.check(f"{label}: exit code an SLO verdict", fleet.rc in (0, 1), f"exit {fleet.rc}"
                + ("" if fleet.rc in (0, 1) else "\n" + fleet.tail()))
        sub.drain()
    finally:
        end(fleet, sub, broker)
    rep = report_loaded(r, fleet, label)
    if rep is not None:
        r.check(f"{label}: report run.interrupted", get(rep, "run.interrupted") is True,
                f"run.interrupted = {get(rep, 'run.interrupted')}, elapsed {get(rep, 'run.elapsed_s')}")
        accounting_checks(r, label, rep, expect_no_failures=False)
    blog = broker.log()
    # mosquitto 2.0 logs "Client <id> disconnected." only for a DISCONNECT it read; a session
    # that ended otherwise gets "closed its connection", "Socket error on client", "has exceeded
    # timeout", "disconnected due to ...", "disconnected: <errno>" or "Bad socket read/write".
    clean = set(re.findall(r"Client (rel-\d+) disconnected\.$", blog, re.M))
    unclean = [l for l in blog.splitlines() if re.search(r"\brel-\d+", l)
               and re.search(r"closed its connection|Socket error|exceeded timeout|disconnected due to"
                             r"|disconnected:|disconnected, not|Bad socket", l)]
    r.check(f"{label}: mosquitto logs a clean DISCONNECT of every device", len(clean) == devices and not unclean,
            f"'Client <id> disconnected.' for {len(clean)} of {devices}; other endings: {len(unclean)}"
            + (f": {[l.split(': ', 1)[-1] for l in unclean[:3]]}" if unclean else ""))
    st = sub.statuses()
    offline = {}
    for dev, online, _ in st:
        if online is False:
            offline[dev] = offline.get(dev, 0) + 1
    twice = sorted(d for d, n in offline.items() if n > 1)
    r.check(f"{label}: no will published (one online:false per device, the device's own)",
            len(offline) == devices and not twice,
            f"{len(offline)} devices said online:false, {len(twice)} of them twice (a will){': ' if twice else ''}"
            + ", ".join(twice[:5]))
    if rep is not None and rep["messages"]["failed"]:
        # What the stop did to messages in flight: counted failed, though the broker may have
        # PUBACKed them (fleetsim does not wait for acks when interrupted).
        pubacks = len(re.findall(r"Sending PUBACK to rel-\d+", blog))
        note(f"{label}: failed at the stop: {dict((k, v) for k, v in rep['messages']['failed_by_reason'].items() if v)}"
             f"; report acked {rep['messages']['acked']} (+ statuses), mosquitto sent {pubacks} PUBACKs to devices")


def cmd_reject(args, r):
    label = "reject"
    devices, duration = 20, 8
    acl = os.path.join(args.tmp, "I-reject.acl")
    with open(acl, "w") as f:
        # Anonymous clients (the devices): north may publish anything of its own, south only its
        # status (and read its command topic). The observer (a username, no password file)
        # reads everything and writes its markers.
        f.write("topic readwrite fleetsim/reliable-sensor/north/#\n"
                "topic readwrite fleetsim/reliable-sensor/south/+/status\n"
                "topic read fleetsim/reliable-sensor/south/+/cmd\n"
                "\nuser observer\ntopic read #\ntopic readwrite interop/#\n")
    broker = Broker(args.tmp, "I-reject", extra=f"acl_file {acl}\n", log_all=True)
    broker.start()
    sub = Subscriber(broker, "reject", [TELEMETRY], username="observer")
    fleet = None
    try:
        scen = scenario_file(args, "reject", devices, f"{duration}s", mqtt_version="v5")
        fleet = Fleet(args, "reject", scen, broker, api=False)
        rc = fleet.wait(duration + 40)
        r.check(f"{label}: fleetsim ended", rc in (0, 1), f"exit {rc}" + ("" if rc in (0, 1) else "\n" + fleet.tail()))
        sub.drain()
    finally:
        end(fleet, sub, broker)
    blog = broker.log()
    denied = re.findall(r"Denied PUBLISH from (rel-\d+)", blog)
    rc87 = re.findall(r"Sending PUBACK to (rel-\d+) \(m\d+, rc135\)", blog)
    p5 = set(re.findall(r"New client connected from \S+ as (rel-\d+) \(p5", blog))
    r.check(f"{label}: devices connected over MQTT 5", len(p5) == devices, f"{len(p5)} of {devices} with p5")
    r.check(f"{label}: mosquitto answers south's telemetry with PUBACK rc 0x87", len(rc87) > 0
            and len(rc87) == len(denied), f"{len(denied)} 'Denied PUBLISH', {len(rc87)} PUBACK rc135 "
                                          f"({len(set(rc87))} devices)")
    rep = report_loaded(r, fleet, label)
    if rep is None:
        return
    m = rep["messages"]
    tel = sub.telemetry()
    south_seen = [t for t in tel if "/south/" in t[4]]
    c = continuity([t for t in tel if "/north/" in t[4]])
    north_published = c["sum_max"]
    south_published = m["published"] - north_published
    rej = m["failed_by_reason"].get("broker_rejected")
    r.check(f"{label}: no south telemetry reached the subscriber", not south_seen, f"{len(south_seen)} arrived")
    r.check(f"{label}: north complete (seq 1..max per device)", c["devices"] == devices // 2 and not c["gaps"],
            f"{c['devices']} north devices, {c['distinct']} distinct, gaps: {show_gaps(c['gaps']) or 'none'}")
    r.check(f"{label}: broker_rejected == south's published", rej == south_published and rej > 0,
            f"broker_rejected {rej}, south published {south_published} (= published {m['published']} - north "
            f"{north_published}), PUBACKs rc135 {len(rc87)}")
    others = {k: v for k, v in m["failed_by_reason"].items() if v and k != "broker_rejected"}
    r.check(f"{label}: acked == north's messages, no other failure", m["acked"] == c["distinct"] and not others,
            f"acked {m['acked']}, north received {c['distinct']}, other failures {others or 'none'}")
    accounting_checks(r, label, rep, expect_no_failures=False)


def cmd_preflight(args, r):
    label = "preflight"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 5_000_000:
        r.check(f"{label}: open-file limit", False, f"hard limit {hard}: too high to exceed with a fleet")
        return
    devices = hard + 10_000
    broker = Broker(args.tmp, "I-preflight")
    broker.start()
    scen = scenario_file(args, "preflight", 10, "10s")
    report = os.path.join(args.tmp, "I-preflight.json")
    argv = [args.fleetsim, "run", scen, "--headless", "--broker", broker.url(), "--devices", str(devices),
            "--report", report]
    note(f"{label}: ulimit -Hn {hard}: {' '.join(shlex.quote(a) for a in argv)}")
    t = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=args.cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        rc, out = p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        rc, out = None, ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
    took = time.monotonic() - t
    time.sleep(0.3)
    broker.stop()
    r.check(f"{label}: refused (non-zero exit) before starting", rc not in (0, 1, None) and took < 10,
            f"exit {rc} after {took:.2f} s")
    msg = [l.strip() for l in out.splitlines() if "open files" in l or "fix:" in l]
    r.check(f"{label}: the message names fewer devices and more processes",
            "--devices" in out and "processes" in out, " / ".join(msg)[:400] or indent(out, 6))
    conns = re.findall(r"New client connected", broker.log())
    r.check(f"{label}: nothing connected to the broker", not conns, f"{len(conns)} connects in mosquitto's log")
    # fleetsim opens the report file before its pre-flight (an unwritable path fails first):
    # an empty file may be left, a run report may not.
    size = os.path.getsize(report) if os.path.exists(report) else None
    r.check(f"{label}: no run report (nothing ran)", not size,
            "none written" if size is None else f"{report}: {size} bytes")


COMMANDS = {"restart": cmd_restart, "halfopen": cmd_halfopen, "events": cmd_events, "api": cmd_api,
            "signals": cmd_signals, "reject": cmd_reject, "preflight": cmd_preflight}


def main(doc=__doc__, commands=None, test=TEST):
    """Runs the named checks of `commands` (this script's by default) and ends what they started;
    also the runner of scaleout_interop.py."""
    commands = commands or COMMANDS
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checks", nargs="+", choices=list(commands) + ["all"], help="which checks, in order")
    p.add_argument("--test", default=test, help=f"label printed on each line (default {test})")
    p.add_argument("--fleetsim", required=True, help="the fleetsim binary")
    p.add_argument("--tmp", required=True, help="a folder for configs, logs, reports")
    p.add_argument("--cwd", default=ROOT, help="fleetsim's working directory (default: the repository)")
    args = p.parse_args()
    args.fleetsim = os.path.abspath(args.fleetsim)
    os.makedirs(args.tmp, exist_ok=True)

    def on_term(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    r = Results(args.test)
    checks = list(commands) if "all" in args.checks else args.checks
    try:
        for name in checks:
            t0 = time.monotonic()
            try:
                commands[name](args, r)
            except Exception as e:  # a check that could not go on fails with its reason
                r.check(f"{name}: could not complete", False, f"{type(e).__name__}: {e}")
            note(f"{name}: took {time.monotonic() - t0:.0f} s")
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
                    proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
    note(f"{r.passed} passed, {r.failed} failed")
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
