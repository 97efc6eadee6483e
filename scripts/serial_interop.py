#!/usr/bin/env python3
"""Interop checks of fleetsim's serial devices (docs/serial.md) against real serial clients:
pyserial reading NMEA 0183 parsed by pynmea2, an AT dialogue with the modem persona, the
weather station's template lines, a Modbus RTU meter polled by pymodbus, an unplug/replug of
a GPS port, and a GPS receiver on a real port (one end of a socat PTY pair). Used by
scripts/interop.sh (test F).

Every check prints one line:
  PASS  <test>  <check>: <detail>
  FAIL  <test>  <check>: <detail>
and the exit status is 1 when any check failed, else 0.

Subcommands:
  live    against a running fleetsim: waits for its serial-map.csv (written when the ports are
          up; its mtime is taken as the run's start), then talks to the ports it lists. The
          checks that follow the run's timeline (first fix, unplug, the modem's outage) run in
          threads next to the quick ones; every wait is bounded.
  report  after the run: the report's serial counters show what `live` did, the exit code,
          and the PTY links are gone.

Readers open every port 8N1 whatever the profile says: a PTY ignores the line settings (and
Linux refuses parity E on one), so the bytes are the same.

The checks rely on the shipped profiles:
  gnss-receiver.toml  NMEA GGA RMC GSA GSV VTG at 1 Hz, 9600 baud, around Berlin (lat 52.35..52.68,
                      lon 13.09..13.76), 6..14 satellites, ttff 20..40 s, bad_checksum 0.001
  lte-modem.toml      AT modem at 115200: fleetsim / FS-LTEM1 / firmware 1.8.3, imei 35{id:013},
                      operator "fleetsim net"
  weather-station.toml  "WX {device_id} seq={seq} T=..C RH=..% P=..hPa up=..s" every 2 s
  rtu-meter.toml      Modbus RTU unit 1: input 0 voltage f32 (mean 230 V), input 2 energy_wh u32 CDAB
"""

import argparse
import datetime
import inspect
import logging
import os
import re
import struct
import sys
import threading
import time

from interop_common import Results, Skip, report_section, resolve, run_check, wait_for_map

TEST = "F"
TYPES = ("GGA", "RMC", "GSA", "GSV", "VTG")
LAT_RANGE = (52.35, 52.68)
LON_RANGE = (13.09, 13.76)
SATS_RANGE = (6, 14)
MODEM = {"manufacturer": "fleetsim", "model": "FS-LTEM1", "revision": "1.8.3", "operator": "fleetsim net"}
WX_LINE = re.compile(r"WX (wx-\d+) seq=(\d+) T=-?\d+\.\dC RH=\d+% P=\d+\.\dhPa up=(\d+)s")


def note(text):
    print(f"   {text}", flush=True)


# ------------------------------------------------------------------------------ the map ----

# --------------------------------------------------------------------------- a reader ----

class Port:
    """A pyserial port read line by line with bounded waits. Lines are bytes without the line
    end; a line cut at the start (the port was opened mid-line) is dropped when `marker` says
    what a whole line starts with."""

    def __init__(self, serial_mod, path, baud, marker=None):
        self.serial = serial_mod
        self.path = path
        self.s = serial_mod.Serial(path, baud, bytesize=8, parity="N", stopbits=1, timeout=0.2)
        self.buf = b""
        self.first = marker is not None
        self.marker = marker

    def close(self):
        try:
            self.s.close()
        except Exception:
            pass

    def lines(self, deadline):
        """Yields (arrival time, line) until the deadline; raises SerialException/OSError when the
        port goes away."""
        while time.time() < deadline:
            while b"\n" in self.buf:
                raw, self.buf = self.buf.split(b"\n", 1)
                line = raw.rstrip(b"\r")
                if self.first:
                    self.first = False
                    if not line.startswith(self.marker):
                        continue
                if line:
                    yield time.time(), line
            chunk = self.s.read(max(1, min(self.s.in_waiting, 4096)))
            self.buf += chunk

    def write(self, data):
        self.s.write(data)
        self.s.flush()

    def read_some(self, wait_s):
        """Whatever arrives within wait_s seconds."""
        deadline = time.time() + wait_s
        out = b""
        while time.time() < deadline:
            out += self.s.read(max(1, self.s.in_waiting))
        return out


def tod(t):
    """Seconds since midnight of a datetime.time."""
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def utc_tod(ts):
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return d.hour * 3600 + d.minute * 60 + d.second + d.microsecond / 1e6


def day_diff(a, b):
    """a - b in seconds of day, wrapped to -43200..43200."""
    return (a - b + 43200) % 86400 - 43200


# ---------------------------------------------------------------------------- NMEA ----

class NmeaLog:
    """Sentences read from one GPS port, parsed by pynmea2 (check=True)."""

    def __init__(self, pynmea2):
        self.p = pynmea2
        self.lines = 0
        self.bad_checksum = []
        self.malformed = []
        self.too_long = []
        self.types = {}
        self.sentences = []  # (arrival, session, msg)

    def add(self, arrival, line, session):
        self.lines += 1
        text = line.decode("ascii", errors="replace")
        if len(line) + 2 > 82:
            self.too_long.append(text)
        try:
            msg = self.p.parse(text, check=True)
        except self.p.ChecksumError:
            self.bad_checksum.append(text)
            return None
        except Exception as e:  # ParseError, or an error inside the parser for a mangled field
            self.malformed.append(f"{text!r} ({type(e).__name__})")
            return None
        self.types[msg.sentence_type] = self.types.get(msg.sentence_type, 0) + 1
        self.sentences.append((arrival, session, msg))
        return msg

    def valid(self):
        return len(self.sentences)


def fix_quality(msg):
    q = msg.gps_qual
    return q if isinstance(q, int) else -1


def gps_reader(serial_mod, log, path, deadline, done, events):
    """Reads a GPS port into `log` until done() or the deadline; when the port goes away (an
    unplug), waits for its link to come back and reopens it. Records ("gone"/"back", time, what)
    in events."""
    session = 0
    while time.time() < deadline and not done():
        try:
            port = Port(serial_mod, path, 9600, marker=b"$")
        except (serial_mod.SerialException, OSError) as e:
            events.append(("open_error", time.time(), str(e)))
            time.sleep(0.2)
            continue
        session += 1
        try:
            for arrival, line in port.lines(deadline):
                log.add(arrival, line, session)
                if done():
                    break
        except (serial_mod.SerialException, OSError) as e:
            events.append(("gone", time.time(), f"{type(e).__name__}: {e}"))
            # The link goes and comes back at the same path: wait for the new one.
            while time.time() < deadline and os.path.lexists(path):
                time.sleep(0.05)
            while time.time() < deadline and not os.path.exists(path):
                time.sleep(0.05)
            events.append(("back", time.time(), os.path.realpath(path)))
        finally:
            port.close()
    return log


def check_gps_parse(log, name):
    bad = len(log.bad_checksum)
    ok = (log.lines >= 30 and not log.malformed and not log.too_long and bad <= 1)
    detail = (f"{name}: {log.lines} whole lines (>= 30), {log.valid()} parsed by pynmea2.parse(check=True), "
              f"{bad} with a bad checksum (<= 1: the profile's bad_checksum 0.001), {len(log.malformed)} "
              f"malformed, {len(log.too_long)} over 82 characters")
    if log.malformed:
        detail += f"; malformed: {'; '.join(log.malformed[:3])}"
    if log.too_long:
        detail += f"; too long: {log.too_long[0]!r}"
    if bad:
        detail += f"; bad checksum: {log.bad_checksum[0]!r}"
    return ok, detail


def check_gps_types(log, name):
    missing = [t for t in TYPES if t not in log.types]
    return not missing, (f"{name}: {', '.join(f'{t} {log.types.get(t, 0)}' for t in TYPES)}"
                         + (f"; MISSING {missing}" if missing else ""))


def first_fix_index(log):
    for i, (_, _, m) in enumerate(log.sentences):
        if m.sentence_type == "GGA" and fix_quality(m) >= 1:
            return i
    return None


def check_gps_nofix(log, name):
    """Before the first fix: GGA quality 0 without a position, RMC status V, GSA mode 1."""
    i = first_fix_index(log)
    before = log.sentences[:i] if i is not None else log.sentences
    gga = [m for _, _, m in before if m.sentence_type == "GGA"]
    rmc = [m for _, _, m in before if m.sentence_type == "RMC"]
    gsa = [m for _, _, m in before if m.sentence_type == "GSA"]
    problems = []
    if not gga or not rmc:
        problems.append(f"no sentence before the first fix ({len(gga)} GGA, {len(rmc)} RMC)")
    bad_gga = [str(m) for m in gga if fix_quality(m) != 0 or m.lat or m.lon]
    bad_rmc = [str(m) for m in rmc if m.status != "V" or m.lat or m.lon]
    bad_gsa = [str(m) for m in gsa if m.mode_fix_type != "1"]
    if bad_gga:
        problems.append(f"{len(bad_gga)} GGA with a quality or a position: {bad_gga[0]}")
    if bad_rmc:
        problems.append(f"{len(bad_rmc)} RMC not 'V' or with a position: {bad_rmc[0]}")
    if bad_gsa:
        problems.append(f"{len(bad_gsa)} GSA not mode 1: {bad_gsa[0]}")
    return not problems, (f"{name}: {len(gga)} GGA with gps_qual 0 and no position, {len(rmc)} RMC status 'V', "
                          f"{len(gsa)} GSA mode 1 before the first fix"
                          + (f"; WRONG: {'; '.join(problems)}" if problems else ""))


def fixes(log):
    """GGA and RMC sentences that carry a fix (GGA quality >= 1, RMC 'A'), from the first fix on."""
    i = first_fix_index(log)
    after = log.sentences[i:] if i is not None else []
    gga = [(a, m) for a, _, m in after if m.sentence_type == "GGA" and fix_quality(m) >= 1]
    rmc = [(a, m) for a, _, m in after if m.sentence_type == "RMC" and m.status == "A"]
    return gga, rmc


def check_gps_fix(log, name, t0, want_fixes):
    """The fixes: GGA quality 1 around Berlin with 6..14 satellites, RMC 'A' with the same
    position, GGA times 1 s apart (within one open of the port) and close to UTC. (Whether the
    fix stays once there: check_gps_kept.)"""
    i = first_fix_index(log)
    if i is None:
        last = log.sentences[-1][0] - t0 if log.sentences else None
        return False, (f"{name}: no GGA with gps_qual >= 1 in {log.valid()} sentences (read until "
                       f"{last and round(last, 1)} s into the run; the profile's ttff is 20..40 s)")
    t_fix = log.sentences[i][0] - t0
    gga, rmc = fixes(log)
    problems = []
    if len(gga) < want_fixes:
        problems.append(f"only {len(gga)} fixes read (want {want_fixes})")
    lats, lons, sats = [], [], []
    for a, m in gga:
        q = fix_quality(m)
        if q != 1:
            problems.append(f"GGA gps_qual {m.gps_qual!r} (want 1: a GPS fix): {m}")
            continue
        lats.append(m.latitude)
        lons.append(m.longitude)
        try:
            sats.append(int(m.num_sats))
        except (TypeError, ValueError):
            problems.append(f"GGA num_sats {m.num_sats!r}: {m}")
    for a, m in rmc:
        lats.append(m.latitude)
        lons.append(m.longitude)
    out_lat = [x for x in lats if not LAT_RANGE[0] <= x <= LAT_RANGE[1]]
    out_lon = [x for x in lons if not LON_RANGE[0] <= x <= LON_RANGE[1]]
    out_sats = [n for n in sats if not SATS_RANGE[0] <= n <= SATS_RANGE[1]]
    if out_lat or out_lon:
        problems.append(f"positions outside Berlin: lat {out_lat[:3]}, lon {out_lon[:3]}")
    if out_sats:
        problems.append(f"num_sats outside 6..14: {out_sats[:5]}")
    # Time: 1 s from one GGA to the next within a session (all of them, before the fix too).
    steps = []
    prev = {}
    for a, s, m in log.sentences:
        if m.sentence_type != "GGA" or m.timestamp is None:
            continue
        if s in prev:
            steps.append(round(day_diff(tod(m.timestamp), tod(prev[s])), 3))
        prev[s] = m.timestamp
    odd = sorted({x for x in steps if x != 1.0})
    if not steps or odd:
        problems.append(f"GGA time steps {odd} (want 1 s each; {len(steps)} steps)")
    # The receiver's clock is UTC: fix time vs arrival.
    offs = [day_diff(tod(m.timestamp), utc_tod(a)) for a, m in gga if m.timestamp is not None]
    if offs and max(abs(x) for x in offs) > 2.0:
        problems.append(f"GGA time - UTC at arrival {min(offs):+.2f}..{max(offs):+.2f} s (want within 2 s)")
    dates = {m.datestamp for _, m in rmc if m.datestamp}
    today = datetime.datetime.now(datetime.timezone.utc).date()
    if dates - {today, today - datetime.timedelta(days=1)}:
        problems.append(f"RMC dates {sorted(map(str, dates))}, today is {today}")
    span = (f"lat {min(lats):.5f}..{max(lats):.5f}, lon {min(lons):.5f}..{max(lons):.5f}" if lats else "no position")
    return not problems, (
        f"{name}: first fix read {t_fix:.1f} s into the run (ttff 20..40 s), {len(gga)} GGA gps_qual 1 and {len(rmc)} "
        f"RMC 'A' after it: {span}, num_sats {min(sats) if sats else '-'}..{max(sats) if sats else '-'}; "
        f"{len(steps)} GGA time steps all 1 s; GGA time - UTC at arrival "
        f"{min(offs) if offs else 0:+.2f}..{max(offs) if offs else 0:+.2f} s"
        + (f"; WRONG: {'; '.join(problems[:4])}" if problems else ""))


def check_gps_kept(log, name, t0, events):
    """A receiver that has a fix keeps it while its device runs: docs/serial.md has no-fix
    sentences only before the first fix and after a reboot, and an unplug closes the port, it
    does not reboot the device. None when the run did not show it (no fix before a reopen)."""
    i = first_fix_index(log)
    if i is None:
        return None
    fix_session = log.sentences[i][1]
    later = [(a, s, m) for a, s, m in log.sentences[i:] if s > fix_session]
    if not later:
        return None
    lost = [(a, m) for a, _, m in log.sentences[i:]
            if (m.sentence_type == "GGA" and fix_quality(m) < 1) or (m.sentence_type == "RMC" and m.status != "A")]
    gga_lost = [(a, m) for a, m in lost if m.sentence_type == "GGA"]
    reopen = [t - t0 for k, t, _ in events if k == "back"]
    detail = (f"{name}: first fix {log.sentences[i][0] - t0:.1f} s into the run; port reopened after the unplug at "
              f"{', '.join(f'{x:.1f}' for x in reopen)} s; {len([1 for _, _, m in later if m.sentence_type == 'GGA'])} "
              f"GGA read after the reopen")
    if not lost:
        return True, detail + ", all with the fix (gps_qual 1, RMC 'A')"
    regained = [a for a, _, m in log.sentences if a > lost[-1][0] and m.sentence_type == "GGA" and fix_quality(m) >= 1]
    return False, (detail + f"; the fix was LOST: {len(gga_lost)} GGA with gps_qual 0 (and RMC 'V') from "
                   f"{lost[0][0] - t0:.1f} to {lost[-1][0] - t0:.1f} s, e.g. {gga_lost[0][1] if gga_lost else lost[0][1]}"
                   + (f"; fix again at {regained[0] - t0:.1f} s" if regained else "")
                   + " (no reboot: the unplug closed the port only; the receiver started over)")


# ------------------------------------------------------------------------------ modem ----

FINAL = re.compile(rb"^(OK|ERROR|\+CME ERROR:.*)$")


class Modem:
    def __init__(self, port):
        self.port = port
        self.urcs = []  # (time, line) of +CREG:/+CEREG: lines that came outside a command's answer
        self.pending = b""

    def command(self, cmd, timeout=3.0):
        """Sends cmd + CR; returns (echo seen, [lines], final line). Lines are the non-empty
        lines of the answer up to and including the final result code."""
        self.port.write(cmd.encode() + b"\r")
        deadline = time.time() + timeout
        buf = self.pending
        self.pending = b""
        lines = []
        echo = False
        while time.time() < deadline:
            while b"\n" in buf or (b"\r" in buf and not buf.endswith(b"\r")):
                # Lines end with CRLF; the echo ends with the CR of the command.
                idx = [i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0]
                cut = min(idx)
                raw, buf = buf[:cut], buf[cut + 1:]
                if raw.strip() == b"":
                    continue
                if raw == cmd.encode() and not lines:
                    echo = True
                    continue
                lines.append(raw.decode("ascii", errors="replace"))
                if FINAL.match(raw):
                    self.pending = buf
                    return echo, lines, lines[-1]
            buf += self.port.s.read(max(1, self.port.s.in_waiting))
        raise Skip(f"{cmd}: no final result code within {timeout:.0f} s (got {lines} {buf!r})")

    def wait_urc(self, pattern, deadline):
        """Waits for an unsolicited line matching pattern; returns (time, line) or None."""
        buf = self.pending
        self.pending = b""
        while time.time() < deadline:
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.strip(b"\r").decode("ascii", errors="replace")
                if not line:
                    continue
                self.urcs.append((time.time(), line))
                if re.fullmatch(pattern, line):
                    self.pending = buf
                    return self.urcs[-1]
            buf += self.port.s.read(max(1, self.port.s.in_waiting))
        self.pending = buf
        return None


def modem_checks(r, serial_mod, path, device_id, device_num, t0, args):
    try:
        port = Port(serial_mod, path, 115200)
    except (serial_mod.SerialException, OSError) as e:
        r.check("AT dialogue", False, f"cannot open {path} at 115200: {e}")
        return
    port.s.reset_input_buffer()
    m = Modem(port)
    name = f"{device_id}"

    def basic():
        echo1, l1, _ = m.command("AT")
        _, l2, _ = m.command("ATE0")
        echo3, l3, _ = m.command("AT")
        ok = l1 == ["OK"] and l2 == ["OK"] and l3 == ["OK"] and echo1 and not echo3
        return ok, (f"{name}: AT -> {l1} (echo {'on' if echo1 else 'OFF'}: the default is on), ATE0 -> {l2}, "
                    f"AT -> {l3} (echo {'STILL ON' if echo3 else 'off'})")

    def ident():
        _, li, _ = m.command("ATI")
        _, sn, _ = m.command("AT+CGSN")
        problems = []
        text = " | ".join(li)
        if li[-1] != "OK":
            problems.append("ATI not OK")
        if MODEM["manufacturer"] not in li:
            problems.append(f"manufacturer {MODEM['manufacturer']!r} not listed")
        if MODEM["model"] not in li:
            problems.append(f"model {MODEM['model']!r} not listed")
        if not any(MODEM["revision"] in x for x in li):
            problems.append(f"revision {MODEM['revision']!r} not listed")
        imei = [x for x in sn if re.fullmatch(r"\d{15}", x)]
        want_imei = f"35{device_num:013d}"
        if sn[-1] != "OK" or not imei:
            problems.append(f"AT+CGSN -> {sn} (want 15 digits)")
        elif imei[0] != want_imei:
            problems.append(f"IMEI {imei[0]}, the profile's template 35{{id:013}} gives {want_imei}")
        return not problems, (f"ATI -> {text}; AT+CGSN -> {' | '.join(sn)}"
                              + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

    def network():
        _, csq, _ = m.command("AT+CSQ")
        _, creg, _ = m.command("AT+CREG?")
        _, cops, _ = m.command("AT+COPS?")
        problems = []
        mm = [re.fullmatch(r"\+CSQ: (\d+),99", x) for x in csq]
        mm = [x for x in mm if x]
        if csq[-1] != "OK" or not mm or not 0 <= int(mm[0].group(1)) <= 31:
            problems.append(f"AT+CSQ -> {csq} (want +CSQ: 0..31,99)")
        if creg != ["+CREG: 0,1", "OK"]:
            problems.append(f"AT+CREG? -> {creg} (want +CREG: 0,1)")
        if cops[-1] != "OK" or not any(x.startswith("+COPS:") and f'"{MODEM["operator"]}"' in x for x in cops):
            problems.append(f"AT+COPS? -> {cops} (want the operator \"{MODEM['operator']}\")")
        return not problems, (f"AT+CSQ -> {' | '.join(csq)}; AT+CREG? -> {' | '.join(creg)}; "
                              f"AT+COPS? -> {' | '.join(cops)}" + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

    def errors():
        _, unk, _ = m.command("AT+XYZ")
        _, bad, _ = m.command("AT+CREG=9")
        _, cmee, _ = m.command("AT+CMEE=2")
        _, att, _ = m.command("AT+CGATT=9")
        problems = []
        if unk != ["ERROR"]:
            problems.append(f"AT+XYZ -> {unk} (want ERROR)")
        if bad != ["+CME ERROR: 50"]:
            problems.append(f"AT+CREG=9 -> {bad} (want +CME ERROR: 50)")
        if cmee != ["OK"]:
            problems.append(f"AT+CMEE=2 -> {cmee} (want OK)")
        text = att[-1][len("+CME ERROR:"):].strip() if att and att[-1].startswith("+CME ERROR:") else ""
        if len(att) != 1 or not text or text.isdigit():
            problems.append(f"AT+CGATT=9 after AT+CMEE=2 -> {att} (want +CME ERROR: <text>)")
        return not problems, (f"AT+XYZ -> {' | '.join(unk)}; AT+CREG=9 -> {' | '.join(bad)}; AT+CMEE=2 -> "
                              f"{' | '.join(cmee)}; AT+CGATT=9 -> {' | '.join(att)}"
                              + (f"; WRONG: {'; '.join(problems)}" if problems else ""))

    def urcs():
        _, on, _ = m.command("AT+CREG=1")
        if on != ["OK"]:
            return False, f"AT+CREG=1 -> {on} (want OK)"
        t_set = time.time() - t0
        start, end = args.outage_at, args.outage_at + args.outage_for
        lost = m.wait_urc(r"\+CREG: 2", t0 + start + 6)
        back = m.wait_urc(r"\+CREG: 1", t0 + end + 6) if lost else None
        seen = ", ".join(f"{x[1]!r} at {x[0] - t0:.1f} s" for x in m.urcs) or "nothing"
        if lost is None:
            return False, (f"AT+CREG=1 at {t_set:.1f} s; no '+CREG: 2' by {start + 6:.0f} s into the run "
                           f"(outage {start:.0f}..{end:.0f} s); the port said: {seen}")
        if back is None:
            return False, (f"'+CREG: 2' at {lost[0] - t0:.1f} s, no '+CREG: 1' by {end + 6:.0f} s "
                           f"(outage {start:.0f}..{end:.0f} s); the port said: {seen}")
        tl, tb = lost[0] - t0, back[0] - t0
        ok = start - 1.5 <= tl <= start + 3 and end - 1.5 <= tb <= end + 3
        _, creg, _ = m.command("AT+CREG?")
        ok = ok and creg == ["+CREG: 1,1", "OK"]
        return ok, (f"AT+CREG=1 at {t_set:.1f} s; outage {start:.0f}..{end:.0f} s: '+CREG: 2' at {tl:.1f} s, "
                    f"'+CREG: 1' at {tb:.1f} s (want each within -1.5..+3 s of its edge); then AT+CREG? -> "
                    f"{' | '.join(creg)} (want +CREG: 1,1); the port said: {seen}")

    r.check("AT, ATE0 (echo off)", *run_check(basic))
    r.check("ATI, AT+CGSN", *run_check(ident))
    r.check("AT+CSQ, AT+CREG?, AT+COPS?", *run_check(network))
    r.check("errors: ERROR, +CME ERROR: 50, AT+CMEE=2 text", *run_check(errors))
    r.check("AT+CREG=1: +CREG: 2 / +CREG: 1 over the outage", *run_check(urcs))
    port.close()


# ---------------------------------------------------------------------------- weather ----

def weather_check(serial_mod, path, device_id, want_lines=3, timeout_s=10):
    port = Port(serial_mod, path, 9600, marker=b"WX ")
    got = []
    try:
        for arrival, line in port.lines(time.time() + timeout_s):
            got.append((arrival, line.decode("ascii", errors="replace")))
            if len(got) >= want_lines:
                break
    finally:
        port.close()
    problems = []
    if len(got) < want_lines:
        problems.append(f"{len(got)} lines in {timeout_s} s (want {want_lines})")
    ms = [WX_LINE.fullmatch(l) for _, l in got]
    bad = [l for (_, l), mm in zip(got, ms) if not mm]
    if bad:
        problems.append(f"not in the template's format: {bad[0]!r}")
    ms = [mm for mm in ms if mm]
    if any(mm.group(1) != device_id for mm in ms):
        problems.append(f"device ids {[mm.group(1) for mm in ms]}, want {device_id}")
    seqs = [int(mm.group(2)) for mm in ms]
    ups = [int(mm.group(3)) for mm in ms]
    if any(b - a != 1 for a, b in zip(seqs, seqs[1:])):
        problems.append(f"seq {seqs} (want +1 per line)")
    if any(b <= a for a, b in zip(ups, ups[1:])):
        problems.append(f"up {ups} (want increasing)")
    gaps = [round(b[0] - a[0], 1) for a, b in zip(got, got[1:])]
    return not problems, (f"{device_id}: {len(got)} lines {gaps} s apart, e.g. {got[0][1]!r}; seq {seqs}, up {ups}"
                          if got else f"{device_id}: nothing") + (f"; WRONG: {'; '.join(problems)}" if problems else "")


# ----------------------------------------------------------------------------- Modbus ----

def modbus_check(path, device_id):
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        from pymodbus.client import ModbusSerialClient
    except ImportError as e:
        return False, f"cannot import pymodbus: {e}"
    c = ModbusSerialClient(path, baudrate=9600, bytesize=8, parity="N", stopbits=1, timeout=1, retries=1)
    if not c.connect():
        return False, f"cannot open {path} (9600 8N1)"
    try:
        params = inspect.signature(c.read_input_registers).parameters
        unit_kw = "device_id" if "device_id" in params else "slave"
        rr = c.read_input_registers(0, count=4, **{unit_kw: 1})
        if rr is None or rr.isError():
            return False, f"read input 0..3 on unit 1 of {path}: {rr}"
        regs = list(rr.registers)
        volt = struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]
        wh = (regs[3] << 16) | regs[2]  # u32 CDAB
        ok = 220 <= volt <= 240 and 812000 <= wh <= 813500
        return ok, (f"{device_id} unit 1 (pymodbus ModbusSerialClient, 9600 8N1): input 0..3 = {regs}: voltage "
                    f"f32 {volt:.2f} V (220..240), energy_wh u32 CDAB {wh} (812000..813500: 812.5 kWh at the start)")
    finally:
        c.close()


# ---------------------------------------------------------------------------- unplug ----

def unplug_watch(serial_mod, pynmea2, path, t0, args):
    """Reads a GPS port through its unplug: the link must go at unplug_at, come back (same path,
    a new /dev/pts) within unplug_for + a few seconds, and reading it again must work."""
    before_target = os.path.realpath(path)
    log_before = NmeaLog(pynmea2)
    log_after = NmeaLog(pynmea2)
    gone_at = reader_saw = None
    deadline_gone = t0 + args.unplug_at + 8
    try:
        port = Port(serial_mod, path, 9600, marker=b"$")
    except (serial_mod.SerialException, OSError) as e:
        return False, f"cannot open {path}: {e}"
    try:
        while time.time() < deadline_gone:
            try:
                for arrival, line in port.lines(min(deadline_gone, time.time() + 0.3)):
                    log_before.add(arrival, line, 1)
            except (serial_mod.SerialException, OSError) as e:
                reader_saw = f"{type(e).__name__}: {e}"
            if not os.path.lexists(path):
                gone_at = time.time()
                break
            if reader_saw:
                # The reader failed while the link is still there: it should go at once.
                t_err = time.time()
                while time.time() < t_err + 2 and os.path.lexists(path):
                    time.sleep(0.02)
                if not os.path.lexists(path):
                    gone_at = time.time()
                break
        if gone_at is not None and reader_saw is None:
            # The link went first: what does the open reader get now?
            try:
                for arrival, line in port.lines(time.time() + 1.0):
                    log_before.add(arrival, line, 1)
                reader_saw = "nothing (no error, no end of file) within 1 s"
            except (serial_mod.SerialException, OSError) as e:
                reader_saw = f"{type(e).__name__}: {e}"
    finally:
        port.close()
    if gone_at is None:
        return False, (f"{path} still there {args.unplug_at + 8:.0f} s into the run (unplug at {args.unplug_at:.0f} s"
                       f" for {args.unplug_for:.0f} s); {log_before.valid()} sentences read"
                       + (f"; the reader got {reader_saw}" if reader_saw else ""))
    back_deadline = gone_at + args.unplug_for + 5
    while time.time() < back_deadline and not os.path.exists(path):
        time.sleep(0.02)
    if not os.path.exists(path):
        return False, (f"link gone at {gone_at - t0:.1f} s, not back within {args.unplug_for + 5:.0f} s; "
                       f"{log_before.valid()} sentences read before")
    back_at = time.time()
    after_target = os.path.realpath(path)
    try:
        port = Port(serial_mod, path, 9600, marker=b"$")
        try:
            for arrival, line in port.lines(time.time() + 8):
                log_after.add(arrival, line, 2)
                if log_after.valid() >= 10:
                    break
        finally:
            port.close()
    except (serial_mod.SerialException, OSError) as e:
        return False, f"link back at {back_at - t0:.1f} s -> {after_target}, but reading it fails: {e}"
    gone_rel, back_rel = gone_at - t0, back_at - t0
    ok = (abs(gone_rel - args.unplug_at) <= 3 and back_at - gone_at <= args.unplug_for + 5
          and log_before.valid() >= 5 and log_after.valid() >= 10 and not log_after.malformed
          and os.path.islink(path) and after_target.startswith("/dev/pts/"))
    return ok, (f"{log_before.valid()} sentences before; link gone at {gone_rel:.1f} s (unplug at {args.unplug_at:.0f} s"
                f", the open reader got {reader_saw}); back at {back_rel:.1f} s, after {back_at - gone_at:.1f} s "
                f"(want <= {args.unplug_for + 5:.0f}); {before_target} -> {after_target}; reopened: "
                f"{log_after.valid()} valid sentences (want 10), {len(log_after.malformed)} malformed")


# ------------------------------------------------------------------------------- live ----

def cmd_live(args):
    r = Results(args.test)
    try:
        import serial as serial_mod
        import pynmea2
    except ImportError as e:
        r.check("imports", False, f"pyserial and pynmea2 are needed: {e}")
        return r
    try:
        text, rows, t0 = wait_for_map(args.map, args.map_timeout)
    except TimeoutError as e:
        r.check("serial map", False, str(e))
        return r
    t_start = time.time()
    base = os.path.abspath(args.fleetsim_cwd)
    by_persona = {}
    for row in rows:
        by_persona.setdefault(row["persona"], []).append(row)
    real = os.path.abspath(args.real_port) if args.real_port else None
    paths = {row["device_id"]: resolve(row["path"], base) for row in rows}
    header_ok = text.splitlines()[0] == "device_id,device,persona,path,baud"
    ptys = {d: p for d, p in paths.items() if os.path.abspath(p) != real}
    pty_ok = all(os.path.islink(p) and os.path.realpath(p).startswith("/dev/pts/") for p in ptys.values())
    counts = {k: len(v) for k, v in sorted(by_persona.items())}
    want = dict(x.split("=") for x in args.expect.split(",")) if args.expect else {}
    want = {k: int(v) for k, v in want.items()}
    rig_rows = [row for row in rows if real and os.path.abspath(resolve(row["path"], base)) == real]
    ok = header_ok and pty_ok and counts == want and (not real or len(rig_rows) == 1)
    r.check("serial map", ok, f"{len(rows)} ports {counts} (want {want}); header {'ok' if header_ok else 'WRONG'}; "
            f"{len(ptys)} PTY links under {os.path.dirname(next(iter(ptys.values()), ''))} "
            f"{'all -> /dev/pts/N' if pty_ok else 'NOT all links to /dev/pts/N'}"
            + (f"; the real port {real}: {rig_rows[0]['device_id'] if rig_rows else 'MISSING'}" if real else ""))
    nmea = [row for row in by_persona.get("nmea", []) if not rig_rows or row is not rig_rows[0]]
    if len(nmea) < 2:
        r.check("serial map", False, f"the checks need 2 NMEA PTYs, the map has {len(nmea)}")
        return r
    unplug_row, gps_row = nmea[0], nmea[1]

    # Threads along the run's timeline: the first fix (check 1) and the unplug (check 6).
    gps_log = NmeaLog(pynmea2)
    gps_events = []
    fix_deadline = t0 + args.ttff_max + 8

    def enough():
        """Enough read: the first fix and `fixes` fixes, and when the fix came before the unplug,
        as many GGA after the port came back (does the receiver keep its fix?)."""
        i = first_fix_index(gps_log)
        if i is None or gps_log.lines < 30 or len(fixes(gps_log)[0]) < args.fixes:
            return False
        fix_session = gps_log.sentences[i][1]
        unplug_over = time.time() > t0 + args.unplug_at + args.unplug_for + 8
        after = sum(1 for _, s, m in gps_log.sentences[i:] if s > fix_session and m.sentence_type == "GGA")
        return after >= args.fixes or (fix_session > 1 or unplug_over)

    gps_thread = threading.Thread(target=gps_reader, args=(serial_mod, gps_log, paths[gps_row["device_id"]],
                                                           fix_deadline, enough, gps_events), daemon=True)
    unplug_result = {}

    def unplug_main():
        unplug_result["r"] = run_check(lambda: unplug_watch(serial_mod, pynmea2, paths[unplug_row["device_id"]],
                                                            t0, args))

    unplug_thread = threading.Thread(target=unplug_main, daemon=True)
    gps_thread.start()
    unplug_thread.start()

    # ---- 2. the real port: the far end of the socat pair ----------------------------------
    if rig_rows:
        def rig():
            rig_log = NmeaLog(pynmea2)
            port = Port(serial_mod, args.real_far_end, 9600, marker=b"$")
            try:
                for arrival, line in port.lines(time.time() + 15):
                    rig_log.add(arrival, line, 1)
                    if rig_log.valid() >= args.rig_sentences:
                        break
            finally:
                port.close()
            ok = (rig_log.valid() >= args.rig_sentences and not rig_log.malformed and len(rig_log.bad_checksum) <= 1)
            return ok, (f"{rig_rows[0]['device_id']} on {real} (baud {rig_rows[0]['baud']}), read on the pair's other end "
                        f"{args.real_far_end}: {rig_log.valid()} valid sentences (want {args.rig_sentences}) "
                        f"{dict(sorted(rig_log.types.items()))}, {len(rig_log.malformed)} malformed, "
                        f"{len(rig_log.bad_checksum)} bad checksums; e.g. "
                        f"{str(rig_log.sentences[0][2]) if rig_log.sentences else '-'}")
        r.check("real port (socat pair): NMEA", *run_check(rig))

    # ---- 4. the weather station's lines -----------------------------------------------------
    for row in by_persona.get("lines", [])[:1]:
        r.check("weather station lines", *run_check(
            lambda: weather_check(serial_mod, paths[row["device_id"]], row["device_id"])))

    # ---- 5. the Modbus RTU meter ---------------------------------------------------------
    for row in by_persona.get("modbus_rtu", [])[:1]:
        r.check("Modbus RTU meter (pymodbus)", *run_check(lambda: modbus_check(paths[row["device_id"]],
                                                                                  row["device_id"])))

    # ---- 3. the AT dialogue, until the modem's outage is over -----------------------------
    for row in by_persona.get("at_modem", [])[:1]:
        modem_checks(r, serial_mod, paths[row["device_id"]], row["device_id"], int(row["device"]), t0, args)

    # ---- 1. and 6. ------------------------------------------------------------------------
    gps_thread.join(max(0.0, fix_deadline - time.time()) + 5)
    name = f"{gps_row['device_id']}"
    if gps_thread.is_alive():
        r.check("GPS reader", False, f"{name}: the reader did not stop by its deadline")
    reopened = [e for e in gps_events if e[0] == "back"]
    note(f"{name} read {t0 and round(min(time.time(), fix_deadline) - t0, 1)} s into the run; port events: "
         + (", ".join(f"{k} at {t - t0:.1f} s ({w})" for k, t, w in gps_events) or "none")
         + f"; {len(reopened)} reopen(s)")
    r.check("GPS NMEA parses (pynmea2, checksums)", *check_gps_parse(gps_log, name))
    r.check("GPS sentence types", *check_gps_types(gps_log, name))
    r.check("GPS before the first fix", *check_gps_nofix(gps_log, name))
    r.check("GPS fix", *check_gps_fix(gps_log, name, t0, args.fixes))
    kept = check_gps_kept(gps_log, name, t0, gps_events)
    if kept is None:
        note(f"{name}: its first fix came after the unplug: whether a fix survives an unplug is not tested")
    else:
        r.check("GPS keeps its fix over the unplug", *kept)
    unplug_thread.join(max(0.0, t0 + args.unplug_at + args.unplug_for + 30 - time.time()))
    r.check(f"unplug and replug {unplug_row['device_id']}",
            *unplug_result.get("r", (False, "the watcher did not finish")))
    note(f"({TEST} live checks took {time.time() - t_start:.1f} s, until {time.time() - t0:.1f} s into the run)")
    return r


# ----------------------------------------------------------------------------- report ----

def cmd_report(args):
    r, s = report_section(args, "serial")
    if s is None:
        return r
    want = [
        ("ports_opened", s.get("ports_opened", -1) >= args.ports + args.unplugs,
         f">= {args.ports} ports + {args.unplugs} reopened after the unplug"),
        ("unplugs", s.get("unplugs", -1) >= args.unplugs, f">= {args.unplugs}"),
        ("commands", s.get("commands", -1) >= args.min_commands, f">= {args.min_commands}"),
        ("command_errors", s.get("command_errors", -1) >= args.min_command_errors, f">= {args.min_command_errors}"),
        ("unsolicited", s.get("unsolicited", -1) >= 2, ">= 2: +CREG: 2 and +CREG: 1"),
        ("lines_out", s.get("lines_out", -1) > 0, "> 0"),
        ("open_errors", s.get("open_errors", -1) == 0, "== 0"),
    ]
    for key, ok, what in want:
        r.check(f"report serial.{key}", ok, f"{s.get(key)} ({what})")
    r.check("report serial: the rest", s.get("lines_in", 0) >= s.get("commands", 0) and s.get("bytes_out", 0) > 0,
            ", ".join(f"{k} {v}" for k, v in sorted(s.items())))
    if args.run_dir:
        left = sorted(os.listdir(os.path.join(args.run_dir, "serial"))) if os.path.isdir(
            os.path.join(args.run_dir, "serial")) else []
        r.check("PTY links removed at the end", not left,
                f"{os.path.join(args.run_dir, 'serial')}: " + (f"still has {left}" if left else "empty or gone"))
    return r


# ------------------------------------------------------------------------------- main ----

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", default=TEST, help="label printed on each line (default F)")
    sub = p.add_subparsers(dest="cmd", required=True)

    live = sub.add_parser("live", help="talk to a running fleetsim's serial ports")
    live.add_argument("--map", required=True, help="the run's serial-map.csv (waited for)")
    live.add_argument("--map-timeout", type=float, default=30, help="seconds to wait for the map")
    live.add_argument("--fleetsim-cwd", default=".", help="fleetsim's working directory (relative paths "
                                                          "in the map are relative to it)")
    live.add_argument("--expect", default="", help="ports per persona, e.g. nmea=3,at_modem=1")
    live.add_argument("--real-port", help="the real port a cohort was given (one end of a socat pair)")
    live.add_argument("--real-far-end", help="the pair's other end, read by the check")
    live.add_argument("--rig-sentences", type=int, default=10, help="valid sentences to read on the real port")
    live.add_argument("--ttff-max", type=float, default=40, help="latest first fix, s into the run")
    live.add_argument("--fixes", type=int, default=5, help="fixes to read after the first")
    live.add_argument("--unplug-at", type=float, required=True, help="s into the run the GPS ports are unplugged")
    live.add_argument("--unplug-for", type=float, required=True)
    live.add_argument("--outage-at", type=float, required=True, help="s into the run the modem loses the network")
    live.add_argument("--outage-for", type=float, required=True)

    rep = sub.add_parser("report", help="the run's report and exit code")
    rep.add_argument("--report", required=True)
    rep.add_argument("--exit-code", type=int, required=True)
    rep.add_argument("--ports", type=int, required=True, help="ports of the scenario")
    rep.add_argument("--unplugs", type=int, default=2, help="ports unplugged (each reopened once)")
    rep.add_argument("--min-commands", type=int, default=10)
    rep.add_argument("--min-command-errors", type=int, default=3)
    rep.add_argument("--run-dir", help="the run folder: its serial/ links must be gone")

    args = p.parse_args()
    r = cmd_live(args) if args.cmd == "live" else cmd_report(args)
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
