#!/usr/bin/env python3
"""Checks what a real MQTT subscriber received from a fleetsim run against the telemetry
contract (docs/telemetry.md) and against the run's report. Standard library only.

Input files are written by `mosquitto_sub -F '%U %r %q %t %p'`: one message per line, as
"<arrival unix time> <retain flag> <qos> <topic> <payload>". Lines on topics that are not a
device's telemetry, status or command response (the interop script's own markers, the
commands it sends) are ignored.

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
  KNOWN <test>  <check>: <detail>   (a known fleetsim bug; counted as FAIL with --strict)
and the exit status is 1 when any check failed, else 0.

Subcommands:
  telemetry  the telemetry contract and message accounting of one run (interop tests A, B)
  commands   command responses and the effect of set_interval (interop test C)
  scenario   the scenario suits these checks: QoS >= 1 telemetry under fleetsim/, no link loss
"""

import argparse
import json
import re
import statistics
import sys
from collections import OrderedDict, defaultdict

TELEMETRY_KEYS = ["device_id", "seq", "ts", "fw", "battery", "values"]
STATUS_KEYS = ["device_id", "online", "ts", "fw"]
RESPONSE_HEAD = ["device_id", "request_id", "cmd", "ts", "status"]

TOPIC_RE = re.compile(r"^fleetsim/(?P<profile>[^/]+)/(?P<device>[^/]+)/(?P<kind>telemetry|status|cmd/response|cmd)$")
BATTERY_RE = re.compile(rb'"battery":(null|-?\d+\.\d(?=,))')


class Results:
    def __init__(self, test, strict):
        self.test = test
        self.strict = strict
        self.failed = 0
        self.passed = 0

    def check(self, name, ok, detail):
        self.passed += bool(ok)
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {self.test}  {name}: {detail}", flush=True)
        return ok

    def known_bug(self, name, ok, detail, bug):
        """A check that a known fleetsim bug makes fail: reported, counted only with --strict."""
        if ok:
            return self.check(name, True, detail + " (the known bug is fixed: drop the allowance)")
        if self.strict:
            return self.check(name, False, f"{detail} [known bug: {bug}]")
        print(f"KNOWN {self.test}  {name}: {detail} [known fleetsim bug, not counted; "
              f"INTEROP_STRICT=1 counts it: {bug}]", flush=True)
        return False


class Message:
    __slots__ = ("arrival", "retain", "qos", "topic", "raw", "profile", "device", "kind", "line")

    def __init__(self, arrival, retain, qos, topic, raw, m, line):
        self.arrival, self.retain, self.qos, self.topic, self.raw = arrival, retain, qos, topic, raw
        self.profile, self.device, self.kind = m["profile"], m["device"], m["kind"]
        self.line = line


def read_messages(path):
    """Device messages in arrival order, and the lines that could not be parsed."""
    msgs, bad = [], []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\n")
            if not line:
                continue
            parts = line.split(b" ", 4)
            if len(parts) < 4:
                bad.append(f"line {n}: {line[:120]!r}")
                continue
            if len(parts) == 4:
                parts.append(b"")
            arrival, retain, qos, topic, raw = parts
            topic = topic.decode("utf-8", "replace")
            m = TOPIC_RE.match(topic)
            if not m:
                continue  # markers and anything else that is not a device topic
            try:
                msgs.append(Message(float(arrival), int(retain), int(qos), topic, raw, m, n))
            except ValueError:
                bad.append(f"line {n}: {line[:120]!r}")
    return msgs, bad


def parse_object(raw):
    """The payload as an ordered dict, or an error message."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=OrderedDict)
    except (UnicodeDecodeError, ValueError) as e:
        return None, f"not JSON ({e})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, None


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def telemetry_problem(msg, obj, start_ms, end_ms):
    """Why one telemetry message breaks the contract, or None."""
    if list(obj.keys()) != TELEMETRY_KEYS:
        return f"keys {list(obj.keys())}, expected {TELEMETRY_KEYS} in this order"
    if b" " in msg.raw or b"\n" in msg.raw:
        return "payload is not compact JSON (whitespace)"
    if not isinstance(obj["device_id"], str) or not obj["device_id"]:
        return f"device_id {obj['device_id']!r} is not a non-empty string"
    if obj["device_id"] != msg.device:
        return f"device_id {obj['device_id']!r} differs from the topic's {msg.device!r}"
    if not is_int(obj["seq"]) or obj["seq"] < 1:
        return f"seq {obj['seq']!r} is not an integer >= 1"
    if not is_int(obj["ts"]):
        return f"ts {obj['ts']!r} is not an integer (ms)"
    if not start_ms <= obj["ts"] <= end_ms:
        return f"ts {obj['ts']} outside the run's wall-clock window [{start_ms}, {end_ms}]"
    if not isinstance(obj["fw"], str) or not obj["fw"]:
        return f"fw {obj['fw']!r} is not a non-empty string"
    b = obj["battery"]
    if b is not None:
        if not is_number(b) or not 0.0 <= b <= 100.0:
            return f"battery {b!r} is neither null nor a number in [0, 100]"
        if not BATTERY_RE.search(msg.raw):
            return "battery is not written with exactly one decimal"
    values = obj["values"]
    if not isinstance(values, dict):
        return f"values {values!r} is not an object"
    for k, v in values.items():
        if not is_number(v):
            return f"values.{k} = {v!r} is not a number"
    keys = list(values.keys())
    if keys != sorted(keys, key=lambda s: s.encode("utf-8")):
        return f"values keys {keys} are not in name order"
    return None


def status_problem(msg, obj, start_ms, end_ms):
    if list(obj.keys()) != STATUS_KEYS:
        return f"keys {list(obj.keys())}, expected {STATUS_KEYS} in this order"
    if obj["device_id"] != msg.device:
        return f"device_id {obj['device_id']!r} differs from the topic's {msg.device!r}"
    if not isinstance(obj["online"], bool):
        return f"online {obj['online']!r} is not a bool"
    if not is_int(obj["ts"]) or not start_ms <= obj["ts"] <= end_ms:
        return f"ts {obj['ts']!r} is not an integer in the run's window [{start_ms}, {end_ms}]"
    if not isinstance(obj["fw"], str) or not obj["fw"]:
        return f"fw {obj['fw']!r} is not a non-empty string"
    if msg.qos != 1:
        return f"delivered with QoS {msg.qos} on a QoS 1 subscription (status is published with QoS 1)"
    return None


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def first(items, n=3):
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "; ".join(str(i) for i in items[:n]) + more


def seq_gaps(seqs):
    """Problems of one device's seq list: duplicates, and a set that is not exactly 1..N."""
    problems = []
    counts = defaultdict(int)
    for s in seqs:
        counts[s] += 1
    dups = sorted(s for s, c in counts.items() if c > 1)
    if dups:
        problems.append(f"duplicate seq {dups[:5]}")
    have = set(seqs)
    top = max(have)
    missing = sorted(set(range(1, top + 1)) - have)
    if missing:
        problems.append(f"missing seq {missing[:5]} of 1..{top}")
    return problems


def check_telemetry_stream(r, msgs, report, start_ms, end_ms):
    """Format, seq continuity and message accounting of the telemetry in `msgs`.
    Returns the parsed telemetry per device: {device: [(seq, ts, obj), ...]}."""
    tel = [m for m in msgs if m.kind == "telemetry"]
    per_device = defaultdict(list)
    bad = []
    for m in tel:
        obj, err = parse_object(m.raw)
        if err is None:
            err = telemetry_problem(m, obj, start_ms, end_ms)
        if err:
            bad.append(f"{m.topic} line {m.line}: {err}: {m.raw[:160]!r}")
            continue
        per_device[obj["device_id"]].append((obj["seq"], obj["ts"], obj))
    r.check("telemetry format", not bad and tel,
            f"{len(tel)} telemetry messages from {len(per_device)} devices, every one a compact JSON object "
            f"with device_id, seq, ts (ms, in the run's window), fw, battery (null or 1 decimal), values (numbers, name order)"
            if not bad and tel else (f"{len(bad)} of {len(tel)} messages break the contract: {first(bad)}"
                                     if bad else "no telemetry message received"))

    # fw must not change within a run here (no firmware rollout in these scenarios).
    fw_changes = [d for d, rows in per_device.items() if len({o["fw"] for _, _, o in rows}) > 1]
    r.check("telemetry fw stable", not fw_changes,
            "each device reports one firmware version" if not fw_changes
            else f"devices report several fw versions: {first(fw_changes)}")

    gap_problems = []
    for dev, rows in sorted(per_device.items()):
        for p in seq_gaps([s for s, _, _ in rows]):
            gap_problems.append(f"{dev}: {p}")
    r.check("telemetry seq continuity", per_device and not gap_problems,
            f"every device's seq is exactly 1..N without gap or duplicate "
            f"({len(per_device)} devices, N from {min(len(v) for v in per_device.values())} "
            f"to {max(len(v) for v in per_device.values())})"
            if per_device and not gap_problems else (first(gap_problems) or "no telemetry"))

    # Within one device, ts grows with seq (ts is the scheduled send time).
    order = []
    for dev, rows in per_device.items():
        rows = sorted(rows)
        if any(b[1] < a[1] for a, b in zip(rows, rows[1:])):
            order.append(dev)
    r.check("telemetry ts order", not order,
            "ts never decreases as seq grows" if not order else f"ts goes back in time at: {first(order)}")

    m = report["messages"]
    n = len(tel)
    ok = n == m["published"] == m["acked"]
    r.check("telemetry count = report", ok,
            f"received {n} = messages.published {m['published']} = messages.acked {m['acked']}" if ok
            else f"received {n}, report messages.published {m['published']}, messages.acked {m['acked']} "
                 f"(failed {m['failed']}, in_flight {m['in_flight']}, buffered {m['buffered']})")
    return per_device


def cmd_telemetry(args):
    r = Results(args.test, args.strict)
    msgs, bad_lines = read_messages(args.messages)
    with open(args.report) as f:
        report = json.load(f)
    r.check("subscriber output readable", not bad_lines,
            f"{len(msgs)} device messages read" if not bad_lines else first(bad_lines))

    check_telemetry_stream(r, msgs, report, args.start_ms, args.end_ms)

    total = report["devices"]["total"]
    if args.mqtt_version:
        got = report["run"].get("mqtt_version")
        r.check("report mqtt_version", got == args.mqtt_version,
                f"run.mqtt_version = {got!r}, expected {args.mqtt_version!r}")

    # Status messages as a live subscriber sees them.
    st = [m for m in msgs if m.kind == "status"]
    bad = []
    seen = defaultdict(list)
    for m in st:
        obj, err = parse_object(m.raw)
        if err is None:
            err = status_problem(m, obj, args.start_ms, args.end_ms)
        if err:
            bad.append(f"{m.topic} line {m.line}: {err}: {m.raw[:160]!r}")
            continue
        seen[obj["device_id"]].append(obj)
    r.check("status format", st and not bad,
            f"{len(st)} status messages, every one {{device_id, online, ts, fw}} with QoS 1" if st and not bad
            else (f"{len(bad)} of {len(st)} status messages malformed: {first(bad)}" if bad else "no status message received"))
    online = {d for d, objs in seen.items() if objs[0]["online"] is True}
    r.check("status online on connect", len(online) == total,
            f"{len(online)} of {total} devices published \"online\":true first" if len(online) == total
            else f"only {len(online)} of {total} devices published \"online\":true as their first status; "
                 f"first statuses: {first(sorted((d, o[0]['online']) for d, o in seen.items()))}")
    tel_fw = {}
    for m in msgs:
        if m.kind == "telemetry":
            obj, err = parse_object(m.raw)
            if not err and isinstance(obj.get("fw"), str):
                tel_fw[obj.get("device_id")] = obj["fw"]
    mismatch = [d for d, objs in seen.items() if d in tel_fw and any(o["fw"] != tel_fw[d] for o in objs)]
    r.check("status fw = telemetry fw", not mismatch,
            "status and telemetry name the same firmware" if not mismatch else first(mismatch))

    # The retained status after the run (a fresh subscriber's view).
    if args.retained:
        ret, bad_lines = read_messages(args.retained)
        ret = [m for m in ret if m.kind == "status"]
        bad = []
        final = {}
        for m in ret:
            obj, err = parse_object(m.raw)
            if err is None:
                err = status_problem(m, obj, args.start_ms, args.end_ms)
            if err is None and m.retain != 1:
                err = "delivered to a new subscriber without the retain flag"
            if err:
                bad.append(f"{m.topic}: {err}: {m.raw[:160]!r}")
                continue
            final[obj["device_id"]] = obj
        ok = not bad and len(final) == total
        r.check("status retained", ok,
                f"a new subscriber finds a retained, well-formed status for all {total} devices" if ok
                else f"{len(final)} of {total} devices have a well-formed retained status; {first(bad)}")
        # docs/telemetry.md: at the end of the run, while still connected, "online":false, then a
        # clean DISCONNECT; so the retained status after a run is offline.
        still_online = sorted(d for d, o in final.items() if o["online"] is not False)
        last_live = {d: objs[-1]["online"] for d, objs in seen.items()}
        no_offline = sorted(d for d, v in last_live.items() if v is not False)
        ok = final and not still_online and not no_offline
        r.known_bug(
            "status offline at end of run", ok,
            "every device published \"online\":false at the end and its retained status is offline" if ok
            else f"{len(no_offline)} of {len(last_live)} devices published no \"online\":false at the end of the run, "
                 f"{len(still_online)} of {len(final)} retained statuses still say \"online\":true "
                 f"(e.g. {first(still_online, 2)}); docs/telemetry.md promises \"online\":false before the clean DISCONNECT",
            "the end-of-run status is parked for its link latency, then the DISCONNECT closes the session and drops it",
        )
    return 1 if r.failed else 0


def cmd_commands(args):
    r = Results(args.test, args.strict)
    msgs, bad_lines = read_messages(args.messages)
    resp_msgs, bad_resp = read_messages(args.responses)
    with open(args.report) as f:
        report = json.load(f)
    r.check("subscriber output readable", not bad_lines and not bad_resp,
            f"{len(msgs)} device messages and {len(resp_msgs)} responses read" if not (bad_lines or bad_resp)
            else first(bad_lines + bad_resp))

    per_device = check_telemetry_stream(r, msgs, report, args.start_ms, args.end_ms)

    responses = []
    bad = []
    for m in resp_msgs:
        if m.kind != "cmd/response":
            continue
        obj, err = parse_object(m.raw)
        if err is None and list(obj.keys())[:5] != RESPONSE_HEAD:
            err = f"keys {list(obj.keys())} do not start with {RESPONSE_HEAD}"
        if err is None and obj["device_id"] != args.device:
            err = f"device_id {obj['device_id']!r}, expected {args.device!r}"
        if err:
            bad.append(f"line {m.line}: {err}: {m.raw[:160]!r}")
        else:
            responses.append(obj)
    r.check("response format", responses and not bad,
            f"{len(responses)} responses from {args.device}, keys {RESPONSE_HEAD} first" if responses and not bad
            else (first(bad) if bad else "no response received"))
    by_id = defaultdict(list)
    for o in responses:
        by_id[o["request_id"]].append(o)

    def one(rid):
        got = by_id.get(rid, [])
        return (got[0] if len(got) == 1 else None), got

    o, got = one("interop-1")
    ok = o is not None and list(o.keys()) == RESPONSE_HEAD + ["pong"] and o["cmd"] == "ping" \
        and o["status"] == "ok" and o["pong"] is True
    r.check("ping answered", ok, compact(o) if ok else f"expected one ok response with pong true for interop-1, got {compact(got)}")

    o, got = one("interop-2")
    ok = o is not None and list(o.keys()) == RESPONSE_HEAD + ["interval_ms"] and o["cmd"] == "set_interval" \
        and o["status"] == "ok" and o["interval_ms"] == 1000
    r.check("set_interval answered", ok,
            compact(o) if ok else f"expected one ok response with interval_ms 1000 for interop-2, got {compact(got)}")
    set_at = o["ts"] if ok else None

    o, got = one(None)
    ok = o is not None and list(o.keys()) == RESPONSE_HEAD + ["error"] and o["cmd"] is None \
        and o["status"] == "error" and isinstance(o["error"], str) and o["error"]
    r.check("malformed command rejected", ok,
            compact(o) if ok else f"expected one error response (request_id null, cmd null) for 'not json', got {compact(got)}")

    # The reporting rate of the device before and after set_interval.
    rows = sorted(per_device.get(args.device, []))
    ts = [t for _, t, _ in rows]
    if set_at is None or len(ts) < 2:
        r.check("set_interval raises the rate", False,
                f"cannot measure: set_interval answered at {set_at}, {len(ts)} telemetry messages from {args.device}")
    else:
        before = [t for t in ts if t <= set_at]
        after = [t for t in ts if t > set_at]
        window_s = (args.run_end_ms - set_at) / 1000.0
        gaps_before = [b - a for a, b in zip(before, before[1:])]
        gaps_after = [b - a for a, b in zip(after, after[1:])]
        med_before = statistics.median(gaps_before) if gaps_before else None
        med_after = statistics.median(gaps_after) if gaps_after else None
        old_max = window_s / (args.old_interval_ms / 1000.0) + 1  # at most this many at the old rate
        ok = (len(after) >= max(3, 0.6 * window_s) and len(after) > 1.5 * old_max
              and med_after is not None and 700 <= med_after <= 1500
              and (med_before is None or med_before > 2 * med_after))
        r.check("set_interval raises the rate", ok,
                f"{args.device}: {len(after)} messages in the {window_s:.1f} s after set_interval "
                f"(at most {old_max:.0f} at the old {args.old_interval_ms} ms); median gap "
                f"{med_before if med_before is not None else 'n/a'} ms before, {med_after} ms after")

    c = report["commands"]
    ok = c["received"] >= 3 and c["rejected"] >= 1
    r.check("report commands", ok,
            f"commands.received = {c['received']} (>= 3), commands.rejected = {c['rejected']} (>= 1)")
    return 1 if r.failed else 0


def cmd_scenario(args):
    """The loss-free checks need a fleet whose messages cannot be lost: every cohort's link has
    loss 0 and never drops (in the cohort's override or its profile), telemetry is QoS >= 1,
    and the topics are under fleetsim/ (what the test subscribes to)."""
    import os
    r = Results(args.test, args.strict)
    try:
        import tomllib
    except ImportError:
        print(f"NOTE  {args.test}  scenario: python3 < 3.11 has no tomllib; not checked", flush=True)
        return 0
    with open(args.scenario, "rb") as f:
        scen = tomllib.load(f)
    problems = []
    cohorts = scen.get("cohorts", [])
    for c in cohorts:
        path = os.path.join(os.path.dirname(args.scenario), c["profile"])
        with open(path, "rb") as f:
            prof = tomllib.load(f)
        link = dict(prof.get("link", {}))
        link.update(c.get("link", {}))
        name = c.get("name", path)
        if link.get("loss", 0.0) != 0.0:
            problems.append(f"cohort {name}: link.loss = {link.get('loss')}")
        if link.get("mtbf", "never") != "never":
            problems.append(f"cohort {name}: link.mtbf = {link.get('mtbf')}")
        if prof.get("reporting", {}).get("qos", 0) < 1:
            problems.append(f"cohort {name}: telemetry QoS {prof.get('reporting', {}).get('qos', 0)}")
        ident = prof.get("identity", {})
        for key in ("telemetry_topic", "status_topic", "command_topic", "response_topic"):
            if not str(ident.get(key, "")).startswith("fleetsim/"):
                problems.append(f"cohort {name}: identity.{key} = {ident.get(key)!r} is not under fleetsim/")
    if scen.get("events"):
        problems.append("the scenario has events (outages, reboots ...)")
    r.check("scenario suits the loss-free checks", cohorts and not problems,
            f"{args.scenario}: {len(cohorts)} cohorts, QoS >= 1, no link loss or drops, topics under fleetsim/"
            if cohorts and not problems else f"{args.scenario}: {first(problems, 5) or 'no cohorts'}")
    return 1 if r.failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp):
        sp.add_argument("--test", default="-", help="test label printed on every line")
        sp.add_argument("--messages", required=True, help="mosquitto_sub -F '%%U %%r %%q %%t %%p' output of fleetsim/#")
        sp.add_argument("--report", required=True, help="fleetsim's --report JSON")
        sp.add_argument("--start-ms", type=int, required=True, help="wall clock (ms) just before fleetsim started")
        sp.add_argument("--end-ms", type=int, required=True, help="wall clock (ms) just after fleetsim exited")
        sp.add_argument("--strict", action="store_true", help="count known fleetsim bugs as failures")

    t = sub.add_parser("telemetry", help="telemetry contract and accounting (tests A, B)")
    common(t)
    t.add_argument("--retained", help="output of a new subscriber's --retained-only view of the status topics")
    t.add_argument("--mqtt-version", help="expected run.mqtt_version in the report")
    t.set_defaults(func=cmd_telemetry)

    c = sub.add_parser("commands", help="command responses and set_interval (test C)")
    common(c)
    c.add_argument("--responses", required=True, help="mosquitto_sub output of the device's response topic")
    c.add_argument("--device", required=True, help="the device the commands went to")
    c.add_argument("--run-end-ms", type=int, required=True, help="when the run's duration ended (ms)")
    c.add_argument("--old-interval-ms", type=int, required=True, help="the device's reporting interval before set_interval")
    c.set_defaults(func=cmd_commands)

    sc = sub.add_parser("scenario", help="the scenario suits the loss-free checks")
    sc.add_argument("--test", default="-")
    sc.add_argument("--strict", action="store_true")
    sc.add_argument("scenario")
    sc.set_defaults(func=cmd_scenario)

    args = p.parse_args()
    try:
        return args.func(args)
    except (OSError, KeyError, ValueError) as e:
        print(f"FAIL  {args.test}  checker: cannot check: {type(e).__name__}: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
