#!/usr/bin/env python3
"""A fake of fleetsim's OTA lab fleet (scenarios/ota-lab.toml), written from the same contract,
for `ota_interop.py --self-test` only: it lets the job server and its checks be proven before
fleetsim has OTA. Not a model of fleetsim: just enough of a device to run every check.

  ota_fake_device.py --broker mqtt://127.0.0.1:PORT --duration 50s --report R.json [--faults all]

Six devices, one MQTT session each (paho-mqtt): lab-000..lab-003 speak AWS IoT Jobs (thing
name = device id), lab-004 and lab-005 the generic JSON protocol. All run lab-fw 1.0.0 in slot
A; 1.1.0 is good, 1.2.0 never boots (3 boot attempts, then a rollback), other versions are
rejected. Telemetry every 2 s with fw/slot/ota; a retained status with online true. At the end
of --duration the report is written ({"ota": {...}} with the counters ota_interop.py checks)
and the process exits 0.

--faults all (or --fault DEVICE=NAME, repeatable) makes devices misbehave, each in a way one
check must catch: lab-000 stage-order (installing before verifying), lab-001 no-boot-reason,
lab-002 no-retry (drops an update rejected with VersionMismatch), lab-003 silent-reject (no
reason) and no-resume (downloads again from 0 after a cut), lab-004 progress-back, lab-005
ignore-sha and ignore-unknown (never answers a job for an unknown version); the report:
report-off (one success too many) and versions-at-start (versions as before the jobs).
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ota_interop import KEYS, LAB  # noqa: E402  (the names the checker reads, so both agree)

import paho.mqtt.client as mqtt  # noqa: E402

MODEL = LAB["model"]
KNOWN = {"1.0.0", "1.1.0", "1.2.0"}
NEVER_BOOTS = {"1.2.0"}
BOOT_ATTEMPTS = 3
ALL_FAULTS = {
    "lab-000": {"stage-order"},
    "lab-001": {"no-boot-reason"},
    "lab-002": {"no-retry"},
    "lab-003": {"silent-reject", "no-resume"},
    "lab-004": {"progress-back"},
    "lab-005": {"ignore-sha", "ignore-unknown"},
    "report": {"report-off", "versions-at-start"},
}


def jdump(obj):
    return json.dumps(obj, separators=(",", ":"))


def log(text):
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {k: 0 for k in ("jobs_received", "accepted", "rejected", "succeeded", "failed", "rolled_back",
                                 "update_rejections", "update_retries", "http_requests", "http_bytes",
                                 "http_resumes")}

    def inc(self, key, n=1):
        with self.lock:
            self.c[key] += n


class JobFailed(Exception):
    def __init__(self, stage, reason):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class Device:
    def __init__(self, dev_id, cohort, host, port, stats, faults, stop, rnd):
        self.id = dev_id
        self.cohort = cohort
        self.stats = stats
        self.faults = faults
        self.stop = stop
        self.rnd = rnd
        self.fw = LAB["installed"]
        self.slot = LAB["installed_slot"]
        self.stage = KEYS["ota_idle"]
        self.seq = 0
        self.lock = threading.Lock()
        self.busy = False
        self.pending = {}  # clientToken -> [Event, (kind, body)]
        self.host, self.port = host, port
        self.base = KEYS["aws_jobs"].format(device=dev_id)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev_id, protocol=mqtt.MQTTv311)
        self.client.will_set(KEYS["status_topic"].format(device=dev_id),
                             jdump({"device_id": dev_id, "online": False}), qos=1, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message

    # ---- MQTT ------------------------------------------------------------------------------
    def start(self):
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        threading.Thread(target=self.telemetry_loop, daemon=True).start()

    def close(self):
        self.client.publish(KEYS["status_topic"].format(device=self.id),
                            jdump({"device_id": self.id, "online": False}), qos=1, retain=True)
        time.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()

    def pub(self, topic, obj, retain=False):
        self.client.publish(topic, jdump(obj), qos=1, retain=retain)

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log(f"{self.id}: connect refused {reason_code}")
            return
        if self.cohort == "aws":
            topics = [f"{self.base}/notify-next", f"{self.base}/start-next/+", f"{self.base}/+/update/+",
                      f"{self.base}/+/get/+"]
        else:
            topics = [KEYS["job_topic"].format(device=self.id)]
        client.subscribe([(t, 1) for t in topics])
        self.pub(KEYS["status_topic"].format(device=self.id),
                 {"device_id": self.id, "online": True, "fw": self.fw, "ts": int(time.time() * 1000)}, retain=True)
        if self.cohort == "aws":
            with self.lock:
                idle = not self.busy
            if idle:
                self.start_next()

    def telemetry_loop(self):
        next_t = time.monotonic() + 0.3 + self.rnd.random()
        while not self.stop.is_set():
            if self.stop.wait(max(0.0, next_t - time.monotonic())):
                return
            next_t += LAB["telemetry_every_s"]
            self.seq += 1
            self.pub(KEYS["telemetry_topic"].format(device=self.id),
                     {"device_id": self.id, "seq": self.seq, "ts": int(time.time() * 1000), "fw": self.fw,
                      "slot": self.slot, "ota": self.stage, "battery": None,
                      "values": {"temperature": round(20 + self.rnd.random() * 5, 2)}})

    def on_message(self, client, userdata, msg):
        try:
            body = json.loads(msg.payload)
        except ValueError:
            log(f"{self.id}: not JSON on {msg.topic}")
            return
        topic = msg.topic
        if self.cohort == "generic":
            self.on_generic_job(body)
            return
        rest = topic[len(self.base) + 1:]
        if rest == "notify-next":
            with self.lock:
                idle = not self.busy
            if idle and body.get("execution"):
                self.start_next()
        elif rest == "start-next/accepted":
            ex = body.get("execution")
            if ex:
                with self.lock:
                    if self.busy:
                        return
                    self.busy = True
                threading.Thread(target=self.aws_job, args=(ex,), daemon=True).start()
        elif re.fullmatch(r"[^/]+/(update|get)/(accepted|rejected)", rest) or rest == "start-next/rejected":
            token = body.get("clientToken")
            with self.lock:
                waiter = self.pending.get(token)
            if waiter:
                waiter[1] = (rest.rsplit("/", 1)[1], body)
                waiter[0].set()

    def request(self, rest, body, timeout=10.0):
        token = uuid.uuid4().hex[:12]
        body = dict(body, clientToken=token)
        waiter = [threading.Event(), None]
        with self.lock:
            self.pending[token] = waiter
        self.pub(f"{self.base}/{rest}", body)
        waiter[0].wait(timeout)
        with self.lock:
            self.pending.pop(token, None)
        return waiter[1]

    def start_next(self):
        self.pub(f"{self.base}/start-next", {"clientToken": uuid.uuid4().hex[:12],
                                             "statusDetails": {"stage": "queued"}})

    # ---- AWS -------------------------------------------------------------------------------
    def aws_job(self, ex):
        job_id = ex["jobId"]
        state = {"version": ex.get("versionNumber")}
        self.stats.inc("jobs_received")

        def report(status, details):
            details = {k: str(v) for k, v in details.items()}
            for _ in range(6):
                resp = self.request(f"{job_id}/update", {"status": status, "statusDetails": details,
                                                         "expectedVersion": state["version"],
                                                         "includeJobExecutionState": True})
                if resp is None:
                    continue  # no answer: send it again
                kind, body = resp
                if kind == "accepted":
                    es = body.get("executionState") or {}
                    state["version"] = es.get("versionNumber", state["version"] + 1)
                    return True
                if body.get("code") == "VersionMismatch":
                    self.stats.inc("update_rejections")
                    es = body.get("executionState")
                    if es and isinstance(es.get("versionNumber"), int):
                        state["version"] = es["versionNumber"]
                    else:
                        got = self.request(f"{job_id}/get", {"includeJobDocument": False})
                        if got and got[0] == "accepted":
                            state["version"] = got[1]["execution"]["versionNumber"]
                    if "no-retry" in self.faults:
                        return True  # (fault) the update is dropped
                    self.stats.inc("update_retries")
                    continue
                log(f"{self.id}: update {status} rejected: {body}")
                return False
            return False

        try:
            self.ota(ex.get("jobDocument") or {}, report, numeric=False)
        finally:
            with self.lock:
                self.busy = False

    # ---- generic ---------------------------------------------------------------------------
    def on_generic_job(self, body):
        job_id = body.get(KEYS["g_job"])
        if body.get(KEYS["g_cancel"]):
            return  # (not needed by the checks)
        if "ignore-unknown" in self.faults and body.get(KEYS["doc_version"]) not in KNOWN:
            return
        with self.lock:
            if self.busy:
                return
            self.busy = True
        self.stats.inc("jobs_received")

        def report(status, details):
            msg = {"device_id": self.id, "job_id": job_id, "status": status}
            msg.update(details)
            msg.setdefault("progress", 0)
            msg["ts"] = int(time.time() * 1000)
            self.pub(KEYS["job_status_topic"].format(device=self.id), msg)
            return True

        def run():
            try:
                self.ota(body, report, numeric=True)
            finally:
                with self.lock:
                    self.busy = False

        threading.Thread(target=run, daemon=True).start()

    # ---- the update itself (both protocols) ------------------------------------------------
    def ota(self, doc, report, numeric):
        target = doc.get(KEYS["doc_version"])
        k = KEYS

        def details(stage, **extra):
            d = {k["stage"]: stage, k["version"]: self.fw, k["target"]: str(target), k["slot"]: self.slot}
            d.update(extra)
            return d

        def set_stage(stage, **extra):
            self.stage = stage
            return report("IN_PROGRESS", details(stage, **extra))

        def pace(s):
            self.stop.wait(s)

        if target not in KNOWN:
            self.stats.inc("rejected")
            extra = {} if "silent-reject" in self.faults else {
                k["reason"]: f"{MODEL} has no version {target}"}
            report("REJECTED", details("rejected", **extra))
            return
        self.stats.inc("accepted")
        self.stage = "queued"
        try:
            steps = [0, 40, 20, 60, 80, 100] if "progress-back" in self.faults else [0, 20, 40, 60, 80, 100]
            url = doc.get(k["doc_url"])
            if url:
                data = self.download(url, lambda p: set_stage("downloading", progress=p if numeric else str(p)))
            else:
                for p in steps:
                    set_stage("downloading", progress=p if numeric else str(p))
                    pace(0.35)
                data = None
            order = ["installing", "verifying"] if "stage-order" in self.faults else ["verifying", "installing"]
            for stage in order:
                set_stage(stage)
                pace(0.5)
                if stage == "verifying" and data is not None:
                    size, sha = doc.get(k["doc_size"]), doc.get(k["doc_sha256"])
                    if size is not None and len(data) != size:
                        raise JobFailed("verifying", f"size {len(data)} bytes, the job says {size}")
                    digest = hashlib.sha256(data).hexdigest()
                    if sha and digest != sha and "ignore-sha" not in self.faults:
                        raise JobFailed("verifying", f"sha256 {digest} does not match the job's {sha}")
            set_stage("rebooting")
            pace(0.6)
            if target in NEVER_BOOTS:
                for attempt in range(BOOT_ATTEMPTS):
                    pace(0.5)
                reason = ("image check failed" if "no-boot-reason" in self.faults else
                          f"{target} did not boot: {BOOT_ATTEMPTS} boot attempts failed, rolled back to {self.fw}")
                self.stats.inc("failed")
                self.stats.inc("rolled_back")
                self.stage = k["ota_idle"]
                report("FAILED", details(k["stage_rolled_back"], **{k["reason"]: reason}))
                return
            old_slot = self.slot
            self.slot = "B" if old_slot == "A" else "A"
            self.fw = target
            set_stage("trial")
            pace(0.8)
            self.stage = k["ota_idle"]
            self.stats.inc("succeeded")
            report("SUCCEEDED", details(k["stage_committed"]))
        except JobFailed as e:
            self.stats.inc("failed")
            self.stage = k["ota_idle"]
            report("FAILED", details(e.stage, **{k["reason"]: e.reason}))

    def download(self, url, progress):
        """GET url, resuming with Range after a cut; progress(0..100) at each 20 % step."""
        u = urlparse(url)
        got = bytearray()
        size = None
        last_step = -1
        progress(0)
        last_step = 0
        for attempt in range(5):
            headers = {}
            if got:
                if "no-resume" in self.faults:
                    got.clear()
                else:
                    headers["Range"] = f"bytes={len(got)}-"
                    self.stats.inc("http_resumes")
            self.stats.inc("http_requests")
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            try:
                conn.request("GET", u.path, headers=headers)
                resp = conn.getresponse()
                if resp.status == 200:
                    got.clear()
                    size = int(resp.getheader("Content-Length"))
                elif resp.status == 206:
                    m = re.match(r"bytes (\d+)-(\d+)/(\d+)", resp.getheader("Content-Range", ""))
                    if not m or int(m.group(1)) != len(got):
                        raise JobFailed("downloading", f"bad Content-Range {resp.getheader('Content-Range')}")
                    size = int(m.group(3))
                else:
                    raise JobFailed("downloading", f"HTTP {resp.status} for {url}")
                while True:
                    chunk = resp.read(16384)
                    if not chunk:
                        break
                    got += chunk
                    self.stats.inc("http_bytes", len(chunk))
                    step = len(got) * 100 // size // 20 * 20
                    if step > last_step:
                        last_step = step
                        progress(step)
                    time.sleep(0.08)
                if len(got) == size:
                    return bytes(got)
            except (http.client.HTTPException, OSError) as e:
                log(f"{self.id}: download cut after {len(got)} bytes ({type(e).__name__}); resuming")
            finally:
                conn.close()
            time.sleep(0.3)
        raise JobFailed("downloading", f"gave up after 5 requests, {len(got)} bytes")


def parse_duration(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, help="mqtt://127.0.0.1:PORT")
    p.add_argument("--duration", type=parse_duration, default=60.0)
    p.add_argument("--report", required=True)
    p.add_argument("--faults", choices=["none", "all"], default="none")
    p.add_argument("--fault", action="append", default=[], help="DEVICE=NAME")
    args = p.parse_args()
    u = urlparse(args.broker)
    faults = {d: set(f) for d, f in ALL_FAULTS.items()} if args.faults == "all" else {}
    for spec in args.fault:
        dev, _, name = spec.partition("=")
        faults.setdefault(dev, set()).add(name)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stats = Stats()
    rnd = random.Random(7)
    devices = [Device(d, "aws", u.hostname, u.port, stats, faults.get(d, set()), stop, random.Random(rnd.random()))
               for d in LAB["aws"]]
    devices += [Device(d, "generic", u.hostname, u.port, stats, faults.get(d, set()), stop,
                       random.Random(rnd.random())) for d in LAB["generic"]]
    t0 = time.monotonic()
    log(f"fake fleet: {len(devices)} devices on {args.broker} for {args.duration:.0f} s; faults "
        f"{ {d: sorted(f) for d, f in faults.items()} or 'none'}")
    for d in devices:
        d.start()
    stop.wait(args.duration)
    interrupted = stop.is_set() and time.monotonic() - t0 < args.duration - 0.5
    stop.set()
    for d in devices:
        d.close()
    c = dict(stats.c)
    if "report-off" in faults.get("report", set()):
        c["succeeded"] += 1
    versions = {}
    for d in devices:
        fw = LAB["installed"] if "versions-at-start" in faults.get("report", set()) else d.fw
        key = KEYS["r_version_key"].format(model=MODEL, version=fw)
        versions[key] = versions.get(key, 0) + 1
    k = KEYS
    ota = {k["r_jobs_received"]: c["jobs_received"], k["r_accepted"]: c["accepted"], k["r_rejected"]: c["rejected"],
           k["r_succeeded"]: c["succeeded"], k["r_failed"]: c["failed"], k["r_rolled_back"]: c["rolled_back"],
           k["r_update_rejections"]: c["update_rejections"], k["r_update_retries"]: c["update_retries"],
           k["r_http"]: {k["r_http_requests"]: c["http_requests"], k["r_http_bytes"]: c["http_bytes"],
                         k["r_http_resumes"]: c["http_resumes"]},
           k["r_versions"]: versions}
    report = {"run": {"scenario": "ota-lab (fake)", "elapsed_s": round(time.monotonic() - t0, 1),
                      "interrupted": interrupted},
              "devices": {"total": len(devices)}, k["r_section"]: ota}
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
    log(f"report written to {args.report}: {jdump(ota)}")
    sys.exit(0)


if __name__ == "__main__":
    main()
