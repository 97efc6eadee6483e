#!/usr/bin/env python3
"""Interop checks of fleetsim's OTA firmware jobs against an independent job server written
here with paho-mqtt: AWS IoT Jobs over MQTT (notify-next, start-next, update with
expectedVersion, get) for one cohort, the generic JSON protocol (ota/job, ota/status) for the
other, and a Range-capable HTTP server for firmware images. Used by scripts/interop.sh (test G).

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

Usage:
  ota_interop.py live --port P --report R [--log-dir D] -- COMMAND...
      Subscribes the job server to the broker on 127.0.0.1:P, starts the HTTP server (a free
      port), then starts COMMAND (fleetsim run scenarios/ota-lab.toml --broker ... --report R),
      waits (bounded) for its 6 devices to be online, queues the jobs and checks what comes
      back (the AWS devices concurrently, one thread per device), waits (bounded) for COMMAND
      to end and checks its report R against what the server saw.
  ota_interop.py --self-test
      Proves this script before fleetsim has OTA: the server's AWS rules against a probe
      client, then `live` twice at once, each on its own mosquitto, against the fake fleet
      scripts/ota_fake_device.py: a correct fleet (every check must pass) and a faulty one
      (each check 1-7 must fail where its fault is, every other check must pass). Needs
      mosquitto and paho-mqtt 2.x (scripts/interop.sh installs both for test G); about 55 s.

Checks (numbered as in the task; the fleet: scenarios/ota-lab.toml, see LAB):
  0  the fleet is online, its first telemetry says 1.0.0 / slot A / idle, each AWS device asks
     start-next after connecting
  1  AWS happy path (lab-000, 1.1.0)        2  AWS bad release (lab-001, 1.2.0: rollback)
  3  AWS update rejected with VersionMismatch and retried (lab-002)
  4  AWS unknown version (lab-003, 7.7.7)   5  AWS HTTP download with a dropped connection
                                               and a Range resume (lab-003, after 4)
  6  generic: happy path (lab-004), wrong sha256 (lab-005), unknown version (lab-005)
  7  the report's ota counters against what the server saw
"""

import argparse
import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

from interop_common import Results, Skip, run_check

TEST = "G"

# Every name the checks rely on, in one place: adjust here when fleetsim's final names differ.
KEYS = {
    # topics ({device} = device id = AWS thing name)
    "telemetry_topic": "fleetsim/lab-device/{device}/telemetry",
    "status_topic": "fleetsim/lab-device/{device}/status",
    "job_topic": "fleetsim/lab-device/{device}/ota/job",
    "job_status_topic": "fleetsim/lab-device/{device}/ota/status",
    "aws_jobs": "$aws/things/{device}/jobs",
    # telemetry (top level; also looked up under "values") and the retained status
    "tel_fw": "fw",
    "tel_slot": "slot",
    "tel_ota": "ota",
    "tel_seq": "seq",
    "status_online": "online",
    # the device's update stages, in order, while IN_PROGRESS; the terminal ones
    "stages": ["downloading", "verifying", "installing", "rebooting", "trial"],
    "ota_idle": "idle",
    "stage_committed": "committed",
    "stage_rolled_back": "rolled_back",
    "stage_verify": "verifying",
    # AWS statusDetails / generic status keys
    "stage": "stage",
    "progress": "progress",
    "version": "version",
    "target": "target",
    "slot": "slot",
    "reason": "reason",
    # generic status only
    "g_device": "device_id",
    "g_job": "job_id",
    "g_status": "status",
    "g_ts": "ts",
    # job documents
    "doc_operation": "operation",
    "doc_operation_value": "firmware_update",
    "doc_version": "version",
    "doc_url": "url",
    "doc_size": "size",
    "doc_sha256": "sha256",
    "g_cancel": "cancel",
    # the report
    "r_section": "ota",
    "r_jobs_received": "jobs_received",
    "r_accepted": "accepted",
    "r_rejected": "rejected",
    "r_succeeded": "succeeded",
    "r_failed": "failed",
    "r_rolled_back": "rolled_back",
    "r_update_rejections": "update_rejections",
    "r_update_retries": "update_retries",
    "r_http": "http",
    "r_http_requests": "requests",
    "r_http_bytes": "bytes",
    "r_http_resumes": "resumes",
    "r_versions": "versions",
    "r_version_key": "{model} {version}",
}

# The fleet of scenarios/ota-lab.toml and its firmware model.
LAB = {
    "aws": ["lab-000", "lab-001", "lab-002", "lab-003"],
    "generic": ["lab-004", "lab-005"],
    "model": "lab-fw",
    "installed": "1.0.0",
    "installed_slot": "A",
    "good": "1.1.0",
    "good_slot": "B",
    "bad": "1.2.0",
    "unknown": "7.7.7",
    "telemetry_every_s": 2.0,
}
BOOT_REASON = re.compile(r"boot.*attempt|attempt.*boot", re.I)
# Bytes of the images the HTTP server serves: lab-fw 1.1.0's image_size_kb (288), so a device that
# also compares the download with its firmware model finds the same size as the job document.
IMAGE_SIZE = 288 * 1024
DROP_FRACTION = 0.4  # the first GET of the check-5 image is cut after this much of the body

AWS_STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED")


def note(text):
    print(f"   {text}", flush=True)


def jdump(obj):
    return json.dumps(obj, separators=(",", ":"))


def topic_regex(template):
    """A regex for a topic template: {device} -> one level (group 1)."""
    return re.compile("^" + re.escape(template).replace(re.escape("{device}"), "([^/+#]+)") + "$")


def aws(thing, rest):
    return KEYS["aws_jobs"].format(device=thing) + "/" + rest


def tel_get(payload, key):
    """A telemetry field: at the top level, else under "values"."""
    if key in payload:
        return payload[key]
    values = payload.get("values")
    if isinstance(values, dict):
        return values.get(key)
    return None


def short(obj, n=220):
    s = obj if isinstance(obj, str) else jdump(obj)
    return s if len(s) <= n else s[: n - 3] + "..."


# ============================================================================ the servers ====

class Execution:
    """One AWS job execution (a job for one thing) and everything the server saw of it."""

    def __init__(self, thing, job_id, doc, number):
        now = int(time.time())
        self.thing = thing
        self.job_id = job_id
        self.doc = doc
        self.status = "QUEUED"
        self.details = {}
        self.version = 1
        self.number = number
        self.queued_at = self.updated_at = now
        self.started_at = None
        self.bump = False  # check 3: bump versionNumber right after start-next
        self.bumped = None  # (versionNumber given with start-next, after the bump)
        self.t_queued = time.monotonic()
        self.t_started = None
        self.t_terminal = None
        self.notified = []  # monotonic times of notify-next messages carrying this execution
        self.starts = []  # monotonic times of start-next answers carrying it
        self.updates = []  # {t, req, outcome, code, version_before, version_after}
        self.gets = []  # monotonic times of get requests for it

    def state(self):
        return {"status": self.status, "statusDetails": dict(self.details), "versionNumber": self.version}

    def execution(self, doc=True):
        e = {"jobId": self.job_id, "thingName": self.thing, "status": self.status,
             "statusDetails": dict(self.details), "queuedAt": self.queued_at,
             "lastUpdatedAt": self.updated_at, "versionNumber": self.version, "executionNumber": self.number}
        if self.started_at is not None:
            e["startedAt"] = self.started_at
        if doc:
            e["jobDocument"] = self.doc
        return e

    def in_progress(self):
        return [u for u in self.updates if u["outcome"] == "accepted" and u["req"].get("status") == "IN_PROGRESS"]

    def terminal_update(self):
        for u in self.updates:
            if u["outcome"] == "accepted" and u["req"].get("status") in TERMINAL:
                return u
        return None


class JobServer:
    """The job server: AWS IoT Jobs (MQTT API) and the generic OTA protocol, plus a record of
    all the fleet's telemetry and statuses. All state is guarded by `cond`'s lock; waits are
    bounded (`wait`)."""

    def __init__(self, mqtt, host, port, traffic_path=None, client_id=None):
        self.mqtt = mqtt
        self.host, self.port = host, port
        self.cond = threading.Condition(threading.RLock())
        self.execs = defaultdict(list)  # thing -> [Execution] in queue order
        self.numbers = defaultdict(int)
        self.start_next = defaultdict(list)  # thing -> [(t, request, job id answered or None)]
        self.telemetry = defaultdict(list)  # device -> [(t, payload)]
        self.status = {}  # device -> (t, payload, retained)
        self.generic = defaultdict(list)  # (device, job id) -> [(t, payload)]
        self.generic_jobs = {}  # (device, job id) -> (t published, doc)
        self.rejections_sent = defaultdict(int)  # code -> count
        self.requests = defaultdict(int)  # kind -> count of requests from the fleet
        self.problems = []  # malformed messages and the like, with the topic
        self.abort = None  # callable: True when waiting is pointless (the fleet process ended)
        self.traffic = open(traffic_path, "w", encoding="utf-8") if traffic_path else None
        self.t0 = time.monotonic()
        self.connected = threading.Event()
        self.suback = None  # refused subscriptions, once the SUBACK came
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"ota-interop-server-{os.getpid()}",
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        t = KEYS
        self.re_tel = topic_regex(t["telemetry_topic"])
        self.re_status = topic_regex(t["status_topic"])
        self.re_gstatus = topic_regex(t["job_status_topic"])
        aws_base = re.escape(t["aws_jobs"]).replace(re.escape("{device}"), "([^/+#]+)")
        self.re_start = re.compile("^" + aws_base + "/start-next$")
        self.re_update = re.compile("^" + aws_base + "/([^/+#]+)/update$")
        self.re_get = re.compile("^" + aws_base + "/([^/+#]+)/get$")
        self.re_pending = re.compile("^" + aws_base + "/get$")
        plus = {"device": "+"}
        self.subscriptions = [
            t["aws_jobs"].format(**plus) + "/start-next",
            t["aws_jobs"].format(**plus) + "/+/update",
            t["aws_jobs"].format(**plus) + "/+/get",
            t["aws_jobs"].format(**plus) + "/get",
            t["telemetry_topic"].format(**plus),
            t["status_topic"].format(**plus),
            t["job_status_topic"].format(**plus),
        ]

    # ---- MQTT plumbing ---------------------------------------------------------------------
    def start(self, timeout=15):
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"the job server did not connect to 127.0.0.1:{self.port} within {timeout} s")
        if not self.wait(lambda: self.suback is not None, timeout):
            raise RuntimeError(f"the broker did not acknowledge the server's SUBSCRIBE within {timeout} s")
        if self.suback:
            raise RuntimeError(f"subscriptions refused: {self.suback}")

    def stop(self):
        try:
            self.client.disconnect()
            self.client.loop_stop()
        except Exception:
            pass
        if self.traffic:
            with self.cond:
                self.traffic.close()
                self.traffic = None

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            return
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        with self.cond:
            self.suback = [f"{topic}: {rc}" for topic, rc in zip(self.subscriptions, reason_code_list)
                           if rc.is_failure]
            self.cond.notify_all()

    def _log(self, direction, topic, payload, retain=False):
        if self.traffic is None:
            return
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", errors="replace")
        self.traffic.write(f"{time.monotonic() - self.t0:9.3f} {direction} {'r ' if retain else ''}{topic} {payload}\n")

    def publish(self, topic, obj, retain=False):
        text = obj if isinstance(obj, str) else jdump(obj)
        with self.cond:
            self._log(">", topic, text, retain)
        self.client.publish(topic, text, qos=1, retain=retain)

    def _on_message(self, client, userdata, msg):
        t = time.monotonic()
        with self.cond:
            self._log("<", msg.topic, msg.payload, msg.retain)
            try:
                self._route(t, msg.topic, msg.payload, msg.retain)
            except Exception as e:  # a bug here must show, not kill paho's loop
                self.problems.append(f"{msg.topic}: server error {type(e).__name__}: {e}")
            self.cond.notify_all()

    def wait(self, pred, timeout):
        """Waits until pred() (called with the lock held) or the timeout or abort; returns pred()."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if pred():
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (self.abort and self.abort()):
                    return bool(pred())
                self.cond.wait(min(left, 0.25))

    # ---- routing ---------------------------------------------------------------------------
    def _json(self, topic, raw):
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.problems.append(f"{topic}: not JSON ({e}): {short(raw.decode('utf-8', 'replace'))}")
            return None
        if not isinstance(obj, dict):
            self.problems.append(f"{topic}: not a JSON object: {short(obj)}")
            return None
        return obj

    def _route(self, t, topic, raw, retained):
        m = self.re_tel.match(topic)
        if m:
            obj = self._json(topic, raw)
            if obj is not None:
                self.telemetry[m.group(1)].append((t, obj))
            return
        m = self.re_status.match(topic)
        if m:
            obj = self._json(topic, raw)
            if obj is not None:
                self.status[m.group(1)] = (t, obj, retained)
            return
        m = self.re_gstatus.match(topic)
        if m:
            self._generic_status(t, m.group(1), topic, raw)
            return
        m = self.re_start.match(topic)
        if m:
            self._start_next(t, m.group(1), topic, raw)
            return
        m = self.re_update.match(topic)
        if m:
            self._update(t, m.group(1), m.group(2), topic, raw)
            return
        m = self.re_get.match(topic)
        if m:
            self._get(t, m.group(1), m.group(2), topic, raw)
            return
        m = self.re_pending.match(topic)
        if m:
            self._pending(m.group(1), topic, raw)
            return
        self.problems.append(f"{topic}: a topic the server does not serve")

    # ---- AWS IoT Jobs ----------------------------------------------------------------------
    def _next(self, thing):
        """The thing's next pending execution ($next): the first IN_PROGRESS, else the first QUEUED."""
        execs = self.execs.get(thing, [])
        for st in ("IN_PROGRESS", "QUEUED"):
            for ex in execs:
                if ex.status == st:
                    return ex
        return None

    def _find(self, thing, job_id):
        if job_id == "$next":
            return self._next(thing)
        for ex in self.execs.get(thing, []):
            if ex.job_id == job_id:
                return ex
        return None

    def _notify_next(self, thing):
        ex = self._next(thing)
        msg = {"timestamp": int(time.time())}
        if ex is not None:
            msg["execution"] = ex.execution()
            ex.notified.append(time.monotonic())
        self.publish(aws(thing, "notify-next"), msg)

    def _reject(self, thing, op, code, message, token, ex=None):
        self.rejections_sent[code] += 1
        body = {"code": code, "message": message, "timestamp": int(time.time())}
        if token is not None:
            body["clientToken"] = token
        if ex is not None:
            body["executionState"] = ex.state()
        self.publish(aws(thing, op + "/rejected"), body)

    def queue_aws(self, thing, job_id, doc, bump=False):
        """Queues a job for a thing; notify-next when it became the thing's next execution."""
        with self.cond:
            self.numbers[thing] += 1
            ex = Execution(thing, job_id, doc, 1)
            ex.bump = bump
            before = self._next(thing)
            self.execs[thing].append(ex)
            if before is None:
                self._notify_next(thing)
            self.cond.notify_all()
            return ex

    def _start_next(self, t, thing, topic, raw):
        self.requests["start-next"] += 1
        req = self._json(topic, raw)
        if req is None:
            self._reject(thing, "start-next", "InvalidJson", "the request is not a JSON object", None)
            self.start_next[thing].append((t, None, None))
            return
        token = req.get("clientToken")
        sd = req.get("statusDetails")
        if sd is not None and not valid_details(sd):
            self._reject(thing, "start-next", "InvalidRequest", "statusDetails must map strings to strings", token)
            self.start_next[thing].append((t, req, None))
            return
        ex = self._next(thing)
        body = {"timestamp": int(time.time())}
        if token is not None:
            body["clientToken"] = token
        if ex is not None:
            if ex.status == "QUEUED":
                # QUEUED -> IN_PROGRESS is an update of the execution: its version goes up.
                ex.status = "IN_PROGRESS"
                ex.started_at = ex.updated_at = int(time.time())
                ex.t_started = t
                if sd is not None:
                    ex.details = dict(sd)
                ex.version += 1
            # An execution already IN_PROGRESS (a second start-next) is returned unchanged.
            ex.starts.append(t)
            body["execution"] = ex.execution()
        self.publish(aws(thing, "start-next/accepted"), body)
        self.start_next[thing].append((t, req, ex.job_id if ex else None))
        if ex is not None and ex.bump and ex.bumped is None:
            # Check 3: an operator edits the execution right after it started (its versionNumber
            # goes up), so the device's first update carries a stale expectedVersion.
            given = ex.version
            ex.details = dict(ex.details, operator_note="edited by ota_interop.py")
            ex.version += 1
            ex.updated_at = int(time.time())
            ex.bumped = (given, ex.version)

    def _update(self, t, thing, job_id, topic, raw):
        self.requests["update"] += 1
        req = self._json(topic, raw)
        op = f"{job_id}/update"
        ex = self._find(thing, job_id) if job_id != "$next" else None
        rec = {"t": t, "req": req if req is not None else {}, "outcome": "rejected", "code": None,
               "version_before": ex.version if ex else None, "version_after": ex.version if ex else None}
        if ex is not None:
            ex.updates.append(rec)
        if req is None:
            rec["code"] = "InvalidJson"
            self._reject(thing, op, "InvalidJson", "the request is not a JSON object", None)
            return
        token = req.get("clientToken")
        if ex is None:
            rec["code"] = "ResourceNotFound"
            self.problems.append(f"{topic}: update of an unknown job execution: {short(req)}")
            self._reject(thing, op, "ResourceNotFound", f"no job execution {job_id} for {thing}", token)
            return
        status = req.get("status")
        sd = req.get("statusDetails")
        exp = req.get("expectedVersion")
        problem = None
        if status not in AWS_STATUSES:
            problem = f"status {status!r} is not one of {', '.join(AWS_STATUSES)}"
        elif sd is not None and not valid_details(sd):
            problem = f"statusDetails must map strings to strings: {short(sd)}"
        elif exp is not None and (isinstance(exp, bool) or not isinstance(exp, int)):
            problem = f"expectedVersion {exp!r} is not an integer"
        if problem:
            rec["code"] = "InvalidRequest"
            self._reject(thing, op, "InvalidRequest", problem, token)
            return
        if ex.status in TERMINAL:
            rec["code"] = "InvalidStateTransition"
            self._reject(thing, op, "InvalidStateTransition",
                         f"the execution is {ex.status} (terminal): no update to {status}", token, ex)
            return
        if exp is not None and exp != ex.version:
            rec["code"] = "VersionMismatch"
            self._reject(thing, op, "VersionMismatch",
                         f"expectedVersion {exp} but the execution's versionNumber is {ex.version}", token, ex)
            return
        ex.status = status
        if sd is not None:
            ex.details = dict(sd)
        ex.version += 1
        ex.updated_at = int(time.time())
        if ex.started_at is None:
            ex.started_at = ex.updated_at
            ex.t_started = t
        rec["outcome"] = "accepted"
        rec["version_after"] = ex.version
        body = {"timestamp": int(time.time())}
        if token is not None:
            body["clientToken"] = token
        if req.get("includeJobExecutionState"):
            body["executionState"] = ex.state()
        if req.get("includeJobDocument"):
            body["jobDocument"] = ex.doc
        self.publish(aws(thing, op + "/accepted"), body)
        if status in TERMINAL:
            ex.t_terminal = t
            # It leaves the pending list: the thing's next execution changed (AWS: NextNotification).
            self._notify_next(thing)

    def _get(self, t, thing, job_id, topic, raw):
        self.requests["get"] += 1
        req = self._json(topic, raw)
        op = f"{job_id}/get"
        if req is None:
            self._reject(thing, op, "InvalidJson", "the request is not a JSON object", None)
            return
        token = req.get("clientToken")
        ex = self._find(thing, job_id)
        if ex is None:
            self._reject(thing, op, "ResourceNotFound", f"no job execution {job_id} for {thing}", token)
            return
        ex.gets.append(t)
        body = {"execution": ex.execution(doc=req.get("includeJobDocument", True) is not False),
                "timestamp": int(time.time())}
        if token is not None:
            body["clientToken"] = token
        self.publish(aws(thing, op + "/accepted"), body)

    def _pending(self, thing, topic, raw):
        self.requests["get-pending"] += 1
        req = self._json(topic, raw)
        if req is None:
            self._reject(thing, "get", "InvalidJson", "the request is not a JSON object", None)
            return

        def summary(ex):
            s = {"jobId": ex.job_id, "queuedAt": ex.queued_at, "lastUpdatedAt": ex.updated_at,
                 "versionNumber": ex.version, "executionNumber": ex.number}
            if ex.started_at is not None:
                s["startedAt"] = ex.started_at
            return s

        execs = self.execs.get(thing, [])
        body = {"inProgressJobs": [summary(e) for e in execs if e.status == "IN_PROGRESS"],
                "queuedJobs": [summary(e) for e in execs if e.status == "QUEUED"],
                "timestamp": int(time.time())}
        if req.get("clientToken") is not None:
            body["clientToken"] = req["clientToken"]
        self.publish(aws(thing, "get/accepted"), body)

    # ---- generic protocol ------------------------------------------------------------------
    def queue_generic(self, device, job_id, doc):
        with self.cond:
            msg = dict({KEYS["g_job"]: job_id}, **doc)
            self.generic_jobs[(device, job_id)] = (time.monotonic(), msg)
            self.publish(KEYS["job_topic"].format(device=device), msg)
            self.cond.notify_all()

    def _generic_status(self, t, device, topic, raw):
        self.requests["generic-status"] += 1
        obj = self._json(topic, raw)
        if obj is None:
            return
        job_id = obj.get(KEYS["g_job"])
        if (device, job_id) not in self.generic_jobs:
            self.problems.append(f"{topic}: status for a job the server did not send: {short(obj)}")
        self.generic[(device, job_id)].append((t, obj))

    def generic_terminal(self, device, job_id):
        for t, obj in self.generic.get((device, job_id), []):
            if obj.get(KEYS["g_status"]) in TERMINAL:
                return t, obj
        return None


def valid_details(sd):
    return isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in sd.items())


class Image:
    def __init__(self, path, data, drop_at=None):
        self.path = path
        self.data = data
        self.drop_at = drop_at
        self.dropped = False
        self.sha256 = hashlib.sha256(data).hexdigest()


class FirmwareServer:
    """HTTP/1.1 with Range (bytes=N-, bytes=N-M) for firmware images; an image may be cut once:
    its first GET stops after `drop_at` bytes of the body and the connection is closed. Every
    request is logged."""

    def __init__(self, log_path=None):
        self.images = {}
        self.log = []
        self.lock = threading.Lock()
        self.log_file = open(log_path, "w", encoding="utf-8") if log_path else None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                owner._serve(self, head=False)

            def do_HEAD(self):
                owner._serve(self, head=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def add(self, path, data, drop_fraction=None):
        img = Image(path, data, int(len(data) * drop_fraction) if drop_fraction else None)
        self.images[path] = img
        return img

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def entries(self, path):
        with self.lock:
            return [e for e in self.log if e["path"] == path and e["method"] == "GET"]

    def _record(self, entry):
        with self.lock:
            self.log.append(entry)
            if self.log_file:
                self.log_file.write(jdump(entry) + "\n")
                self.log_file.flush()

    def _serve(self, h, head):
        entry = {"t": round(time.monotonic(), 3), "method": h.command, "path": h.path,
                 "range": h.headers.get("Range"), "status": None, "start": None, "sent": 0, "length": None,
                 "dropped": False, "client": h.client_address[1], "ua": h.headers.get("User-Agent")}
        img = self.images.get(h.path)
        if img is None:
            entry["status"] = 404
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            self._record(entry)
            return
        size = len(img.data)
        start, end, status = 0, size - 1, 200
        rng = h.headers.get("Range")
        if rng is not None:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            ok = False
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # bytes=-N: the last N bytes
                    start = max(0, size - int(m.group(2)))
                ok = start < size and start <= end
            if not ok:
                entry["status"] = 416
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                self._record(entry)
                return
            status = 206
        length = end - start + 1
        entry.update(status=status, start=start, length=length)
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{img.sha256[:16]}"')
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        if head:
            self._record(entry)
            return
        stop = end + 1
        with self.lock:
            if img.drop_at is not None and not img.dropped and start < img.drop_at <= end:
                img.dropped = True
                stop = img.drop_at
                entry["dropped"] = True
        try:
            pos = start
            while pos < stop:
                n = min(16384, stop - pos)
                h.wfile.write(img.data[pos:pos + n])
                pos += n
                entry["sent"] = pos - start
            h.wfile.flush()
            if entry["dropped"]:
                # Cut: the client has fewer bytes than Content-Length said, then end of stream.
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        except (BrokenPipeError, ConnectionResetError) as e:
            entry["error"] = type(e).__name__
            h.close_connection = True
        self._record(entry)


# ============================================================================ the checks ====

def stage_story(records, numeric_progress):
    """Problems and a summary of IN_PROGRESS reports [(stage, progress)]: stages known and in
    the documented order, each one present, download progress non-decreasing up to 100."""
    order = KEYS["stages"]
    problems = []
    seen = []
    progress = []
    last_idx = -1
    for stage, prog in records:
        if stage not in order:
            problems.append(f"unknown stage {stage!r}")
            continue
        idx = order.index(stage)
        if idx < last_idx:
            problems.append(f"stage {stage} after {order[last_idx]}")
        last_idx = max(last_idx, idx)
        if not seen or seen[-1] != stage:
            seen.append(stage)
        if stage == order[0]:
            if numeric_progress:
                if isinstance(prog, bool) or not isinstance(prog, (int, float)):
                    problems.append(f"progress {prog!r} is not a number")
                    continue
                value = prog
            else:
                if not isinstance(prog, str):
                    problems.append(f"progress {prog!r} is not a string")
                    continue
                try:
                    value = float(prog)
                except ValueError:
                    problems.append(f"progress {prog!r} is not a number in a string")
                    continue
            if not 0 <= value <= 100:
                problems.append(f"progress {value} outside 0..100")
            progress.append(value)
    missing = [s for s in order if s not in seen]
    if missing:
        problems.append(f"no {', '.join(missing)} report")
    if progress:
        back = [(a, b) for a, b in zip(progress, progress[1:]) if b < a]
        if back:
            problems.append(f"download progress went back: {', '.join(f'{fmt(a)} -> {fmt(b)}' for a, b in back)}")
        if progress[-1] != 100:
            problems.append(f"download progress ended at {fmt(progress[-1])}, not 100")
        if len(progress) < 2:
            problems.append("one download progress report (want steps from 0 to 100)")
    elif order[0] in seen:
        problems.append("no download progress")
    parts = []
    for s in seen:
        parts.append(f"{s} {'/'.join(fmt(p) for p in progress)}" if s == order[0] and progress else s)
    return problems, ", ".join(parts) or "none"


def fmt(v):
    return str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v)


def aws_updates_story(ex):
    """(problems, summary) of an AWS execution's updates: what was rejected, the stage order."""
    problems = []
    records = []
    for u in ex.updates:
        req = u["req"]
        sd = req.get("statusDetails") if isinstance(req.get("statusDetails"), dict) else {}
        if u["outcome"] == "rejected":
            problems.append(f"update {req.get('status')} {sd.get(KEYS['stage'])} rejected with {u['code']}")
        elif req.get("status") == "IN_PROGRESS":
            records.append((sd.get(KEYS["stage"]), sd.get(KEYS["progress"])))
    p, story = stage_story(records, numeric_progress=False)
    return problems + p, story


def start_story(ex, srv):
    """How the execution reached the device: notify-next, then start-next."""
    if not ex.starts:
        return ["the device never sent start-next for it"], "no start-next"
    parts = []
    problems = []
    if ex.notified:
        parts.append(f"notify-next -> start-next after {ex.starts[0] - ex.notified[0]:.2f} s")
        if ex.starts[0] < ex.notified[0]:
            problems.append("start-next before notify-next")
    else:
        parts.append("started without a notify-next (another job was pending)")
    return problems, "; ".join(parts)


def terminal_details(ex):
    u = ex.terminal_update()
    if u is None:
        return None, {}
    sd = u["req"].get("statusDetails")
    return u["req"].get("status"), sd if isinstance(sd, dict) else {}


def telemetry_during(srv, device, t_from, t_to):
    states = []
    for t, p in srv.telemetry.get(device, []):
        if t_from <= t <= t_to:
            s = tel_get(p, KEYS["tel_ota"])
            if s is not None and (not states or states[-1] != s):
                states.append(s)
    return states


def telemetry_after(srv, device, t_after, want_fw, want_slot, n=2, timeout=None):
    """(ok, detail): the device's telemetry after t_after: n messages, the latest (by seq) with
    fw want_fw, slot want_slot, ota idle."""
    timeout = timeout if timeout is not None else n * LAB["telemetry_every_s"] + 6
    srv.wait(lambda: sum(1 for t, _ in srv.telemetry.get(device, []) if t > t_after) >= n, timeout)
    with srv.cond:
        msgs = [p for t, p in srv.telemetry.get(device, []) if t > t_after]
    if not msgs:
        return False, f"no telemetry from {device} within {timeout:.0f} s"
    seqs = [tel_get(p, KEYS["tel_seq"]) for p in msgs]
    latest = max(msgs, key=lambda p: tel_get(p, KEYS["tel_seq"]) if isinstance(tel_get(p, KEYS["tel_seq"]), int)
                 else -1) if all(isinstance(s, int) for s in seqs) else msgs[-1]
    got = tuple(tel_get(latest, KEYS[k]) for k in ("tel_fw", "tel_slot", "tel_ota"))
    want = (want_fw, want_slot, KEYS["ota_idle"])
    ok = len(msgs) >= n and got == want
    seen = "; ".join(f"{tel_get(p, KEYS['tel_fw'])}/{tel_get(p, KEYS['tel_slot'])}/{tel_get(p, KEYS['tel_ota'])}"
                     for p in msgs[:4])
    return ok, (f"telemetry afterwards ({len(msgs)} messages, want {n}): latest fw {got[0]}, slot {got[1]}, ota "
                f"{got[2]} (want {want[0]} / {want[1]} / {want[2]}); fw/slot/ota seen: {seen}")


class Lines:
    """PASS/FAIL lines of one thread, emitted later in a fixed order."""

    def __init__(self, r):
        self.r = r
        self.lines = []

    def add(self, name, fn):
        ok, detail = run_check(fn)
        self.lines.append(self.r.line(name, ok, detail))
        return ok


class Live:
    def __init__(self, args, r, srv, fw, proc_alive):
        self.args = args
        self.r = r
        self.srv = srv
        self.fw = fw
        self.alive = proc_alive
        self.results = {}  # facts for the report check

    def wait_terminal_aws(self, ex):
        self.srv.wait(lambda: ex.status in TERMINAL, self.args.job_timeout)
        if ex.status not in TERMINAL:
            with self.srv.cond:
                last = ex.updates[-1]["req"] if ex.updates else None
            raise Skip(f"job {ex.job_id} for {ex.thing} not finished within {self.args.job_timeout:.0f} s: "
                       f"{ex.status}, {len(ex.updates)} updates, last {short(last) if last else '-'}"
                       + ("" if self.alive() else " (the fleet process has ended)")
                       + ("" if ex.starts else "; the device never sent start-next for it"))

    def wait_terminal_generic(self, device, job_id):
        self.srv.wait(lambda: self.srv.generic_terminal(device, job_id) is not None, self.args.job_timeout)
        term = self.srv.generic_terminal(device, job_id)
        if term is None:
            msgs = self.srv.generic.get((device, job_id), [])
            raise Skip(f"job {job_id} for {device}: no SUCCEEDED/FAILED/REJECTED status within "
                       f"{self.args.job_timeout:.0f} s; {len(msgs)} statuses"
                       + (f", last {short(msgs[-1][1])}" if msgs else "")
                       + ("" if self.alive() else " (the fleet process has ended)"))
        return term

    # ---- 1. ---------------------------------------------------------------------------------
    def aws_happy(self, lines):
        thing, good = "lab-000", LAB["good"]
        box = {}

        def job():
            ex = self.srv.queue_aws(thing, "g1-happy", firmware_doc(good))
            box["ex"] = ex
            self.wait_terminal_aws(ex)
            with self.srv.cond:
                problems, story = aws_updates_story(ex)
                p2, how = start_story(ex, self.srv)
                status, sd = terminal_details(ex)
                during = telemetry_during(self.srv, thing, ex.t_queued, ex.t_terminal)
                expected = sum(1 for u in ex.updates if u["req"].get("expectedVersion") is not None)
            problems += p2
            want = {KEYS["stage"]: KEYS["stage_committed"], KEYS["version"]: good, KEYS["slot"]: LAB["good_slot"]}
            bad = {k: sd.get(k) for k, v in want.items() if sd.get(k) != v}
            if status != "SUCCEEDED" or bad:
                problems.append(f"ended {status} with {short(sd)} (want SUCCEEDED with {want})")
            return not problems, (f"{thing} job {good}: {how}; {len(ex.updates)} updates ({story}), ended {status} "
                                  f"{short(sd, 160)}; expectedVersion on {expected}/{len(ex.updates)}; telemetry "
                                  f"ota during: {'/'.join(map(str, during)) or '-'}"
                                  + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        ok = lines.add("1 aws happy path lab-000 (1.1.0)", job)
        ex = box.get("ex")
        if ex is not None and ex.t_terminal is not None:
            lines.add("1 aws happy path lab-000 telemetry after",
                      lambda: telemetry_after(self.srv, thing, ex.t_terminal, good, LAB["good_slot"]))
        else:
            lines.add("1 aws happy path lab-000 telemetry after", lambda: (False, "the job did not finish"))
        return ok

    # ---- 2. ---------------------------------------------------------------------------------
    def aws_bad(self, lines):
        thing, bad_v = "lab-001", LAB["bad"]
        box = {}

        def job():
            ex = self.srv.queue_aws(thing, "g2-bad-release", firmware_doc(bad_v))
            box["ex"] = ex
            self.wait_terminal_aws(ex)
            with self.srv.cond:
                problems, story = aws_updates_story(ex)
                status, sd = terminal_details(ex)
            # A rolled-back update need not reach every stage (the image never boots).
            problems = [p for p in problems if not p.startswith("no ")]
            reason = sd.get(KEYS["reason"])
            want = {KEYS["stage"]: KEYS["stage_rolled_back"], KEYS["version"]: LAB["installed"],
                    KEYS["slot"]: LAB["installed_slot"]}
            wrong = {k: sd.get(k) for k, v in want.items() if sd.get(k) != v}
            if status != "FAILED" or wrong:
                problems.append(f"ended {status} with {short(sd)} (want FAILED with {want})")
            if not isinstance(reason, str) or not BOOT_REASON.search(reason):
                problems.append(f"reason {reason!r} does not mention the boot attempts")
            return not problems, (f"{thing} job {bad_v}: {len(ex.updates)} updates ({story}), ended {status}, "
                                  f"stage {sd.get(KEYS['stage'])}, version {sd.get(KEYS['version'])}, slot "
                                  f"{sd.get(KEYS['slot'])}, reason {reason!r}"
                                  + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("2 aws bad release lab-001 (1.2.0) rolls back", job)
        ex = box.get("ex")
        if ex is not None and ex.t_terminal is not None:
            lines.add("2 aws bad release lab-001 telemetry after",
                      lambda: telemetry_after(self.srv, thing, ex.t_terminal, LAB["installed"], LAB["installed_slot"]))
        else:
            lines.add("2 aws bad release lab-001 telemetry after", lambda: (False, "the job did not finish"))

    # ---- 3. ---------------------------------------------------------------------------------
    def aws_retry(self, lines):
        thing, good = "lab-002", LAB["good"]

        def job():
            ex = self.srv.queue_aws(thing, "g3-retry", firmware_doc(good), bump=True)
            self.wait_terminal_aws(ex)
            with self.srv.cond:
                updates = list(ex.updates)
                status, sd = terminal_details(ex)
                gets = len(ex.gets)
                _, story = aws_updates_story(ex)
            problems = []
            if ex.bumped is None:
                return False, "the server never bumped the versionNumber (no start-next?)"
            given, now = ex.bumped
            i = next((k for k, u in enumerate(updates) if u["outcome"] == "rejected"), None)
            if i is None:
                return False, (f"start-next gave versionNumber {given}, the server bumped it to {now}, but no update "
                               f"was rejected: expectedVersion of the first update "
                               f"{updates[0]['req'].get('expectedVersion') if updates else '-'} (want {given}); "
                               f"ended {status}")
            rej = updates[i]
            rq = rej["req"]
            rsd = rq.get("statusDetails") if isinstance(rq.get("statusDetails"), dict) else {}
            if rej["code"] != "VersionMismatch":
                problems.append(f"the first rejection was {rej['code']}, not VersionMismatch")
            if rq.get("expectedVersion") != given:
                problems.append(f"the rejected update had expectedVersion {rq.get('expectedVersion')} (the device "
                                f"was given {given})")
            if i + 1 >= len(updates):
                return False, f"update #{i + 1} rejected with {rej['code']}, nothing sent after it; ended {status}"
            nxt = updates[i + 1]
            nq = nxt["req"]
            nsd = nq.get("statusDetails") if isinstance(nq.get("statusDetails"), dict) else {}
            same = (nq.get("status") == rq.get("status") and
                    all(nsd.get(KEYS[k]) == rsd.get(KEYS[k]) for k in ("stage", "progress")))
            if nxt["outcome"] != "accepted":
                problems.append(f"the update after the rejection was rejected too ({nxt['code']}, expectedVersion "
                                f"{nq.get('expectedVersion')}, the execution's versionNumber "
                                f"{nxt['version_before']})")
            if not same:
                problems.append(f"the update after the rejection is not the rejected one again: "
                                f"{nq.get('status')} {short(nsd, 120)} vs {rq.get('status')} {short(rsd, 120)}")
            other = [u["code"] for k, u in enumerate(updates) if u["outcome"] == "rejected" and k != i]
            if other:
                problems.append(f"more rejections: {other}")
            if status != "SUCCEEDED":
                problems.append(f"ended {status}, not SUCCEEDED")
            return not problems, (
                f"{thing}: start-next gave versionNumber {given}, the server bumped it to {now}; update #{i + 1} "
                f"({rq.get('status')} {rsd.get(KEYS['stage'])} {rsd.get(KEYS['progress'])}, expectedVersion "
                f"{rq.get('expectedVersion')}) -> {rej['code']}; next update: {nq.get('status')} "
                f"{nsd.get(KEYS['stage'])} {nsd.get(KEYS['progress'])}, expectedVersion {nq.get('expectedVersion')}"
                f" -> {nxt['outcome']}; {gets} get request(s); {len(updates)} updates ({story}); ended {status}"
                + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("3 aws rejected update retried lab-002", job)

    # ---- 4. and 5. --------------------------------------------------------------------------
    def aws_unknown_then_http(self, lines):
        thing = "lab-003"

        def unknown():
            ex = self.srv.queue_aws(thing, "g4-unknown", firmware_doc(LAB["unknown"]))
            self.wait_terminal_aws(ex)
            with self.srv.cond:
                status, sd = terminal_details(ex)
                stages = [u["req"].get("statusDetails", {}).get(KEYS["stage"]) for u in ex.updates
                          if isinstance(u["req"].get("statusDetails"), dict)]
            reason = sd.get(KEYS["reason"])
            problems = []
            if status != "REJECTED":
                problems.append(f"ended {status}, want REJECTED")
            if not isinstance(reason, str) or not reason.strip():
                problems.append(f"no reason (statusDetails {short(sd)})")
            if KEYS["stages"][0] in stages:
                problems.append("it started downloading")
            return not problems, (f"{thing} job {LAB['unknown']}: {len(ex.updates)} updates, ended {status} with "
                                  f"reason {reason!r}" + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("4 aws unknown version lab-003 (7.7.7) rejected", unknown)

        box = {}

        def download():
            img = self.fw.images["/fw/lab-fw-1.1.0-aws.bin"]
            ex = self.srv.queue_aws(thing, "g5-http", firmware_doc(LAB["good"], img, self.fw))
            box["ex"] = ex
            self.wait_terminal_aws(ex)
            with self.srv.cond:
                problems, story = aws_updates_story(ex)
                status, sd = terminal_details(ex)
            entries = self.fw.entries(img.path)
            size = len(img.data)
            desc = "; ".join(
                f"GET {e['range'] or '(no Range)'} -> {e['status']} {e['sent']} B" + (" CUT" if e["dropped"] else "")
                for e in entries)
            cut = next((e for e in entries if e["dropped"]), None)
            if cut is None:
                problems.append("no GET got as far as the cut" if entries else "the device never fetched the url")
            else:
                have = cut["start"] + cut["sent"]
                after = [e for e in entries if e["t"] > cut["t"]]
                resume = next((e for e in after if e["range"] and e["start"] and 0 < e["start"] <= have), None)
                if resume is None:
                    problems.append(f"no request after the cut resumed with Range: bytes=N- (0 < N <= {have}, what it "
                                    f"had)")
                elif resume["start"] != have:
                    note(f"{thing} resumed from {resume['start']}, before the {have} bytes it had (allowed)")
                done = [e for e in after if e["status"] in (200, 206) and e["start"] + e["sent"] == size
                        and not e["dropped"] and e["sent"] == e["length"]]
                if not done:
                    problems.append("no request after the cut delivered the rest of the image")
            want = {KEYS["stage"]: KEYS["stage_committed"], KEYS["version"]: LAB["good"], KEYS["slot"]: LAB["good_slot"]}
            wrong = {k: sd.get(k) for k, v in want.items() if sd.get(k) != v}
            if status != "SUCCEEDED" or wrong:
                problems.append(f"ended {status} with {short(sd)} (want SUCCEEDED with {want})")
            self.results["http_requests_aws"] = len(entries)
            return not problems, (f"{thing} job {LAB['good']} from {img.path} ({size} B, cut after "
                                  f"{img.drop_at} B): {len(entries)} requests: {desc}; {len(ex.updates)} updates "
                                  f"({story}); ended {status} {short(sd, 140)}"
                                  + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("5 aws http download resumed lab-003 (1.1.0 + url)", download)
        ex = box.get("ex")
        if ex is not None and ex.t_terminal is not None:
            lines.add("5 aws http download lab-003 telemetry after",
                      lambda: telemetry_after(self.srv, thing, ex.t_terminal, LAB["good"], LAB["good_slot"]))
        else:
            lines.add("5 aws http download lab-003 telemetry after", lambda: (False, "the job did not finish"))

    # ---- 6. ---------------------------------------------------------------------------------
    def generic_story(self, device, job_id, t0):
        """(problems, summary, terminal status payload) of a generic job's statuses."""
        with self.srv.cond:
            msgs = [p for _, p in self.srv.generic.get((device, job_id), [])]
        problems = []
        records = []
        for p in msgs:
            if p.get(KEYS["g_device"]) != device:
                problems.append(f"{KEYS['g_device']} {p.get(KEYS['g_device'])!r}")
            st = p.get(KEYS["g_status"])
            if st not in AWS_STATUSES:
                problems.append(f"status {st!r}")
            if not isinstance(p.get(KEYS["g_ts"]), (int, float)):
                problems.append(f"{KEYS['g_ts']} {p.get(KEYS['g_ts'])!r} is not a number")
            if st == "IN_PROGRESS":
                records.append((p.get(KEYS["stage"]), p.get(KEYS["progress"])))
        problems = list(dict.fromkeys(problems))
        return problems, records, msgs

    def generic_happy(self, lines):
        device, job_id, good = "lab-004", "g6-generic-happy", LAB["good"]
        box = {}

        def job():
            t0 = time.monotonic()
            self.srv.queue_generic(device, job_id, {KEYS["doc_version"]: good})
            t_term, term = self.wait_terminal_generic(device, job_id)
            box["t"] = t_term
            problems, records, msgs = self.generic_story(device, job_id, t0)
            p2, story = stage_story(records, numeric_progress=True)
            problems += p2
            want = {KEYS["g_status"]: "SUCCEEDED", KEYS["stage"]: KEYS["stage_committed"], KEYS["version"]: good,
                    KEYS["target"]: good, KEYS["slot"]: LAB["good_slot"]}
            wrong = {k: term.get(k) for k, v in want.items() if term.get(k) != v}
            if wrong:
                problems.append(f"terminal status {short(term)} (want {want})")
            return not problems, (f"{device} job {good}: {len(msgs)} statuses ({story}), ended "
                                  f"{short(term, 200)}" + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("6 generic happy path lab-004 (1.1.0)", job)
        if "t" in box:
            lines.add("6 generic happy path lab-004 telemetry after",
                      lambda: telemetry_after(self.srv, device, box["t"], good, LAB["good_slot"]))
        else:
            lines.add("6 generic happy path lab-004 telemetry after", lambda: (False, "the job did not finish"))

    def generic_sha_then_unknown(self, lines):
        device = "lab-005"
        box = {}

        def bad_sha():
            img = self.fw.images["/fw/lab-fw-1.1.0-generic.bin"]
            doc = firmware_doc(LAB["good"], img, self.fw, sha256=flip_hex(img.sha256))
            doc.pop(KEYS["doc_operation"], None)
            job_id = "g6-generic-bad-sha"
            t0 = time.monotonic()
            self.srv.queue_generic(device, job_id, doc)
            t_term, term = self.wait_terminal_generic(device, job_id)
            box["t"] = t_term
            problems, records, msgs = self.generic_story(device, job_id, t0)
            entries = self.fw.entries(img.path)
            got = sum(e["sent"] for e in entries)
            st, stage, reason = term.get(KEYS["g_status"]), term.get(KEYS["stage"]), term.get(KEYS["reason"])
            if st != "FAILED" or stage != KEYS["stage_verify"]:
                problems.append(f"ended {st} at stage {stage} (want FAILED at {KEYS['stage_verify']})")
            if not isinstance(reason, str) or not reason.strip():
                problems.append("no reason")
            if not entries:
                problems.append("the device never fetched the url")
            self.results["http_requests_generic"] = len(entries)
            return not problems, (f"{device} job {LAB['good']} with url + size right, sha256 wrong: {len(entries)} "
                                  f"GET(s), {got} of {len(img.data)} B served; {len(msgs)} statuses (stages "
                                  f"{'/'.join(dict.fromkeys(str(s) for s, _ in records)) or '-'}); ended {st} "
                                  f"at {stage}, reason {reason!r}"
                                  + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("6 generic wrong sha256 lab-005 fails verifying", bad_sha)
        if "t" in box:
            lines.add("6 generic wrong sha256 lab-005 telemetry after",
                      lambda: telemetry_after(self.srv, device, box["t"], LAB["installed"], LAB["installed_slot"]))
        else:
            lines.add("6 generic wrong sha256 lab-005 telemetry after", lambda: (False, "the job did not finish"))

        def unknown():
            job_id = "g6-generic-unknown"
            t0 = time.monotonic()
            self.srv.queue_generic(device, job_id, {KEYS["doc_version"]: LAB["unknown"]})
            t_term, term = self.wait_terminal_generic(device, job_id)
            problems, records, msgs = self.generic_story(device, job_id, t0)
            st, reason = term.get(KEYS["g_status"]), term.get(KEYS["reason"])
            if st != "REJECTED":
                problems.append(f"ended {st}, want REJECTED")
            if not isinstance(reason, str) or not reason.strip():
                problems.append("no reason")
            if records:
                problems.append(f"{len(records)} IN_PROGRESS statuses before")
            return not problems, (f"{device} job {LAB['unknown']}: {len(msgs)} statuses, ended {st}, reason "
                                  f"{reason!r}" + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

        lines.add("6 generic unknown version lab-005 (7.7.7) rejected", unknown)


def flip_hex(h):
    return ("0" if h[0] != "0" else "1") + h[1:]


def firmware_doc(version, img=None, fw=None, sha256=None):
    doc = {KEYS["doc_operation"]: KEYS["doc_operation_value"], KEYS["doc_version"]: version}
    if img is not None:
        doc[KEYS["doc_url"]] = fw.url(img.path)
        doc[KEYS["doc_size"]] = len(img.data)
        doc[KEYS["doc_sha256"]] = sha256 or img.sha256
    return doc


# ---------------------------------------------------------------------------- the report ----

def server_counts(srv, fw):
    """What the server saw, in the report's terms."""
    with srv.cond:
        aws_execs = [ex for execs in srv.execs.values() for ex in execs]
        received = sum(1 for ex in aws_execs if ex.starts) + len(srv.generic_jobs)
        finals = [ex.status for ex in aws_execs if ex.starts]
        rolled = sum(1 for ex in aws_execs if ex.status == "FAILED"
                     and terminal_details(ex)[1].get(KEYS["stage"]) == KEYS["stage_rolled_back"])
        succeeded_devices = {ex.thing for ex in aws_execs if ex.status == "SUCCEEDED"}
        for (dev, job_id) in srv.generic_jobs:
            term = srv.generic_terminal(dev, job_id)
            st = term[1].get(KEYS["g_status"]) if term else (
                "IN_PROGRESS" if srv.generic.get((dev, job_id)) else "UNANSWERED")
            finals.append(st)
            if st == "SUCCEEDED":
                succeeded_devices.add(dev)
            if st == "FAILED" and term[1].get(KEYS["stage"]) == KEYS["stage_rolled_back"]:
                rolled += 1
        vm = srv.rejections_sent.get("VersionMismatch", 0)
    with fw.lock:
        gets = [e for e in fw.log if e["method"] == "GET"]
    return {
        "jobs_received": received,
        "accepted": sum(1 for s in finals if s in ("SUCCEEDED", "FAILED", "IN_PROGRESS")),
        "rejected": finals.count("REJECTED"),
        "succeeded": finals.count("SUCCEEDED"),
        "failed": finals.count("FAILED"),
        "rolled_back": rolled,
        "version_mismatch_sent": vm,
        "http_requests": len(gets),
        "http_bytes": sum(e["sent"] for e in gets),
        "http_resumes": sum(1 for e in gets if e["start"]),
        "image_size": max((len(i.data) for i in fw.images.values()), default=0),
        "succeeded_devices": sorted(succeeded_devices),
        "finals": finals,
    }


def report_checks(r, args, exit_code, seen):
    r.check("7 fleetsim exit", exit_code == 0, f"{exit_code} (want 0: SLOs met)")
    try:
        with open(args.report) as f:
            report = json.load(f)
        ota = report[KEYS["r_section"]]
        if not isinstance(ota, dict):
            raise TypeError(f"{KEYS['r_section']} is {type(ota).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        r.check(f"7 report {KEYS['r_section']} counters", False, f"{args.report}: {type(e).__name__}: {e}")
        return
    k = KEYS

    def count():
        pairs = [("jobs_received", "r_jobs_received"), ("accepted", "r_accepted"), ("rejected", "r_rejected"),
                 ("succeeded", "r_succeeded"), ("failed", "r_failed"), ("rolled_back", "r_rolled_back")]
        wrong = []
        parts = []
        for mine, key in pairs:
            got = ota.get(k[key])
            parts.append(f"{k[key]} {got} ({seen[mine]})")
            if got != seen[mine]:
                wrong.append(k[key])
        return not wrong, (f"report (server): {', '.join(parts)}"
                           + (f"; WRONG: {', '.join(wrong)}" if wrong else ""))

    def rejections():
        rej, ret = ota.get(k["r_update_rejections"]), ota.get(k["r_update_retries"])
        ok = isinstance(rej, int) and isinstance(ret, int) and rej >= 1 and ret >= 1
        return ok, (f"{k['r_update_rejections']} {rej} (want >= 1; the server sent {seen['version_mismatch_sent']} "
                    f"VersionMismatch), {k['r_update_retries']} {ret} (want >= 1)")

    def http():
        h = ota.get(k["r_http"])
        if not isinstance(h, dict):
            return False, f"{k['r_http']} is {h!r}"
        req, byt, res = h.get(k["r_http_requests"]), h.get(k["r_http_bytes"]), h.get(k["r_http_resumes"])
        ok = (isinstance(req, int) and req >= 2 and isinstance(res, int) and res >= 1 and isinstance(byt, int)
              and seen["image_size"] <= byt <= seen["http_bytes"])
        return ok, (f"{k['r_http']}.{k['r_http_requests']} {req} (want >= 2; the server answered "
                    f"{seen['http_requests']} GETs), {k['r_http_resumes']} {res} (want >= 1; the server saw "
                    f"{seen['http_resumes']} with Range: bytes=N-, N > 0), {k['r_http_bytes']} {byt} (want "
                    f"{seen['image_size']}..{seen['http_bytes']}: one whole image .. all the server sent)")

    def versions():
        v = ota.get(k["r_versions"])
        if not isinstance(v, dict):
            return False, f"{k['r_versions']} is {v!r}"
        good = k["r_version_key"].format(model=LAB["model"], version=LAB["good"])
        old = k["r_version_key"].format(model=LAB["model"], version=LAB["installed"])
        n_good = len(seen["succeeded_devices"])
        n_all = len(LAB["aws"]) + len(LAB["generic"])
        others = {key: n for key, n in v.items() if key not in (good, old) and n}
        ok = v.get(good) == n_good and v.get(old) == n_all - n_good and not others
        return ok, (f"{k['r_versions']} {short(v)}: want {good!r}: {n_good} (the devices that succeeded: "
                    f"{', '.join(seen['succeeded_devices']) or '-'}), {old!r}: {n_all - n_good}"
                    + (f", nothing else (got {others})" if others else ""))

    r.check("7 report ota job counts", *run_check(count))
    r.check("7 report ota update rejections and retries", *run_check(rejections))
    r.check("7 report ota http", *run_check(http))
    r.check("7 report ota versions", *run_check(versions))


# ------------------------------------------------------------------------------- live ----

def import_paho():
    import paho.mqtt.client as mqtt
    import paho.mqtt
    return mqtt, paho.mqtt.__version__


def cmd_live(args):
    r = Results(args.test)
    t_start = time.monotonic()
    if not args.command:
        r.check("0 setup", False, "no fleet command after --")
        return r
    try:
        mqtt, paho_version = import_paho()
    except ImportError as e:
        r.check("0 setup", False, f"cannot import paho-mqtt: {e}")
        return r
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="ota-interop.")
    os.makedirs(log_dir, exist_ok=True)
    name = args.name
    srv = JobServer(mqtt, "127.0.0.1", args.port, traffic_path=os.path.join(log_dir, f"{name}-traffic.txt"))
    fw = FirmwareServer(log_path=os.path.join(log_dir, f"{name}-http.txt"))
    rnd = random.Random(20260101)
    fw.add("/fw/lab-fw-1.1.0-aws.bin", rnd.randbytes(IMAGE_SIZE), DROP_FRACTION)
    fw.add("/fw/lab-fw-1.1.0-generic.bin", rnd.randbytes(IMAGE_SIZE))
    try:
        srv.start()
    except Exception as e:
        r.check("0 setup", False, f"job server on 127.0.0.1:{args.port}: {type(e).__name__}: {e}")
        return r
    fw.start()
    note(f"job server (paho-mqtt {paho_version}) subscribed on 127.0.0.1:{args.port}; firmware HTTP server on "
         f"127.0.0.1:{fw.port}; logs in {log_dir}/{name}-*")

    out_path = os.path.join(log_dir, f"{name}.out")
    err_path = os.path.join(log_dir, f"{name}.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(args.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    note(f"started {' '.join(args.command)} (pid {proc.pid})")

    def alive():
        return proc.poll() is None

    srv.abort = lambda: not alive()

    def stop_proc(sig=None, frame=None):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if sig is not None:
            sys.exit(130)

    signal.signal(signal.SIGTERM, stop_proc)
    exit_code = None
    try:
        exit_code = live_checks(r, args, srv, fw, alive)
        # The fleet ends by its --duration; bounded.
        try:
            exit_code = proc.wait(max(1.0, args.run_timeout - (time.monotonic() - t_start)))
        except subprocess.TimeoutExpired:
            r.check("7 fleet ends", False, f"still running {args.run_timeout:.0f} s after it started: interrupted")
            stop_proc()
            exit_code = proc.returncode
        note(f"the fleet process exited {exit_code} after {time.monotonic() - t_start:.1f} s")
        seen = server_counts(srv, fw)
        note("server saw: " + ", ".join(f"{k} {v}" for k, v in seen.items() if k not in ("finals",))
             + f"; requests {dict(srv.requests)}; rejections sent {dict(srv.rejections_sent)}")
        with open(os.path.join(log_dir, f"{name}-server.json"), "w") as f:
            json.dump({"seen": seen, "requests": srv.requests, "rejections_sent": srv.rejections_sent,
                       "problems": srv.problems}, f, indent=1)
        report_checks(r, args, exit_code, seen)
        if exit_code != 0:
            for path in (out_path, err_path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f.read().splitlines()[-12:]:
                        print(f"   | {line}", flush=True)
    finally:
        stop_proc()
        srv.stop()
        fw.stop()
    note(f"({args.test} took {time.monotonic() - t_start:.1f} s)")
    return r


def live_checks(r, args, srv, fw, alive):
    devices = LAB["aws"] + LAB["generic"]
    online_key = KEYS["status_online"]

    def online():
        return all(d in srv.status and srv.status[d][1].get(online_key) is True for d in devices)

    t0 = time.monotonic()
    srv.wait(online, args.online_timeout)
    with srv.cond:
        got = {d: srv.status[d][1].get(online_key) for d in devices if d in srv.status}
        others = sorted(set(srv.status) - set(devices))
    ok = online()
    r.check("0 fleet online", ok, (f"{sum(1 for v in got.values() if v is True)} of {len(devices)} devices "
                                   f"online after {time.monotonic() - t0:.1f} s (want all within "
                                   f"{args.online_timeout:.0f} s; status {online_key}: {got}); others: "
                                   f"{others or 'none'}" + ("" if alive() else "; the fleet process has ended")))
    if not ok:
        return None

    def baseline():
        srv.wait(lambda: all(srv.telemetry.get(d) for d in devices), LAB["telemetry_every_s"] * 2 + 4)
        with srv.cond:
            firsts = {d: srv.telemetry[d][0][1] for d in devices if srv.telemetry.get(d)}
        want = (LAB["installed"], LAB["installed_slot"], KEYS["ota_idle"])
        wrong = {}
        for d in devices:
            p = firsts.get(d)
            got = tuple(tel_get(p, KEYS[k]) for k in ("tel_fw", "tel_slot", "tel_ota")) if p else None
            if got != want:
                wrong[d] = got
        return not wrong, (f"first telemetry of {len(firsts)}/{len(devices)} devices says fw/slot/ota "
                           f"{'/'.join(want)}" + (f"; WRONG: {wrong}" if wrong else "")
                           + (f"; e.g. {short(firsts[devices[0]], 200)}" if devices[0] in firsts else ""))

    def start_next_on_connect():
        things = LAB["aws"]
        srv.wait(lambda: all(srv.start_next.get(t) for t in things), 10)
        with srv.cond:
            asked = {t: len(srv.start_next.get(t, [])) for t in things}
            bad = [t for t in things for (_, req, _) in srv.start_next.get(t, [])
                   if req is None or not isinstance(req.get("clientToken"), str)]
        ok = all(asked.values()) and not bad
        return ok, (f"start-next requests (answered without an execution) per thing: {asked}"
                    + (f"; without a string clientToken: {sorted(set(bad))}" if bad else ""))

    r.check("0 baseline telemetry", *run_check(baseline))
    r.check("0 aws start-next on connect", *run_check(start_next_on_connect))

    live = Live(args, r, srv, fw, alive)
    plan = [live.aws_happy, live.aws_bad, live.aws_retry, live.aws_unknown_then_http,
            live.generic_happy, live.generic_sha_then_unknown]
    outs = [Lines(r) for _ in plan]
    threads = [threading.Thread(target=fn, args=(out,), daemon=True) for fn, out in zip(plan, outs)]
    t1 = time.monotonic()
    for th in threads:
        th.start()
    limit = t1 + 2 * args.job_timeout + 3 * (2 * LAB["telemetry_every_s"] + 6) + 10
    for th in threads:
        th.join(max(0.0, limit - time.monotonic()))
    for out, th, fn in zip(outs, threads, plan):
        for ok, text in out.lines:
            r.emit(ok, text)
        if th.is_alive():
            r.check(f"{fn.__name__}", False, "the check thread did not finish in time")
    note(f"jobs took {time.monotonic() - t1:.1f} s (all devices at once)")

    def hygiene():
        with srv.cond:
            problems = list(srv.problems)
            n = sum(srv.requests.values())
        return not problems, (f"{n} job requests/statuses from the fleet ({dict(srv.requests)}), all JSON objects "
                              f"on served topics" if not problems else
                              f"{len(problems)} problem(s): {'; '.join(problems[:5])}")

    r.check("0 fleet messages well-formed", *run_check(hygiene))
    return None


# -------------------------------------------------------------------------- self-test ----

SELF_FAULTS = {  # the fake's faults (--faults all) and the checks each one must fail
    "1 aws happy path lab-000 (1.1.0)": "stage-order",
    "2 aws bad release lab-001 (1.2.0) rolls back": "no-boot-reason",
    "3 aws rejected update retried lab-002": "no-retry",
    "4 aws unknown version lab-003 (7.7.7) rejected": "silent-reject",
    "5 aws http download resumed lab-003 (1.1.0 + url)": "no-resume",
    "6 generic happy path lab-004 (1.1.0)": "progress-back",
    "6 generic wrong sha256 lab-005 fails verifying": "ignore-sha",
    "6 generic wrong sha256 lab-005 telemetry after": "ignore-sha (it ends on 1.1.0)",
    "6 generic unknown version lab-005 (7.7.7) rejected": "ignore-unknown (a bounded wait)",
    "7 report ota job counts": "report-off (and ignore-sha, ignore-unknown)",
    "7 report ota update rejections and retries": "no-retry (no retries)",
    "7 report ota http": "no-resume (no resumes)",
    "7 report ota versions": "versions-at-start",
}


def find_mosquitto():
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Broker:
    def __init__(self, mosquitto, tmp, name):
        self.port = free_port()
        conf = os.path.join(tmp, f"{name}-mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n"
                    "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                    "connection_messages true\n")
        self.log = open(os.path.join(tmp, f"{name}-mosquitto.log"), "wb")
        self.proc = subprocess.Popen([mosquitto, "-c", conf], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{self.port} (see {name}-mosquitto.log)")
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def selftest_server(r, mqtt, port):
    """The server's AWS rules, driven by a probe client on thing "probe-1"."""
    srv = JobServer(mqtt, "127.0.0.1", port, client_id="ota-selftest-server")
    srv.start()
    got = []
    cond = threading.Condition()
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ota-selftest-probe", protocol=mqtt.MQTTv311)

    def on_message(client, userdata, msg):
        with cond:
            got.append((msg.topic, json.loads(msg.payload)))
            cond.notify_all()

    subscribed = threading.Event()
    probe.on_message = on_message
    probe.on_subscribe = lambda *a: subscribed.set()
    thing = "probe-1"
    base = aws(thing, "")
    probe.connect("127.0.0.1", port, keepalive=30)
    probe.loop_start()
    probe.subscribe([(base + "notify-next", 1), (base + "start-next/+", 1), (base + "+/update/+", 1),
                     (base + "+/get/+", 1)])
    try:
        if not subscribed.wait(10):
            r.check("server: probe", False, "the probe's SUBSCRIBE was not acknowledged within 10 s")
            return

        def ask(topic_rest, body, want_rest):
            with cond:
                n = len(got)
            probe.publish(base + topic_rest, jdump(body), qos=1)
            return expect(want_rest, n)

        def expect(want_rest, n):
            deadline = time.monotonic() + 5
            with cond:
                while True:
                    for topic, payload in got[n:]:
                        if topic == base + want_rest:
                            return payload
                    left = deadline - time.monotonic()
                    if left <= 0:
                        later = [t[len(base):] for t, _ in got[n:]]
                        raise Skip(f"no message on {want_rest} within 5 s (got {later})")
                    cond.wait(left)

        def case(name, fn):
            r.check(f"server: {name}", *run_check(fn))

        case("start-next with nothing queued", lambda: (lambda a: (
            "execution" not in a and a.get("clientToken") == "t0", f"start-next/accepted {short(a)}"))(
            ask("start-next", {"clientToken": "t0"}, "start-next/accepted")))

        def notify():
            with cond:
                n = len(got)
            srv.queue_aws(thing, "j1", {"operation": "firmware_update", "version": "1.1.0"})
            m = expect("notify-next", n)
            e = m.get("execution", {})
            return (e.get("jobId") == "j1" and e.get("status") == "QUEUED" and e.get("jobDocument", {}).get("version")
                    == "1.1.0" and isinstance(e.get("versionNumber"), int)), f"notify-next {short(m)}"

        case("queue -> notify-next (QUEUED, jobDocument)", notify)
        box = {}

        def start():
            a = ask("start-next", {"clientToken": "t1", "statusDetails": {"stage": "queued"}}, "start-next/accepted")
            e = a.get("execution", {})
            box["v"] = e.get("versionNumber")
            return (e.get("jobId") == "j1" and e.get("status") == "IN_PROGRESS" and a.get("clientToken") == "t1"
                    and e.get("statusDetails") == {"stage": "queued"} and "startedAt" in e), f"{short(a)}"

        case("start-next -> IN_PROGRESS", start)
        v = box.get("v") or 0

        def mismatch():
            a = ask("j1/update", {"status": "IN_PROGRESS", "statusDetails": {"stage": "downloading"},
                                  "expectedVersion": v - 1, "clientToken": "t2"}, "j1/update/rejected")
            es = a.get("executionState", {})
            return (a.get("code") == "VersionMismatch" and es.get("versionNumber") == v
                    and a.get("clientToken") == "t2"), short(a)

        def accepted():
            a = ask("j1/update", {"status": "IN_PROGRESS", "statusDetails": {"stage": "downloading", "progress": "0"},
                                  "expectedVersion": v, "includeJobExecutionState": True, "clientToken": "t3"},
                    "j1/update/accepted")
            es = a.get("executionState", {})
            return (es.get("versionNumber") == v + 1 and es.get("status") == "IN_PROGRESS"
                    and es.get("statusDetails", {}).get("progress") == "0"), short(a)

        def no_state():
            a = ask("j1/update", {"status": "IN_PROGRESS", "statusDetails": {"stage": "verifying"},
                                  "clientToken": "t4"}, "j1/update/accepted")
            return "executionState" not in a, f"without includeJobExecutionState (and expectedVersion): {short(a)}"

        def non_string():
            a = ask("j1/update", {"status": "IN_PROGRESS", "statusDetails": {"progress": 40},
                                  "clientToken": "t5"}, "j1/update/rejected")
            return a.get("code") == "InvalidRequest", short(a)

        def bad_status():
            a = ask("j1/update", {"status": "CANCELED", "clientToken": "t6"}, "j1/update/rejected")
            return a.get("code") == "InvalidRequest", short(a)

        def get():
            a = ask("j1/get", {"clientToken": "t7", "includeJobDocument": False}, "j1/get/accepted")
            e = a.get("execution", {})
            return (e.get("versionNumber") == v + 2 and "jobDocument" not in e and a.get("clientToken") == "t7"), \
                short(a)

        def succeed():
            with cond:
                n = len(got)
            a = ask("j1/update", {"status": "SUCCEEDED", "statusDetails": {"stage": "committed"},
                                  "expectedVersion": v + 2, "includeJobExecutionState": True, "clientToken": "t8"},
                    "j1/update/accepted")
            nn = expect("notify-next", n)
            return (a.get("executionState", {}).get("status") == "SUCCEEDED" and "execution" not in nn), \
                f"{short(a)}; then notify-next {short(nn)}"

        def terminal():
            a = ask("j1/update", {"status": "IN_PROGRESS", "clientToken": "t9"}, "j1/update/rejected")
            return (a.get("code") == "InvalidStateTransition"
                    and a.get("executionState", {}).get("status") == "SUCCEEDED"), short(a)

        def unknown():
            a = ask("nope/update", {"status": "IN_PROGRESS", "clientToken": "t10"}, "nope/update/rejected")
            return a.get("code") == "ResourceNotFound", short(a)

        def bump():
            with cond:
                n = len(got)
            ex = srv.queue_aws(thing, "j2", {"operation": "firmware_update", "version": "1.1.0"}, bump=True)
            expect("notify-next", n)
            a = ask("start-next", {"clientToken": "t11"}, "start-next/accepted")
            given = a.get("execution", {}).get("versionNumber")
            b = ask("j2/update", {"status": "IN_PROGRESS", "expectedVersion": given, "clientToken": "t12"},
                    "j2/update/rejected")
            c = ask("j2/update", {"status": "REJECTED", "statusDetails": {"reason": "x"},
                                  "expectedVersion": b.get("executionState", {}).get("versionNumber"),
                                  "clientToken": "t13"}, "j2/update/accepted")
            return (b.get("code") == "VersionMismatch" and ex.bumped == (given, given + 1)
                    and ex.status == "REJECTED"), (f"start-next gave {given}; update -> {b.get('code')} "
                                                   f"(executionState.versionNumber "
                                                   f"{b.get('executionState', {}).get('versionNumber')}); "
                                                   f"retried -> accepted {short(c, 80)}")

        case("update with a stale expectedVersion -> VersionMismatch + executionState", mismatch)
        case("update -> accepted, executionState, versionNumber + 1", accepted)
        case("update without includeJobExecutionState -> no executionState", no_state)
        case("statusDetails value not a string -> InvalidRequest", non_string)
        case("status CANCELED -> InvalidRequest", bad_status)
        case("get -> execution with versionNumber, no jobDocument", get)
        case("SUCCEEDED -> accepted, then notify-next without execution", succeed)
        case("update after SUCCEEDED -> InvalidStateTransition + executionState", terminal)
        case("update of an unknown job -> ResourceNotFound", unknown)
        case("bump after start-next -> the device's update is a VersionMismatch", bump)
    finally:
        probe.disconnect()
        probe.loop_stop()
        srv.stop()


def parse_lines(text):
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(PASS|FAIL)  \S+  (.+?): (.*)$", line)
        if m:
            out.setdefault(m.group(2), []).append((m.group(1) == "PASS", m.group(3)))
    return out


def cmd_self_test(args):
    r = Results("self-test")
    t0 = time.monotonic()
    try:
        mqtt, paho_version = import_paho()
    except ImportError as e:
        r.check("setup", False, f"cannot import paho-mqtt: {e}")
        return r
    mosquitto = find_mosquitto()
    if mosquitto is None:
        r.check("setup", False, "mosquitto is not installed (apt-get install mosquitto)")
        return r
    here = os.path.dirname(os.path.abspath(__file__))
    fake = os.path.join(here, "ota_fake_device.py")
    tmp = tempfile.mkdtemp(prefix="ota-selftest.")
    brokers = []
    procs = []
    try:
        note(f"paho-mqtt {paho_version}, {mosquitto}; temp folder {tmp}")
        b0 = Broker(mosquitto, tmp, "server")
        brokers.append(b0)
        selftest_server(r, mqtt, b0.port)

        runs = {"clean": [], "faulty": ["--faults", "all"]}
        outs = {}
        for name, extra in runs.items():
            b = Broker(mosquitto, tmp, name)
            brokers.append(b)
            report = os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--test", "G", "live", "--port", str(b.port),
                   "--report", report, "--log-dir", tmp, "--name", name, "--job-timeout", str(args.job_timeout),
                   "--run-timeout", str(args.fake_duration + 30), "--",
                   sys.executable, fake, "--broker", f"mqtt://127.0.0.1:{b.port}", "--duration",
                   f"{args.fake_duration}s", "--report", report, *extra]
            f = open(os.path.join(tmp, f"{name}-live.txt"), "w+")
            procs.append((name, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL),
                          f))
        limit = time.monotonic() + args.fake_duration + 120
        for name, p, f in procs:
            try:
                p.wait(max(1.0, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(20)
            f.seek(0)
            outs[name] = (p.returncode, f.read())
            f.close()
        procs = []

        for name in runs:
            rc, text = outs[name]
            print(f"   --- {name} fleet (scripts/ota_fake_device.py {' '.join(runs[name])}): exit {rc}", flush=True)
            for line in text.splitlines():
                print(f"   | {line}", flush=True)
        clean, faulty = parse_lines(outs["clean"][1]), parse_lines(outs["faulty"][1])
        n_clean = sum(len(v) for v in clean.values())
        fails = [k for k, v in clean.items() if not all(ok for ok, _ in v)]
        want_numbers = {str(i) for i in range(8)}
        numbers = {k.split()[0] for k in clean}
        r.check("clean fleet: every check passes", not fails and outs["clean"][0] == 0 and numbers == want_numbers,
                f"{n_clean} lines, checks {sorted(numbers)}, {len(fails)} failed"
                + (f": {fails}" if fails else "") + f"; exit {outs['clean'][0]}")
        missing = [k for k in SELF_FAULTS if k not in faulty]
        passed = [k for k in SELF_FAULTS if k in faulty and all(ok for ok, _ in faulty[k])]
        unexpected = [k for k, v in faulty.items() if k not in SELF_FAULTS and not all(ok for ok, _ in v)]
        r.check("faulty fleet: each fault fails its check, nothing else fails",
                not missing and not passed and not unexpected and set(faulty) == set(clean) and outs["faulty"][0] == 1,
                f"{len(SELF_FAULTS)} checks expected to fail"
                + (f"; missing {missing}" if missing else "") + (f"; passed anyway {passed}" if passed else "")
                + (f"; failed unexpectedly {unexpected}" if unexpected else "")
                + (f"; lines differ from the clean run: {sorted(set(faulty) ^ set(clean))}"
                   if set(faulty) != set(clean) else "") + f"; exit {outs['faulty'][0]} (want 1)")
        for k, why in SELF_FAULTS.items():
            detail = faulty.get(k, [(None, "missing")])[0][1]
            r.check(f"faulty fleet: {k.split()[0]} fails on {why}", k in faulty and not faulty[k][0][0],
                    f"{k}: {short(detail, 200)}")
    except Exception as e:
        r.check("self-test", False, f"{type(e).__name__}: {e}")
    finally:
        for name, p, f in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
        for b in brokers:
            b.stop()
        if args.keep:
            note(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    note(f"(self-test took {time.monotonic() - t0:.1f} s)")
    return r


# ------------------------------------------------------------------------------- main ----

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", default=TEST, help="label printed on each line (default G)")
    p.add_argument("--self-test", action="store_true", help="prove the script against the fake fleet")
    p.add_argument("--keep", action="store_true", help="self-test: keep the temp folder")
    p.add_argument("--job-timeout", type=float, default=None,
                   help="seconds to wait for a job to finish (live: 40; self-test: 20)")
    p.add_argument("--fake-duration", type=int, default=50, help="self-test: the fake fleet's --duration (s)")
    sub = p.add_subparsers(dest="cmd")
    live = sub.add_parser("live", help="serve jobs to a fleet started here (COMMAND after --)")
    live.add_argument("--port", type=int, required=True, help="the broker's port on 127.0.0.1")
    live.add_argument("--report", required=True, help="the report the fleet writes (checked after it ends)")
    live.add_argument("--log-dir", help="where traffic, HTTP log, server summary and the fleet's output go")
    live.add_argument("--name", default="G", help="file name prefix in --log-dir")
    live.add_argument("--online-timeout", type=float, default=30)
    live.add_argument("--job-timeout", dest="live_job_timeout", type=float, default=None)
    live.add_argument("--run-timeout", type=float, default=150,
                      help="seconds from the start until the fleet must have ended (its --duration + margin)")
    live.add_argument("command", nargs=argparse.REMAINDER, help="-- the fleet command")
    args = p.parse_args()
    if args.self_test:
        args.job_timeout = args.job_timeout or 20
        r = cmd_self_test(args)
    elif args.cmd == "live":
        args.job_timeout = args.live_job_timeout or args.job_timeout or 40
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        r = cmd_live(args)
    else:
        p.error("say `live ... -- COMMAND` or --self-test")
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
