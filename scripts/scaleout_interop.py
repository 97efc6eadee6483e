#!/usr/bin/env python3
"""Interop checks of fleetsim past one process against real mosquittos (Debian's) and real
subscribers (paho-mqtt 2.x). Used by scripts/interop.sh (test L).

Every check prints one line:
  PASS  L  <check>: <detail>
  FAIL  L  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

The fleets are device-profiles/reliable-sensor.toml devices (1 msg/s, QoS 1, an ideal link) in
two cohorts, "north" and "south" (the scenario maker of test I). Subcommands:

  processes  600 devices for 20 s as `--processes 3` against three mosquittos (`--broker` x 3)
             with the parent's `--api-listen`: child K is dealt broker K (each broker sees
             exactly the devices of one slice, a third of each cohort, by client id), the
             subscribers on the three brokers together see every device's seqs 1..max without
             a gap and as many distinct (device, seq) as the merged report's acked; the parent's
             /metrics (read mid-run) counts 600 devices online; the report has three parts,
             `ok`, unaccounted 0; the joined event log has lines of all 600 devices;
             `fleetsim report merge` of the results folder gives the report's counters and
             percentiles again.
  kill       600 devices for 25 s as `--processes 3` against one mosquitto; once all are
             online, child 1 is killed with SIGKILL: the parent says at once which devices it
             held, the others go on to the end (their devices publish until then; the killed
             slice's devices stop), exit code 3, the report names the slice missing with its
             ranges.
  sigterm    300 devices as `--processes 3` for 10 minutes; once all are online the parent gets
             SIGTERM: it exits within 10 s with the merged report (run.interrupted), every
             child disconnected every session cleanly (mosquitto: "Client <id> disconnected."
             for all 300).
  gateway    gateway mode: 1,000 children of a 1 Hz edge-gateway-child variant behind 10
             gateways for 20 s, as `--processes 3` (slices never cut a gateway: mosquitto sees
             exactly 10 client ids and no session taken over), every child's telemetry under its
             own topic with seqs 1..max and as many as acked; then Sparkplug-style topics in one
             process: DDATA per child, NBIRTH per gateway, DBIRTH per child.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import reliability_interop as rel
from reliability_interop import Broker, Subscriber, continuity, get, indent, note, read, wait_until

TEST = "L"
TELEMETRY = rel.TELEMETRY
API_LINE = re.compile(r"control API on (http://127\.0\.0\.1:\d+)")


class Parent:
    """`fleetsim run SCENARIO --processes N --headless --report --results --event-log ...`."""

    def __init__(self, args, name, scenario, brokers, processes, extra=(), api=False):
        self.name = name
        self.dir = os.path.join(args.tmp, f"L-{name}")
        os.makedirs(self.dir, exist_ok=True)
        self.report = os.path.join(self.dir, "report.json")
        self.events = os.path.join(self.dir, "events.log")
        self.results = os.path.join(self.dir, "results")
        self.run_dir = os.path.join(self.dir, "run")
        self.out = os.path.join(self.dir, "stdout")
        self.err = os.path.join(self.dir, "stderr")
        self.argv = [args.fleetsim, "run", scenario, "--headless", "--processes", str(processes),
                     "--report", self.report, "--event-log", self.events, "--results", self.results,
                     "--run-dir", self.run_dir]
        for b in brokers:
            self.argv += ["--broker", b.url()]
        if api:
            self.argv += ["--api-listen", "127.0.0.1:0"]
        self.argv += list(extra)
        note(f"{name}: {' '.join(self.argv)}")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=args.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        rel.STARTED.append(self.proc)
        self.started = time.monotonic()
        self.api = None
        self.rc = None
        if api:
            m = wait_until(lambda: API_LINE.search(read(self.err)) or (self.proc.poll() is not None and "exit"), 60)
            if not m or m == "exit":
                raise RuntimeError(f"{name}: no control API address on stderr (exit {self.proc.poll()}):\n"
                                   f"{indent(read(self.err))}")
            self.api = m.group(1)

    def elapsed(self):
        return time.monotonic() - self.started

    def child_pid(self, k, n):
        """The pid of the child with `--shard k/n`."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid and f"--shard {k}/{n} " in cmd:
                return int(entry)
        return None

    wait = rel.Fleet.wait

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            if self.wait(20) is None:
                self.proc.kill()
                self.proc.wait()

    def load(self, path=None):
        try:
            with open(path or self.report) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def tail(self):
        return indent(read(self.out), 14) + "\n" + indent(read(self.err), 10)


def end(parent, subs, brokers):
    """Ends what a check started: the fleet's parent (if it got as far), the subscribers, the
    brokers."""
    if parent:
        parent.stop()
    for sub in subs:
        if sub:
            sub.close()
    for b in brokers:
        b.stop()


def online_in(blog):
    """Client ids mosquitto logged as connected ("New client connected from ... as rel-00042")."""
    return set(re.findall(r"New client connected from \S+ as (rel-\d+)", blog))


def metrics_value(text, name, labels=""):
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def slice_of(count, first, k, n):
    return first + count * k // n, first + count * (k + 1) // n


def expected_slices(devices, n):
    """{k: set of device ids} of the two cohorts north (first half) and south."""
    north = devices // 2
    out = {}
    for k in range(n):
        a, b = slice_of(north, 0, k, n)
        c, d = slice_of(devices - north, north, k, n)
        out[k] = {f"rel-{i:05}" for i in list(range(a, b)) + list(range(c, d))}
    return out


def cmd_processes(args, r):
    label = "processes"
    devices, n = 600, 3
    brokers = [Broker(args.tmp, f"L-{label}-{k}") for k in range(n)]
    subs = []
    parent = None
    try:
        for b in brokers:
            b.start()
        subs = [Subscriber(b, f"{label}-{k}", [TELEMETRY]) for k, b in enumerate(brokers)]
        scen = rel.scenario_file(args, "L-processes", devices, "20s", ramp=300.0)
        parent = Parent(args, label, scen, brokers, n, api=True)

        def all_online():
            with urllib.request.urlopen(f"{parent.api}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            v = metrics_value(text, "fleetsim_devices", '{state="online"}')
            return text if v == devices else None

        text = wait_until(all_online, 40, 0.5)
        total = metrics_value(text or "", "fleetsim_devices_total")
        r.check(f"{label}: the parent's /metrics counts the whole fleet online", text is not None and total == devices,
                f"fleetsim_devices{{state=\"online\"}} {devices} of fleetsim_devices_total {total} at {parent.elapsed():.1f} s"
                if text else f"not {devices} online within 40 s")
        rc = parent.wait(90)
        r.check(f"{label}: exit 0 (SLOs met on the merged report)", rc == 0, f"exit {rc}" + ("" if rc == 0 else "\n" + parent.tail()))
        for s in subs:
            s.drain()
    finally:
        end(parent, subs, brokers)
    rep = parent.load() if parent else None
    if rep is None:
        r.check(f"{label}: report", False, f"missing (exit {parent.rc if parent else None})")
        return
    want = expected_slices(devices, n)
    for k, b in enumerate(brokers):
        seen = online_in(b.log())
        r.check(f"{label}: broker {k} served exactly the devices of slice {k}/{n}", seen == want[k],
                f"{len(seen)} client ids, {len(seen & want[k])} of the slice's {len(want[k])}, "
                f"{len(seen - want[k])} from other slices")
    tel = [t for s in subs for t in s.telemetry()]
    c = continuity(tel)
    m = rep["messages"]
    r.check(f"{label}: the subscribers together saw every device, seqs 1..max without a gap",
            c["devices"] == devices and not c["gaps"] and c["malformed"] == 0,
            f"{c['devices']} of {devices} devices, {c['distinct']} distinct (device, seq), gaps in {len(c['gaps'])}")
    r.check(f"{label}: distinct (device, seq) received == merged report acked", c["distinct"] == m["acked"],
            f"received {c['distinct']}, acked {m['acked']}, published {m['published']}")
    parts = rep.get("parts") or []
    r.check(f"{label}: report has three parts, all ok, devices add up",
            len(parts) == n and all(p.get("status") == "ok" for p in parts)
            and sum(p.get("devices", 0) for p in parts) == devices == get(rep, "devices.total"),
            f"{[(p.get('shard'), p.get('devices'), p.get('status')) for p in parts]}, devices.total {get(rep, 'devices.total')}")
    r.check(f"{label}: merged accounting: unaccounted 0, nothing failed",
            m.get("unaccounted") == 0 and m.get("devices_unaccounted") == 0 and m["failed"] == 0,
            f"unaccounted {m.get('unaccounted')}, devices_unaccounted {m.get('devices_unaccounted')}, failed {m['failed']}")
    ev_devices = {line.split(" ", 1)[0] for line in read(parent.events).splitlines() if line}
    parts_left = [f for f in os.listdir(parent.dir) if ".shard-" in f]
    r.check(f"{label}: one event log with every device's lines", len(ev_devices) == devices and not parts_left,
            f"{len(ev_devices)} devices in {parent.events}; part files left: {parts_left}")
    merged = os.path.join(parent.dir, "merged.json")
    p = subprocess.run([args.fleetsim, "report", "merge", parent.results, "--report", merged], cwd=args.cwd,
                       capture_output=True, text=True, timeout=60)
    again = parent.load(merged)
    same = again is not None and all(get(again, k) == get(rep, k) for k in (
        "messages.published", "messages.acked", "latency_us.publish_ack.p50", "latency_us.publish_ack.p99",
        "latency_us.publish_ack.max", "latency_us.connect.p99", "devices.total", "ok"))
    r.check(f"{label}: `fleetsim report merge` of the results gives the same report", p.returncode == 0 and same,
            f"exit {p.returncode}; publish->ack p99 {get(again or {}, 'latency_us.publish_ack.p99')} vs "
            f"{get(rep, 'latency_us.publish_ack.p99')}" + ("" if p.returncode == 0 else f"\n{indent(p.stdout + p.stderr)}"))


def cmd_kill(args, r):
    label = "kill"
    devices, n = 600, 3
    broker = Broker(args.tmp, f"L-{label}")
    sub = None
    parent = None
    killed_at = None
    try:
        broker.start()
        sub = Subscriber(broker, label, [TELEMETRY])
        scen = rel.scenario_file(args, "L-kill", devices, "25s", ramp=600.0)
        parent = Parent(args, label, scen, [broker], n, api=True)

        def online():
            with urllib.request.urlopen(f"{parent.api}/api/v1/snapshot?histograms=false", timeout=5) as resp:
                return json.loads(resp.read())["states"]["online"] >= devices

        ok = wait_until(online, 40, 0.3)
        r.check(f"{label}: all {devices} devices online", bool(ok), f"at {parent.elapsed():.1f} s")
        time.sleep(2)
        pid = parent.child_pid(1, n)
        if pid is None:
            r.check(f"{label}: the child of shard 1/{n}", False, "not found under the parent")
            return
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        said = wait_until(lambda: re.search(r"ERROR.*shard 1/3 \(([^)]*)\) was killed by signal 9", read(parent.err)), 5)
        r.check(f"{label}: the parent says at once which devices died", bool(said),
                f"'{said.group(0)[said.group(0).find('shard'):][:140]}...'" if said else f"nothing within 5 s\n{parent.tail()}")
        rc = parent.wait(90)
        r.check(f"{label}: exit 3 (not carried out: a slice is missing)", rc == 3, f"exit {rc}\n{indent(read(parent.out), 4)}")
        sub.drain()
    finally:
        end(parent, [sub], [broker])
    rep = parent.load() if parent else None
    if rep is None:
        r.check(f"{label}: report", False, "missing")
        return
    parts = rep.get("parts") or []
    lost = parts[1] if len(parts) == n else {}
    want = expected_slices(devices, n)
    r.check(f"{label}: the report names slice 1/3 missing, with its ranges",
            lost.get("shard") == "1/3" and str(lost.get("status", "")).startswith("missing")
            and "signal 9" in str(lost.get("status")) and lost.get("devices") == len(want[1])
            and rep.get("ok") is False,
            f"{lost}, ok {rep.get('ok')}")
    # After the kill, the dead slice's devices are silent; the others publish to the end.
    late = {dev for at, dev, _, _, _ in sub.telemetry() if dev and killed_at and at > killed_at + 1.0}
    r.check(f"{label}: the killed slice's devices stopped, the others went on",
            not (late & want[1]) and (want[0] | want[2]) <= late,
            f"after the kill: {len(late & want[1])} devices of slice 1 published, "
            f"{len(late & (want[0] | want[2]))} of the {len(want[0] | want[2])} others did")


def cmd_sigterm(args, r):
    label = "sigterm"
    devices, n = 300, 3
    broker = Broker(args.tmp, f"L-{label}", log_all=True)
    parent = None
    took = None
    try:
        broker.start()
        scen = rel.scenario_file(args, "L-sigterm", devices, "10m", ramp=600.0)
        parent = Parent(args, label, scen, [broker], n, api=True)

        def online():
            with urllib.request.urlopen(f"{parent.api}/api/v1/snapshot?histograms=false", timeout=5) as resp:
                return json.loads(resp.read())["states"]["online"] >= devices

        ok = wait_until(online, 40, 0.3)
        r.check(f"{label}: all {devices} devices online", bool(ok), f"at {parent.elapsed():.1f} s")
        time.sleep(1.5)
        t = time.monotonic()
        parent.proc.send_signal(signal.SIGTERM)
        rc = parent.wait(30)
        took = time.monotonic() - t
        r.check(f"{label}: the parent exits within 10 s with the merged report", rc in (0, 1) and took <= 10
                and os.path.exists(parent.report), f"exit {rc} after {took:.2f} s" + ("" if rc in (0, 1) else "\n" + parent.tail()))
    finally:
        end(parent, [], [broker])
    rep = parent.load() if parent else None
    r.check(f"{label}: report run.interrupted, three parts", rep is not None and get(rep, "run.interrupted") is True
            and len(rep.get("parts") or []) == n,
            f"run.interrupted {get(rep or {}, 'run.interrupted')}, parts {len((rep or {}).get('parts') or [])}")
    clean = set(re.findall(r"Client (rel-\d+) disconnected\.$", broker.log(), re.M))
    r.check(f"{label}: every child disconnected every session cleanly", len(clean) == devices,
            f"'Client <id> disconnected.' for {len(clean)} of {devices}")


def gateway_files(args, topics):
    """A 1 Hz variant of the shipped edge-gateway-child profile (100 children per gateway, the
    given topic style) and a scenario of 1,000 of them (10 gateways) for 20 s."""
    with open(os.path.join(rel.ROOT, "device-profiles", "edge-gateway-child.toml")) as f:
        text = f.read()
    text = re.sub(r'(?m)^interval = .*$', 'interval = "1s"', text, count=1)
    text = re.sub(r'(?m)^jitter = .*$', 'jitter = 0.0', text, count=1)
    text = re.sub(r'(?m)^children = .*$', 'children = 100', text, count=1)
    text = re.sub(r'(?m)^topics = .*$', f'topics = "{topics}"', text, count=1)
    text = text.replace('"../firmware-models/', f'"{rel.ROOT}/firmware-models/')
    profile = os.path.join(args.tmp, f"L-gw-{topics}.toml")
    with open(profile, "w") as f:
        f.write(text)
    scen = os.path.join(args.tmp, f"L-gw-{topics}-scenario.toml")
    with open(scen, "w") as f:
        f.write(f'name = "gateway-{topics}"\nseed = 3\nduration = "20s"\nclock = "wall"\ndrain = "3s"\n\n'
                f'[ramp]\nmode = "rate"\nper_second = 500.0\n\n'
                f'[[cohorts]]\nname = "edge"\nprofile = "{profile}"\ncount = 1000\n')
    return scen


def cmd_gateway(args, r):
    """Gateway mode against mosquitto, cut into 3 processes: 1,000 children behind 10 gateways
    (sessions), plain topics; then Sparkplug-style topics in one process."""
    for topics, processes in (("plain", 3), ("sparkplug", 1)):
        label = f"gateway-{topics}"
        devices, gateways = 1000, 10
        broker = Broker(args.tmp, f"L-{label}")
        sub = None
        parent = None
        try:
            broker.start()
            sub_topics = ["+/+/telemetry"] if topics == "plain" else ["spBv1.0/#"]
            sub = Subscriber(broker, label, sub_topics)
            scen = gateway_files(args, topics)
            parent = Parent(args, label, scen, [broker], processes)
            rc = parent.wait(90)
            r.check(f"{label}: exit 0", rc == 0, f"exit {rc}" + ("" if rc == 0 else "\n" + parent.tail()))
            sub.drain()
        finally:
            end(parent, [sub], [broker])
        rep = parent.load() if parent else None
        if rep is None:
            r.check(f"{label}: report", False, "missing")
            continue
        blog = broker.log()
        clients = {c for c in re.findall(r"New client connected from \S+ as (\S+) ", blog)
                   if not c.startswith("interop-")}  # the subscriber
        taken = re.findall(r"Client (\S+) already connected, closing old connection", blog)
        r.check(f"{label}: mosquitto saw {gateways} gateway sessions for {devices} devices, none taken over",
                len(clients) == gateways and all(c.startswith("edge-gw-") for c in clients) and not taken,
                f"client ids {sorted(clients)[:3]}... ({len(clients)}); taken over: {taken[:3]}")
        with sub.lock:
            msgs = list(sub.msgs)
        seqs = {}
        kinds = {}
        for _, topic, payload, _ in msgs:
            parts = topic.split("/")
            if topics == "sparkplug":
                if len(parts) < 4 or parts[0] != "spBv1.0":
                    continue
                kinds[parts[2]] = kinds.get(parts[2], 0) + 1
                if parts[2] != "DDATA":
                    continue
            try:
                j = json.loads(payload)
                seqs.setdefault(j["device_id"], set()).add(int(j["seq"]))
            except (ValueError, KeyError, TypeError):
                continue
        gaps = [d for d, ss in seqs.items() if ss != set(range(1, max(ss) + 1))]
        distinct = sum(len(ss) for ss in seqs.values())
        m = rep["messages"]
        r.check(f"{label}: every child's telemetry arrived under its own topic, seqs 1..max",
                len(seqs) == devices and not gaps and distinct == m["acked"] and m.get("unaccounted") == 0,
                f"{len(seqs)} of {devices} children, {distinct} distinct (device, seq) vs acked {m['acked']}, "
                f"gaps in {len(gaps)}, unaccounted {m.get('unaccounted')}")
        if topics == "sparkplug":
            r.check(f"{label}: NBIRTH per gateway, DBIRTH per child", kinds.get("NBIRTH", 0) >= gateways
                    and kinds.get("DBIRTH", 0) >= devices, f"{kinds}")
        else:
            r.check(f"{label}: the report's sessions are the gateways'",
                    get(rep, "connections.succeeded") == gateways and get(rep, "devices.total") == devices,
                    f"connections.succeeded {get(rep, 'connections.succeeded')}, devices.total {get(rep, 'devices.total')}")


COMMANDS = {"processes": cmd_processes, "kill": cmd_kill, "sigterm": cmd_sigterm, "gateway": cmd_gateway}


def main():
    rel.main(__doc__, COMMANDS, TEST)


if __name__ == "__main__":
    main()
