#!/usr/bin/env python3
"""Interop checks of MQTT over TLS and per-device identities against Debian's mosquitto. Used
by scripts/interop.sh (test J).

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

What it does (every broker listens on 127.0.0.1 with a free port; every wait is bounded; every
process it starts is ended on the way out):
  1. `fleetsim certs` for 200 devices of a cohort: a test CA, a broker certificate, one
     certificate per device (CN = device id).
  2. mosquitto with `require_certificate true` and `use_identity_as_username true` on a TLS
     listener; `fleetsim run` over mqtts:// with per-device client certificates: every device
     connects, mosquitto names each by its own certificate's CN, and mosquitto_sub (TLS, its
     own certificate) receives telemetry from every device; the summary's accounting balances.
  3. The broker's certificate is verified: a run trusting another CA connects no device and
     says why ("certificate not trusted"); --insecure-skip-verify connects (and warns); a run
     without client certificates is refused by the broker ("requires a client certificate").
  4. Per-device passwords from a CSV file on a password-protected listener (mosquitto_passwd):
     every device with the right password connects, the one with a wrong password is refused
     ("bad user name or password") and counted; no password appears in fleetsim's stdout,
     stderr (at debug level), event log, report or run folder.
"""

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from interop_common import Results

TEST = "J"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 200
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(tmp, name, lines):
    """A mosquitto with `lines` as its config; returns (process, port, log path)."""
    port = free_port()
    log = os.path.join(tmp, f"{name}.log")
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\n")
        f.write("\n".join(lines) + "\n")
        f.write(f"log_dest file {log}\nlog_type all\nmax_connections -1\n")
        if os.geteuid() == 0:
            f.write("user root\n")  # the keys are readable by their owner only
    p = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    PROCS.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return p, port, log
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError(f"mosquitto {name} did not listen on {port}: {read(log)[-2000:]}")


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def scenario(tmp, name, port, tls=None, auth=None, duration="12s"):
    """Writes a scenario of DEVICES env sensors against 127.0.0.1:port; returns its path."""
    path = os.path.join(tmp, f"{name}.toml")
    profile = os.path.join(ROOT, "device-profiles", "env-sensor.toml")
    scheme = "mqtts" if tls is not None else "mqtt"
    text = f'name = "{name}"\nduration = "{duration}"\ndrain = "3s"\n'
    text += '[ramp]\nmode = "rate"\nper_second = 100\n'
    text += f'[broker]\nurl = "{scheme}://127.0.0.1:{port}"\n'
    if tls is not None:
        text += "[broker.tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    if auth is not None:
        text += "[broker.auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in auth.items())
    text += f'[[cohorts]]\nname = "env"\nprofile = "{profile}"\ncount = {DEVICES}\n'
    with open(path, "w") as f:
        f.write(text)
    return path


def run_fleet(args, scen, tag, extra=()):
    """`fleetsim run` headless with a report, an event log and a run folder; returns
    (exit code, stdout, stderr, report or None, run dir, event log path)."""
    rd = os.path.join(args.tmp, f"run-{tag}")
    report = os.path.join(args.tmp, f"report-{tag}.json")
    events = os.path.join(args.tmp, f"events-{tag}.log")
    cmd = [args.fleetsim, "run", scen, "--headless", "--report", report, "--run-dir", rd,
           "--event-log", events, "--log-level", "debug", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=args.tmp)
    rep = None
    try:
        with open(report) as f:
            rep = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    return p.returncode, p.stdout, p.stderr, rep, rd, events


def connected_clients(log):
    """{client id: user name} of the 'New client connected' lines of a mosquitto log."""
    out = {}
    for m in re.finditer(r"New client connected from \S+ as (\S+) \([^)]*?(?:u'([^']*)')?\)", read(log)):
        out[m.group(1)] = m.group(2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleetsim", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--test", default=TEST)
    args = ap.parse_args()
    os.makedirs(args.tmp, exist_ok=True)
    r = Results(args.test)
    try:
        checks(args, r)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
    sys.exit(1 if r.failed else 0)


def checks(args, r):
    tmp = args.tmp
    certs = os.path.join(tmp, "certs")
    # 1. fleetsim certs
    scen0 = scenario(tmp, "certs", 8883, tls={})
    p = subprocess.run([args.fleetsim, "certs", scen0, "--cohort", "env", "--out", certs],
                       capture_output=True, text=True, timeout=120, cwd=tmp)
    devs = sorted(os.listdir(os.path.join(certs, "devices"))) if os.path.isdir(os.path.join(certs, "devices")) else []
    pems = [d for d in devs if d.endswith(".pem")]
    r.check("certs: a CA, a broker certificate and one certificate per device", p.returncode == 0
            and all(os.path.exists(os.path.join(certs, f)) for f in ("ca.pem", "ca.key", "server.pem", "server.key"))
            and len(pems) == DEVICES, f"exit {p.returncode}, {len(pems)} device certificates {p.stderr[-300:]}")
    if p.returncode != 0:
        return
    key_mode = os.stat(os.path.join(certs, "devices", "env-000000.key")).st_mode & 0o777
    r.check("certs: keys are readable by their owner only", key_mode == 0o600, oct(key_mode))
    ca = os.path.join(certs, "ca.pem")
    tls_listener = [f"cafile {ca}", f"certfile {certs}/server.pem", f"keyfile {certs}/server.key",
                    "require_certificate true", "use_identity_as_username true", "allow_anonymous false"]
    _, port, log = start_mosquitto(tmp, "tls", tls_listener)

    # 2. per-device client certificates
    sub_out = os.path.join(tmp, "sub.txt")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "--cafile", ca,
                            "--cert", f"{certs}/devices/env-000199.pem", "--key", f"{certs}/devices/env-000199.key",
                            "-i", "interop-sub", "-t", "fleetsim/+/+/telemetry", "-q", "1", "-v"],
                           stdout=open(sub_out, "w"), stderr=subprocess.STDOUT)
    PROCS.append(sub)
    time.sleep(1.0)
    tls = {"ca_file": ca, "client_cert": f"{certs}/devices/{{device_id}}.pem",
           "client_key": f"{certs}/devices/{{device_id}}.key"}
    scen = scenario(tmp, "mtls", port, tls=tls)
    rc, out, err, rep, _, _ = run_fleet(args, scen, "mtls")
    time.sleep(1.0)
    sub.terminate()
    clients = connected_clients(log)
    fleet_clients = {c: u for c, u in clients.items() if c.startswith("env-")}
    named = sum(1 for c, u in fleet_clients.items() if u == c)
    r.check("mtls: every device connects over TLS with its own certificate",
            rc == 0 and rep is not None and rep["connections"]["succeeded"] >= DEVICES
            and rep["connections"]["failed"] == 0,
            f"exit {rc}, {rep and rep['connections']} {err[-400:] if rc else ''}")
    r.check("mtls: mosquitto names each device by its certificate's CN (use_identity_as_username)",
            len(fleet_clients) == DEVICES and named == DEVICES,
            f"{len(fleet_clients)} clients, {named} with user name = client id")
    senders = set(m.group(1) for m in re.finditer(r'"device_id":"(env-\d+)"', read(sub_out)))
    r.check("mtls: mosquitto_sub (TLS, its own certificate) receives telemetry from every device",
            len(senders) == DEVICES, f"{len(senders)} devices seen in {len(read(sub_out).splitlines())} messages")
    r.check("mtls: the accounting balances", rep is not None and rep["messages"]["unaccounted"] == 0
            and rep["messages"]["devices_unaccounted"] == 0 and "unaccounted: 0" in out,
            f"{rep and {k: rep['messages'][k] for k in ('published', 'acked', 'failed', 'unaccounted')}}")
    clean = len(re.findall(r"Client env-\d+ disconnected\.", read(log)))
    r.check("mtls: the run ends with a DISCONNECT from every device", clean >= DEVICES, f"{clean} clean disconnects")

    # 3. verification
    other = os.path.join(tmp, "other-ca")
    p = subprocess.run([args.fleetsim, "certs", scen0, "--cohort", "env", "--out", other, "--devices", "1"],
                       capture_output=True, text=True, timeout=60, cwd=tmp)
    bad = scenario(tmp, "wrong-ca", port, tls=dict(tls, ca_file=os.path.join(other, "ca.pem")), duration="4s")
    rc, out, err, rep, _, _ = run_fleet(args, bad, "wrong-ca")
    r.check("verify: a broker certificate from another CA is refused, with the reason",
            rep is not None and rep["connections"]["succeeded"] == 0 and rep["connections"]["failed"] > 0
            and "certificate not trusted" in err,
            f"exit {rc}, {rep and rep['connections']}, reason in the log: {'certificate not trusted' in err}")
    noverify = scenario(tmp, "insecure", port, tls={k: v for k, v in tls.items() if k != "ca_file"}, duration="4s")
    rc, out, err, rep, _, _ = run_fleet(args, noverify, "insecure", ["--insecure-skip-verify"])
    r.check("verify: --insecure-skip-verify connects without the CA, and says so loudly",
            rep is not None and rep["connections"]["succeeded"] >= DEVICES and "NOT verified" in err,
            f"exit {rc}, {rep and rep['connections']}, warning: {'NOT verified' in err}")
    nocert = scenario(tmp, "no-cert", port, tls={"ca_file": ca}, duration="4s")
    rc, out, err, rep, _, events = run_fleet(args, nocert, "no-cert")
    reasons = set(re.findall(r"connect_error reason=(.*)", read(events)))
    r.check("verify: without a client certificate the broker refuses every device, with the reason",
            rep is not None and rep["connections"]["succeeded"] == 0 and rep["connections"]["failed"] > 0
            and reasons == {"TLS handshake failed: broker requires a client certificate"},
            f"exit {rc}, {rep and rep['connections']}, reasons in the event log: {sorted(reasons)}")
    missing = scenario(tmp, "missing-cert", port, tls=dict(tls, client_cert=f"{tmp}/nowhere/{{device_id}}.pem"))
    rc, out, err, rep, _, _ = run_fleet(args, missing, "missing-cert")
    r.check("verify: missing client certificate files stop the run before it starts, naming one",
            rc != 0 and rep is None and "nowhere/env-000000.pem" in err and "fleetsim certs" in err,
            f"exit {rc}: {err.strip().splitlines()[-1][:200] if err.strip() else ''}")

    # 4. passwords from a CSV file
    secrets = {f"env-{i:06}": f"tok-{i:06}-Zq9vX" for i in range(DEVICES)}
    creds = os.path.join(tmp, "creds.csv")
    with open(creds, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device_id", "username", "password"])
        for d, pw in secrets.items():
            w.writerow([d, d, pw if d != "env-000007" else "wrong-Zq9vX"])
    pwfile = os.path.join(tmp, "passwd")
    with open(pwfile, "w") as f:
        for d, pw in secrets.items():
            f.write(f"{d}:{pw}\n")
    p = subprocess.run(["mosquitto_passwd", "-U", pwfile], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        r.check("auth: mosquitto_passwd", False, p.stderr[-300:])
        return
    _, pport, plog = start_mosquitto(tmp, "auth", [f"password_file {pwfile}", "allow_anonymous false"])
    scen = scenario(tmp, "auth", pport, auth={"credentials_file": creds}, duration="8s")
    rc, out, err, rep, rd, events = run_fleet(args, scen, "auth")
    # mosquitto answers a wrong password with "not authorized" (3.1.1 return code 5), not 4.
    refusals = re.findall(r"^0000000007 \d+ connect_error reason=(refused by broker: [a-z ]+)$", read(events), re.M)
    broker_said = len(re.findall(r"Client <unknown> disconnected, not authori[sz]ed", read(plog)))
    ok_clients = {c for c in connected_clients(plog) if c.startswith("env-")}
    r.check("auth: every device with its password from the CSV connects",
            rep is not None and len(ok_clients) == DEVICES - 1 and "env-000007" not in ok_clients,
            f"{len(ok_clients)} devices connected (want {DEVICES - 1}), env-000007 among them: {'env-000007' in ok_clients}")
    r.check("auth: the device with a wrong password is refused and counted, with the reason",
            rep is not None and rep["connections"]["failed"] == len(refusals) > 0
            and set(refusals) <= {"refused by broker: not authorized", "refused by broker: bad user name or password"}
            and broker_said == len(refusals),
            f"connections failed {rep and rep['connections']['failed']}, device 7's refusals in the event log "
            f"{len(refusals)} ({sorted(set(refusals))}), mosquitto's 'not authorised' {broker_said}")
    leaks = []
    for what, text in (("stdout", out), ("stderr (debug)", err), ("event log", read(events)),
                       ("report", json.dumps(rep))):
        if "Zq9vX" in text:
            leaks.append(what)
    for dirpath, _, files in os.walk(rd):
        for name in files:
            if "Zq9vX" in read(os.path.join(dirpath, name)):
                leaks.append(os.path.join(dirpath, name))
    r.check("auth: no password appears in stdout, the debug log, the event log, the report or the run folder",
            not leaks and os.path.getsize(events) > 0, f"leaks: {leaks or 'none'}")


if __name__ == "__main__":
    main()
