#!/usr/bin/env python3
"""Interop checks of fleetsim's Modbus slaves against real masters: mbpoll (the command-line
master from Debian) and pymodbus (sync TCP and RTU clients), and of the Modbus registers
against the same devices' MQTT telemetry. Used by scripts/interop.sh (test E).

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

Subcommands:
  live    against a running fleetsim: waits for its modbus-map.csv (written when the servers
          are up), then talks to the slaves it lists (TCP ports and RTU lines from the map,
          only on 127.0.0.1 and the run folder's PTYs). Every wait is bounded.
  report  after the run: the report's modbus counters show what `live` did, and the exit code.

The checks rely on device-profiles/power-meter.toml's register map (docs/modbus.md):
  input    0 voltage f32, 2 current f32, 4 power f32, 6 frequency u16 x0.01,
           7 temperature i16 x0.1, 8 energy_wh u32 CDAB (kWh x1000), 10 energy_kwh f64,
           14 uptime_s u32, 16 readings u64 (= telemetry seq)
  holding  0 interval_s u16 (1..3600), 1 ct_ratio u16 (1..5000, 100), 2 serial_number u32
           (20260042, read-only), 4 status bitfield (up, online, battery_low, buffering),
           5 fw_major, 6 fw_minor, 100 firmware string[8], 108 model string[8] ("FS-PM3")
  coils    0 restart, 1 relay (false)       discrete inputs  0 network_up, 1 cloud_connected
"""

import argparse
import inspect
import json
import logging
import math
import os
import re
import struct
import subprocess
import sys
import time

from interop_common import Results, Skip, report_section, resolve, run_check, wait_for_map

TEST = "E"
FW_VERSION = "5.2.0"
MODEL = "FS-PM3"
SERIAL = 20260042


# ------------------------------------------------------------------------------ the map ----

# -------------------------------------------------------------------- value decoding ----

def words_to_bytes(regs):
    return b"".join(struct.pack(">H", r) for r in regs)


def f32(regs):  # ABCD
    return struct.unpack(">f", words_to_bytes(regs[:2]))[0]


def f64(regs):  # ABCD... (big-endian words)
    return struct.unpack(">d", words_to_bytes(regs[:4]))[0]


def u32(regs):  # ABCD
    return (regs[0] << 16) | regs[1]


def u32_cdab(regs):  # low word first
    return (regs[1] << 16) | regs[0]


def u64(regs):
    return struct.unpack(">Q", words_to_bytes(regs[:4]))[0]


def i16(reg):
    return reg - 0x10000 if reg & 0x8000 else reg


def string(regs):
    return words_to_bytes(regs)


def input_block(regs):
    """Input registers 0..19 decoded per the power meter's map."""
    return {
        "voltage": f32(regs[0:2]),
        "current": f32(regs[2:4]),
        "power": f32(regs[4:6]),
        "frequency_raw": regs[6],
        "temperature_raw": i16(regs[7]),
        "energy_wh": u32_cdab(regs[8:10]),
        "energy_kwh": f64(regs[10:14]),
        "uptime_s": u32(regs[14:16]),
        "readings": u64(regs[16:20]),
    }


# ----------------------------------------------------------------------------- mbpoll ----

MBPOLL_VALUE = re.compile(r"^\[(\d+)\]:\s+(\S+)\s*$")


def mbpoll(args, *extra, timeout=15):
    """Runs mbpoll once (-1, PDU addressing -0); returns (exit code, stdout+stderr, {ref: value})."""
    cmd = [args.mbpoll, "-1", "-0", "-o", "2", *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` did not finish within {timeout} s", {}
    out = p.stdout + p.stderr
    values = {}
    for line in p.stdout.splitlines():
        m = MBPOLL_VALUE.match(line.strip())
        if m:
            values[int(m.group(1))] = m.group(2)
    return p.returncode, out, values


def tail(text, n=3):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


# --------------------------------------------------------------------------- pymodbus ----

def import_pymodbus():
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.CRITICAL)
    import pymodbus  # noqa: F401
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    from pymodbus.exceptions import ModbusException
    return pymodbus, ModbusTcpClient, ModbusSerialClient, ModbusException


class Master:
    """A thin wrapper over a pymodbus sync client: the unit keyword (device_id since pymodbus
    3.9, slave before), and errors as (None, code) instead of response objects."""

    def __init__(self, client, exc_type):
        self.c = client
        self.exc = exc_type
        params = inspect.signature(client.read_input_registers).parameters
        self.unit_kw = "device_id" if "device_id" in params else "slave"

    def call(self, method, *a, unit, **kw):
        """(response, None) on success; (None, exception code) on an exception response;
        (None, 'no response: ...') when nothing (valid) came back."""
        kw[self.unit_kw] = unit
        try:
            rr = getattr(self.c, method)(*a, **kw)
        except self.exc as e:
            return None, f"no response ({type(e).__name__}: {e})"
        if rr is None:
            return None, "no response"
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            if isinstance(code, int):
                return None, code
            return None, f"no response ({rr})"
        return rr, None

    def regs(self, table, addr, count, unit):
        method = {"input": "read_input_registers", "holding": "read_holding_registers"}[table]
        rr, err = self.call(method, addr, count=count, unit=unit)
        if rr is None:
            raise Skip(f"read {table} {addr}+{count} on unit {unit}: {describe(err)}")
        if len(rr.registers) != count:
            raise Skip(f"read {table} {addr}+{count} on unit {unit}: got {len(rr.registers)} registers")
        return list(rr.registers)

    def bits(self, table, addr, count, unit):
        method = {"coil": "read_coils", "discrete": "read_discrete_inputs"}[table]
        rr, err = self.call(method, addr, count=count, unit=unit)
        if rr is None:
            raise Skip(f"read {table} {addr}+{count} on unit {unit}: {describe(err)}")
        return [bool(b) for b in rr.bits[:count]]


def describe(err):
    if isinstance(err, int):
        return f"exception 0x{err:02X}"
    return str(err)


def check(r, name, fn):
    """Runs one check function that returns (ok, detail) and reports it."""
    return r.check(name, *run_check(fn))


# -------------------------------------------------------------------------- telemetry ----

def read_telemetry(path, device_id):
    """The device's telemetry messages seen so far: [(arrival s, payload dict)], in arrival order.
    Lines come from `mosquitto_sub -F '%U %r %q %t %p'`."""
    out = []
    topic = f"fleetsim/power-meter/{device_id}/telemetry"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 4)
                if len(parts) < 5 or parts[3] != topic:
                    continue
                try:
                    out.append((float(parts[0]), json.loads(parts[4])))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


def devices_in_telemetry(path):
    seen = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(" ", 4)
                if len(parts) >= 4:
                    m = re.match(r"^fleetsim/[^/]+/([^/]+)/telemetry$", parts[3])
                    if m:
                        seen.add(m.group(1))
    except FileNotFoundError:
        pass
    return seen


# ------------------------------------------------------------------------------- live ----

def cmd_live(args):
    r = Results(args.test)
    t_start = time.monotonic()
    try:
        map_text, rows, _ = wait_for_map(args.map, args.map_timeout)
    except TimeoutError as e:
        r.check("modbus map", False, str(e))
        return r
    base = os.path.abspath(args.fleetsim_cwd)
    tcp = [row for row in rows if row["transport"] == "tcp"]
    rtu = [row for row in rows if row["transport"] == "rtu"]
    mqtt_ids = [d for d in args.mqtt_devices.split(",") if d] if args.mqtt_devices else []
    by_id = {row["device_id"]: row for row in rows}
    header_ok = map_text.splitlines()[0] == "device_id,device,transport,address,port,unit"
    ports = sorted({int(row["port"]) for row in tcp if row["port"]})
    per_port = {p: sorted(int(row["unit"]) for row in tcp if int(row["port"]) == p) for p in ports}
    layout_ok = (
        header_ok
        and len(rows) == args.expect_devices
        and all(row["address"] == "127.0.0.1" for row in tcp)
        and all(units == list(range(1, len(units) + 1)) and len(units) <= args.units_per_port
                for units in per_port.values())
        and len(rtu) == args.expect_rtu
        and all(row["port"] == "" for row in rtu)
        and all(os.path.exists(resolve(row["address"], base)) for row in rtu)
        and all(d in by_id and by_id[d]["transport"] == "tcp" for d in mqtt_ids)
    )
    r.check("modbus map", layout_ok,
            f"{len(rows)} devices (expected {args.expect_devices}): {len(tcp)} TCP on ports "
            f"{', '.join(f'{p} (units 1..{len(u)})' for p, u in per_port.items())}, {len(rtu)} RTU on "
            f"{', '.join(sorted({row['address'] for row in rtu}))}; header {'ok' if header_ok else 'WRONG'}")
    if not tcp:
        return r

    # Devices for each check, so no check sees another's writes: the first port's units
    # 1 (mbpoll reads), 2 (the interval write), 3 (pymodbus reads and writes).
    plain = [row for row in tcp if row["device_id"] not in mqtt_ids]
    first_port = int(plain[0]["port"])
    on_first = {int(row["unit"]): row for row in plain if int(row["port"]) == first_port}
    if len(on_first) < 3:
        r.check("modbus map", False, f"port {first_port} has {len(on_first)} MQTT-less devices, the checks need 3")
        return r
    host = "127.0.0.1"
    tcp_args = ["-p", str(first_port), host]

    # The map is written before the meters power on and boot (they are silent until then):
    # wait, bounded, until the first one answers.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rc, _, v = mbpoll(args, "-a", "1", "-t", "4", "-r", "0", *tcp_args)
        if rc == 0 and 0 in v:
            break
        time.sleep(0.2)
    else:
        r.check("meters answer", False, f"unit 1 on port {first_port} did not answer within 15 s")
        return r

    # ---- 1. mbpoll reads ---------------------------------------------------------------
    def mbpoll_floats():
        rc, out, v = mbpoll(args, "-a", "1", "-t", "3:float", "-B", "-r", "0", "-c", "3", *tcp_args)
        if rc != 0 or sorted(v) != [0, 2, 4]:
            return False, f"exit {rc}, values {v}: {tail(out)}"
        volt, cur, pwr = (float(v[k]) for k in (0, 2, 4))
        ok = 380 <= volt <= 420 and 0 <= cur <= 100 and 0 <= pwr <= 60
        return ok, (f"input 0/2/4 as big-endian float (-t 3:float -B): voltage {volt} V (380..420), "
                    f"current {cur} A, power {pwr} kW")

    def mbpoll_u16():
        rc, out, v = mbpoll(args, "-a", "1", "-t", "3", "-r", "6", "-c", "2", *tcp_args)
        if rc != 0 or sorted(v) != [6, 7]:
            return False, f"exit {rc}, values {v}: {tail(out)}"
        freq, temp = int(v[6]), int(v[7])
        ok = 4990 <= freq <= 5010 and 200 <= temp <= 700
        return ok, f"input 6 frequency {freq} (x0.01 Hz, 4990..5010), input 7 temperature {temp} (x0.1 C, 200..700)"

    def mbpoll_holding():
        rc, out, v = mbpoll(args, "-a", "1", "-t", "4", "-r", "0", "-c", "7", *tcp_args)
        if rc != 0 or sorted(v) != list(range(7)):
            return False, f"exit {rc}, values {v}: {tail(out)}"
        h = {k: int(x) for k, x in v.items()}
        want = {0: 5, 1: 100, 2: SERIAL >> 16, 3: SERIAL & 0xFFFF, 5: 5, 6: 2}
        bad = {k: (h[k], w) for k, w in want.items() if h[k] != w}
        status_up = h[4] & 1
        ok = not bad and status_up == 1
        return ok, (f"holding 0..6 = {[h[k] for k in range(7)]}: interval 5, ct_ratio 100, serial words, "
                    f"status bit0 (up) {status_up}, firmware 5.2" + (f"; WRONG (got, want): {bad}" if bad else ""))

    def mbpoll_int():
        rc, out, v = mbpoll(args, "-a", "1", "-t", "4:int", "-B", "-r", "2", *tcp_args)
        if rc != 0 or 2 not in v:
            return False, f"exit {rc}, values {v}: {tail(out)}"
        return int(v[2]) == SERIAL, f"holding 2 as big-endian int32 (-t 4:int -B): {v[2]} (serial_number {SERIAL})"

    def mbpoll_bits():
        rc1, out1, coils = mbpoll(args, "-a", "1", "-t", "0", "-r", "0", "-c", "2", *tcp_args)
        rc2, out2, di = mbpoll(args, "-a", "1", "-t", "1", "-r", "0", "-c", "2", *tcp_args)
        if rc1 != 0 or rc2 != 0 or sorted(coils) != [0, 1] or sorted(di) != [0, 1]:
            return False, f"coils exit {rc1} {coils}, discrete inputs exit {rc2} {di}: {tail(out1 + out2)}"
        c = [int(coils[0]), int(coils[1])]
        d = [int(di[0]), int(di[1])]
        # An MQTT-less meter: network up, not connected to a cloud.
        return c == [0, 0] and d == [1, 0], (f"coils 0..1 (restart, relay) {c} (want [0, 0]); discrete inputs "
                                             f"0..1 (network_up, cloud_connected) {d} (want [1, 0], mqtt = false)")

    check(r, "mbpoll TCP f32 (-t 3:float)", mbpoll_floats)
    check(r, "mbpoll TCP u16 inputs", mbpoll_u16)
    check(r, "mbpoll TCP holding u16", mbpoll_holding)
    check(r, "mbpoll TCP int32 (-t 4:int)", mbpoll_int)
    check(r, "mbpoll TCP coils and discrete inputs", mbpoll_bits)

    # ---- 3. mbpoll: a unit id the port does not have ------------------------------------
    def mbpoll_unknown_unit():
        absent = len(per_port[first_port]) + 5
        rc, out, v = mbpoll(args, "-a", str(absent), "-t", "3", "-r", "0", *tcp_args)
        said = "target device failed to respond" in out.lower()
        return rc not in (0, None) and said and not v, (
            f"unit {absent} on port {first_port} (units 1..{len(per_port[first_port])}): mbpoll exit {rc}, "
            f"{tail(out, 1)!r} (want exception 0x0B, 'Target device failed to respond')")

    check(r, "mbpoll unknown unit -> 0x0B", mbpoll_unknown_unit)

    # ---- mbpoll as an RTU master on the PTY line -----------------------------------------
    if rtu:
        line = resolve(rtu[0]["address"], base)

        def mbpoll_rtu():
            rc, out, v = mbpoll(args, "-m", "rtu", "-b", "9600", "-P", "even", "-s", "1", "-a", "2",
                                "-t", "3:float", "-B", "-r", "0", line)
            if rc != 0 or 0 not in v:
                return False, f"exit {rc}, values {v}: {tail(out)}"
            volt = float(v[0])
            return 380 <= volt <= 420, f"unit 2 on {rtu[0]['address']} (9600 8E1): voltage {volt} V (380..420)"

        check(r, "mbpoll RTU f32", mbpoll_rtu)

    # ---- pymodbus ------------------------------------------------------------------------
    try:
        pymodbus, ModbusTcpClient, ModbusSerialClient, ModbusException = import_pymodbus()
    except ImportError as e:
        r.check("pymodbus", False, f"cannot import pymodbus (and pyserial): {e}")
        return r

    client = ModbusTcpClient(host, port=first_port, timeout=2, retries=0)
    if not client.connect():
        r.check("pymodbus TCP connect", False, f"cannot connect to {host}:{first_port}")
        return r
    tm = Master(client, ModbusException)

    # ---- 2. a write that changes behaviour: interval 5 s -> 1 s (mbpoll writes, pymodbus
    # counts readings) --------------------------------------------------------------------
    def interval_write():
        unit = 2
        before = u64(tm.regs("input", 16, 4, unit))
        rc, out, _ = mbpoll(args, "-a", str(unit), "-t", "4", "-r", "0", *tcp_args, "1")
        if rc != 0 or "written 1 reference" not in out.lower():
            return False, f"mbpoll write of holding 0 = 1 on unit {unit}: exit {rc}: {tail(out)}"
        rc, out, v = mbpoll(args, "-a", str(unit), "-t", "4", "-r", "0", *tcp_args)
        if rc != 0 or v.get(0) != "1":
            return False, f"holding 0 reads back {v.get(0)} (exit {rc}) after writing 1: {tail(out)}"
        # The first reading at the new rate (the old period may still be running out) ...
        deadline = time.monotonic() + 7
        r0 = u64(tm.regs("input", 16, 4, unit))
        while r0 == before and time.monotonic() < deadline:
            time.sleep(0.1)
            r0 = u64(tm.regs("input", 16, 4, unit))
        if r0 == before:
            return False, f"readings stayed {before} for 7 s after the write"
        # ... then count over 5 s: about 5 at 1 s (at the old 5 s: 0..2).
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:
            time.sleep(0.1)
        r1 = u64(tm.regs("input", 16, 4, unit))
        grew = r1 - r0
        return 4 <= grew <= 6, (f"mbpoll wrote holding 0 (interval_s) = 1 on unit {unit}, reads back 1; "
                                f"readings (input 16, u64) grew {grew} in 5 s afterwards (want 4..6; "
                                f"{before} before the write)")

    check(r, "write interval_s=1 speeds readings up", interval_write)

    # ---- 4. pymodbus reads every type, and the exceptions ----------------------------------
    unit = 3

    def py_inputs():
        regs = tm.regs("input", 0, 20, unit)
        v = input_block(regs)
        freq = v["frequency_raw"] * 0.01
        temp = v["temperature_raw"] * 0.1
        kwh_from_wh = v["energy_wh"] / 1000
        problems = []
        if not 380 <= v["voltage"] <= 420:
            problems.append(f"voltage {v['voltage']}")
        if abs(v["voltage"] - round(v["voltage"], 1)) > 1e-3:
            problems.append(f"voltage {v['voltage']!r} is not a 1-decimal reading")
        if not 49.9 <= freq <= 50.1:
            problems.append(f"frequency {freq}")
        if not 20 <= temp <= 70:
            problems.append(f"temperature {temp}")
        if not 125000 <= v["energy_kwh"] <= 126000:
            problems.append(f"energy_kwh {v['energy_kwh']}")
        if abs(kwh_from_wh - v["energy_kwh"]) > 0.0015:
            problems.append(f"energy_wh/1000 {kwh_from_wh} != energy_kwh {v['energy_kwh']} (same reading)")
        if not 0 < v["uptime_s"] < 3600:
            problems.append(f"uptime_s {v['uptime_s']}")
        if not 1 <= v["readings"] < 1000:
            problems.append(f"readings {v['readings']}")
        return not problems, (
            f"input 0..19 in one read: voltage f32 {v['voltage']:.3f}, current {v['current']:.2f}, power "
            f"{v['power']:.2f}, frequency u16 {freq:.2f}, temperature i16 {temp:.1f}, energy_wh u32 CDAB "
            f"{v['energy_wh']} = energy_kwh f64 {v['energy_kwh']:.3f}, uptime_s u32 {v['uptime_s']}, "
            f"readings u64 {v['readings']}" + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

    def py_holding():
        h = tm.regs("holding", 0, 7, unit)
        fw = string(tm.regs("holding", 100, 8, unit))
        model = string(tm.regs("holding", 108, 8, unit))
        problems = []
        if h[0] != 5 or h[1] != 100:
            problems.append(f"interval_s {h[0]} (5), ct_ratio {h[1]} (100)")
        if u32(h[2:4]) != SERIAL:
            problems.append(f"serial_number {u32(h[2:4])}")
        if h[4] & 1 != 1 or h[4] & 0b0010:
            problems.append(f"status 0b{h[4]:04b} (want up=1, online=0 for an MQTT-less meter)")
        if (h[5], h[6]) != (5, 2):
            problems.append(f"fw_major.minor {h[5]}.{h[6]}")
        want_fw = FW_VERSION.encode().ljust(16, b"\0")
        want_model = MODEL.encode().ljust(16, b"\0")
        if fw != want_fw:
            problems.append(f"firmware {fw!r}, want {want_fw!r}")
        if model != want_model:
            problems.append(f"model {model!r}, want {want_model!r}")
        return not problems, (
            f"holding 0..6 {h} (serial u32 {u32(h[2:4])}, status bitfield 0b{h[4]:04b}, fw {h[5]}.{h[6]}); "
            f"firmware string {fw.rstrip(chr(0).encode()).decode(errors='replace')!r}, model "
            f"{model.rstrip(chr(0).encode()).decode(errors='replace')!r} (NUL-padded to 8 registers)"
            + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

    def py_bits():
        coils = tm.bits("coil", 0, 2, unit)
        di = tm.bits("discrete", 0, 2, unit)
        rr, err = tm.call("write_coil", 1, True, unit=unit)
        if rr is None:
            return False, f"write coil 1 (relay) ON: {describe(err)}"
        after = tm.bits("coil", 0, 2, unit)
        ok = coils == [False, False] and di == [True, False] and after == [False, True]
        return ok, (f"coils {coils} (want [False, False]), discrete inputs {di} (want [True, False]); "
                    f"relay coil 1 written ON, coils read back {after} (want [False, True])")

    def expect_exception(what, code, method, *a, **kw):
        rr, err = tm.call(method, *a, unit=kw.pop("unit", unit), **kw)
        if rr is not None:
            return False, f"{what}: answered normally ({rr}), want exception 0x{code:02X}"
        return err == code, f"{what}: {describe(err)} (want 0x{code:02X})"

    def py_exceptions():
        results = [
            expect_exception("read input 50 (unmapped)", 0x02, "read_input_registers", 50, count=1),
            expect_exception("write holding 2 (serial_number, read-only)", 0x02, "write_register", 2, 1234),
            expect_exception("write holding 1 (ct_ratio) = 0 (min 1)", 0x03, "write_register", 1, 0),
            expect_exception(f"read on unit {len(per_port[first_port]) + 5} (not on the port)", 0x0B,
                             "read_input_registers", 0, count=2, unit=len(per_port[first_port]) + 5),
        ]
        return all(ok for ok, _ in results), "; ".join(d for _, d in results)

    def py_write_readback():
        rr, err = tm.call("write_register", 1, 250, unit=unit)
        if rr is None:
            return False, f"write holding 1 (ct_ratio) = 250: {describe(err)}"
        back = tm.regs("holding", 1, 1, unit)[0]
        serial = u32(tm.regs("holding", 2, 2, unit))
        return back == 250 and serial == SERIAL, (
            f"wrote holding 1 (ct_ratio) = 250, reads back {back}; serial_number still {serial}")

    # ---- a write that restarts the meter: coil 0 (restart) ON, on another port's unit 1 ----
    def py_restart():
        others = sorted((int(row["port"]), int(row["unit"])) for row in plain if int(row["port"]) != first_port)
        if not others:
            raise Skip("no second port of MQTT-less meters")
        port, u = others[0]
        m = tm_factory(ModbusTcpClient, ModbusException)(port)
        try:
            # An uptime of a few seconds first, so that "started over" shows.
            deadline = time.monotonic() + 10
            v0 = input_block(m.regs("input", 0, 20, u))
            while v0["uptime_s"] < 4 and time.monotonic() < deadline:
                time.sleep(0.25)
                v0 = input_block(m.regs("input", 0, 20, u))
            rr, err = m.call("write_coil", 0, True, unit=u)
            if rr is None:
                return False, f"write coil 0 (restart) ON on port {port} unit {u}: {describe(err)}"
            # While it boots it may stay silent; then it answers with its uptime started over.
            deadline = time.monotonic() + 15
            silent = 0
            v1 = None
            while time.monotonic() < deadline:
                rr, err = m.call("read_input_registers", 0, count=20, unit=u)
                if rr is None:
                    silent += 1
                    if isinstance(err, str):  # a timeout may leave the connection unusable
                        m.c.close()
                        m.c.connect()
                else:
                    v1 = input_block(rr.registers)
                    if v1["uptime_s"] < v0["uptime_s"]:
                        break
                time.sleep(0.25)
            if v1 is None or v1["uptime_s"] >= v0["uptime_s"]:
                return False, (f"uptime_s did not start over within 15 s of the restart (before {v0['uptime_s']}, "
                               f"now {v1 and v1['uptime_s']})")
            coils = m.bits("coil", 0, 2, u)
            ok = v1["readings"] >= v0["readings"] and coils[0] is False
            return ok, (f"port {port} unit {u}: coil 0 (restart) ON answered; {silent} polls unanswered while "
                        f"it booted; uptime_s {v0['uptime_s']} -> {v1['uptime_s']}; readings {v0['readings']} -> "
                        f"{v1['readings']} (seq never restarts); restart coil reads {coils[0]} (want False)")
        finally:
            m.c.close()

    check(r, "pymodbus TCP input registers (f32, u16, i16, u32 CDAB, f64, u32, u64)", py_inputs)
    check(r, "pymodbus TCP holding registers (u16, u32, bitfield, strings)", py_holding)
    check(r, "pymodbus TCP coils and discrete inputs", py_bits)
    check(r, "pymodbus TCP exceptions 0x02, 0x03, 0x0B", py_exceptions)
    check(r, "pymodbus TCP write ct_ratio=250 and read back", py_write_readback)
    check(r, "pymodbus TCP restart coil restarts the meter", py_restart)
    client.close()

    # ---- 5. pymodbus as an RTU master ------------------------------------------------------
    if rtu:
        line_rows = [row for row in rtu if row["address"] == rtu[0]["address"]]
        line = resolve(rtu[0]["address"], base)
        units = sorted(int(row["unit"]) for row in line_rows)
        # The line is 9600 8E1. On a PTY, glibc's tcsetattr fails with EINVAL when asked for
        # parity (the kernel's pty ignores PARENB, and glibc checks that it took), so pyserial
        # cannot open it with parity "E": the master falls back to "N", which changes nothing
        # on a PTY (no UART: the bytes are the same). A real RS-485 port keeps "E".
        serial_client, parity = None, None
        for parity in ("E", "N"):
            serial_client = ModbusSerialClient(line, baudrate=9600, parity=parity, stopbits=1, bytesize=8,
                                               timeout=1, retries=0)
            if serial_client.connect():
                break
            serial_client.close()
            serial_client = None
        if serial_client is None:
            r.check("pymodbus RTU connect", False, f"cannot open {line} (9600 8E1, nor 8N1)")
        else:
            print(f"   pymodbus RTU master on {line}: 9600 8{parity}1"
                  + (" (the PTY refuses parity E: see the comment above)" if parity == "N" else ""), flush=True)
            sm = Master(serial_client, ModbusException)

            def rtu_reads():
                got = {}
                for u in units:
                    got[u] = input_block(sm.regs("input", 0, 20, u))
                bad = {u: v["voltage"] for u, v in got.items() if not 380 <= v["voltage"] <= 420}
                distinct = len({v["voltage"] for v in got.values()}) > 1 or len(got) == 1
                return not bad and distinct, (
                    f"units {units} on {rtu[0]['address']}: voltages "
                    f"{', '.join('%d: %.1f' % (u, v['voltage']) for u, v in got.items())}, readings "
                    f"{', '.join(str(v['readings']) for v in got.values())}"
                    + (f"; out of 380..420: {bad}" if bad else "") + ("" if distinct else "; all the same device?"))

            def rtu_absent():
                absent = max(units) + 4
                t0 = time.monotonic()
                rr, err = sm.call("read_input_registers", 0, count=2, unit=absent)
                took = time.monotonic() - t0
                ok = rr is None and isinstance(err, str)
                # The line must still work after the silence.
                after = sm.regs("input", 0, 2, units[0])
                return ok and 380 <= f32(after) <= 420, (
                    f"unit {absent} (not on the line): {describe(err) if rr is None else 'answered'} after "
                    f"{took:.1f} s (want silence); unit {units[0]} answers again: {f32(after):.1f} V")

            def rtu_broadcast():
                rr, err = sm.call("write_register", 1, 77, unit=0, no_response_expected=True)
                if rr is None and isinstance(err, int):
                    return False, f"broadcast write got {describe(err)}"
                # Nothing may answer a broadcast: anything on the line now is a stray reply.
                time.sleep(0.3)
                stray = b""
                try:
                    n = serial_client.socket.in_waiting
                    stray = serial_client.socket.read(n) if n else b""
                except Exception:
                    pass
                back = {u: sm.regs("holding", 1, 1, u)[0] for u in units}
                ok = not stray and all(v == 77 for v in back.values())
                return ok, (f"write holding 1 (ct_ratio) = 77 to unit 0: {len(stray)} bytes answered (want 0); "
                            f"ct_ratio read back from units {units}: {back} (want 77 each)")

            check(r, "pymodbus RTU reads units on the line", rtu_reads)
            check(r, "pymodbus RTU unit not on the line is silent", rtu_absent)
            check(r, "pymodbus RTU broadcast write", rtu_broadcast)
            serial_client.close()

    # ---- 7. both paths tell the same story: Modbus registers vs MQTT telemetry --------------
    if mqtt_ids and args.telemetry:
        check(r, "Modbus registers = MQTT telemetry", lambda: same_story(args, tm_factory(
            ModbusTcpClient, ModbusException), by_id, mqtt_ids))

    print(f"   ({TEST} live checks took {time.monotonic() - t_start:.1f} s)", flush=True)
    return r


def tm_factory(ModbusTcpClient, ModbusException):
    def make(port):
        c = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        if not c.connect():
            raise Skip(f"cannot connect to 127.0.0.1:{port}")
        return Master(c, ModbusException)
    return make


def same_story(args, make_master, by_id, mqtt_ids):
    """For each MQTT device: right after one of its telemetry messages arrives, read its input
    registers; `readings` (= seq) says which reading the registers hold, and that message's
    values must be what the registers say."""
    details = []
    problems = []
    for dev in mqtt_ids:
        row = by_id[dev]
        m = make_master(int(row["port"]))
        unit = int(row["unit"])
        state_h = m.regs("holding", 4, 1, unit)[0]
        di = m.bits("discrete", 0, 2, unit)
        if state_h & 0b11 != 0b11 or di != [True, True]:
            problems.append(f"{dev}: status 0b{state_h:04b} (want up and online), discrete inputs {di} (want both)")
        matched = 0
        deadline = time.monotonic() + args.telemetry_wait
        count0 = len(read_telemetry(args.telemetry, dev))
        while matched < 2 and time.monotonic() < deadline:
            msgs = read_telemetry(args.telemetry, dev)
            if len(msgs) <= count0:
                time.sleep(0.05)
                continue
            count0 = len(msgs)
            v = input_block(m.regs("input", 0, 20, unit))
            seq = v["readings"]
            # The registers may already hold the next reading, whose message is on its way.
            by_seq = {}
            wait_until = time.monotonic() + 3
            while True:
                by_seq = {p.get("seq"): p for _, p in read_telemetry(args.telemetry, dev)}
                if seq in by_seq or time.monotonic() > wait_until:
                    break
                time.sleep(0.05)
            latest = msgs[-1][1].get("seq")
            if seq not in by_seq:
                problems.append(f"{dev}: registers hold reading {seq}, no telemetry with that seq (latest {latest})")
                break
            if seq not in (latest, latest + 1 if isinstance(latest, int) else None):
                problems.append(f"{dev}: registers hold reading {seq} right after telemetry seq {latest} "
                                f"arrived (want the latest or the next)")
            vals = by_seq[seq].get("values", {})
            diffs = compare(v, vals)
            if diffs:
                problems.append(f"{dev} seq {seq}: {'; '.join(diffs)}")
            else:
                details.append(f"{dev} seq {seq}: voltage {vals.get('voltage')} / {v['voltage']:.4f}, "
                               f"energy {vals.get('energy')} / {v['energy_kwh']:.3f}")
            matched += 1
        if matched == 0:
            problems.append(f"{dev}: no telemetry message arrived within {args.telemetry_wait:.0f} s "
                            f"({len(read_telemetry(args.telemetry, dev))} in all)")
        m.c.close()
    seen = devices_in_telemetry(args.telemetry)
    leaked = {row_id for row_id in by_id if row_id not in mqtt_ids} & seen
    if leaked:
        problems.append(f"devices with mqtt = false published telemetry: {sorted(leaked)}")
    return not problems, ("; ".join(problems) if problems else
                          f"{len(details)} readings matched ({'; '.join(details[:4])}); "
                          f"no telemetry from the {len(by_id) - len(mqtt_ids)} mqtt = false devices")


def compare(v, vals):
    """Differences between decoded registers and a telemetry message's values."""
    out = []

    def num(key):
        x = vals.get(key)
        if not isinstance(x, (int, float)):
            out.append(f"telemetry has no number {key!r}")
            return None
        return float(x)

    for key in ("voltage", "current", "power"):
        x = num(key)
        if x is not None and not math.isclose(v[key], x, rel_tol=1e-6, abs_tol=1e-4):
            out.append(f"{key}: f32 {v[key]!r} vs telemetry {x}")
    x = num("frequency")
    if x is not None and v["frequency_raw"] != round(x / 0.01):
        out.append(f"frequency: u16 {v['frequency_raw']} vs telemetry {x} (x100 = {round(x / 0.01)})")
    x = num("temperature")
    if x is not None and v["temperature_raw"] != round(x / 0.1):
        out.append(f"temperature: i16 {v['temperature_raw']} vs telemetry {x} (x10 = {round(x / 0.1)})")
    x = num("energy")
    if x is not None:
        if not math.isclose(v["energy_kwh"], x, rel_tol=0, abs_tol=1e-6):
            out.append(f"energy: f64 {v['energy_kwh']!r} vs telemetry {x}")
        if v["energy_wh"] != round(x * 1000):
            out.append(f"energy_wh: u32 {v['energy_wh']} vs telemetry {x} kWh (x1000 = {round(x * 1000)})")
    return out


# ----------------------------------------------------------------------------- report ----

def cmd_report(args):
    r, mb = report_section(args, "modbus")
    if mb is None:
        return r
    codes = mb.get("exceptions_by_code", {})
    funcs = mb.get("requests_by_function", {})
    r.check("report modbus.requests", mb.get("requests", 0) > 0,
            f"{mb.get('requests')} (> 0); by function {({k: n for k, n in funcs.items() if n})}")
    r.check("report modbus.unknown_unit", mb.get("unknown_unit", 0) >= 1, f"{mb.get('unknown_unit')} (>= 1)")
    want = ["02", "03", "0B"]
    r.check("report modbus.exceptions_by_code", all(codes.get(c, 0) >= 1 for c in want),
            f"{codes} (want {', '.join(want)} each >= 1)")
    r.check("report modbus.writes", mb.get("writes", 0) >= args.min_writes,
            f"{mb.get('writes')} (>= {args.min_writes}: interval, ct_ratio, relay coil, broadcast)")
    svc = mb.get("service_us", {})
    r.check("report modbus.service_us", isinstance(svc.get("p50"), (int, float)) and svc.get("count", 0) > 0
            and svc.get("p50", 0) <= svc.get("p99", -1), f"p50 {svc.get('p50')} us, p99 {svc.get('p99')} us, "
            f"n={svc.get('count')}")
    return r


# ------------------------------------------------------------------------------- main ----

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", default=TEST, help="label printed on each line (default E)")
    sub = p.add_subparsers(dest="cmd", required=True)

    live = sub.add_parser("live", help="talk to a running fleetsim's Modbus slaves")
    live.add_argument("--map", required=True, help="the run's modbus-map.csv (waited for)")
    live.add_argument("--map-timeout", type=float, default=30, help="seconds to wait for the map")
    live.add_argument("--fleetsim-cwd", default=".", help="fleetsim's working directory (RTU paths in the "
                                                          "map are relative to it)")
    live.add_argument("--mbpoll", default="mbpoll")
    live.add_argument("--expect-devices", type=int, required=True, help="devices the map must list")
    live.add_argument("--expect-rtu", type=int, default=0, help="of which on RTU lines")
    live.add_argument("--units-per-port", type=int, default=247)
    live.add_argument("--mqtt-devices", default="", help="comma-separated device ids that publish MQTT "
                                                         "telemetry (all others must not)")
    live.add_argument("--telemetry", help="mosquitto_sub -F '%%U %%r %%q %%t %%p' output on fleetsim/#")
    live.add_argument("--telemetry-wait", type=float, default=14,
                      help="seconds to wait for two telemetry messages per MQTT device")

    rep = sub.add_parser("report", help="the run's report and exit code")
    rep.add_argument("--report", required=True)
    rep.add_argument("--exit-code", type=int, required=True)
    rep.add_argument("--min-writes", type=int, default=3)

    args = p.parse_args()
    r = cmd_live(args) if args.cmd == "live" else cmd_report(args)
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
