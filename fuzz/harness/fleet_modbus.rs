//! Bad-input checks of the Modbus slaves, shared by the fuzz targets `modbus_tcp` and
//! `modbus_rtu` and by `crates/fleet-modbus/tests/bad_input.rs`.
//!
//! The bytes are what a master sends, taken the way the servers take them (`server.rs`): a TCP
//! connection's bytes through `frame::decode_tcp`, a serial line's through `frame::RtuDecoder`,
//! each request through `slave::execute` on a simulated power meter (the shipped profile), the
//! answer framed with `encode_tcp` / `encode_rtu`. Checked:
//! - framing: a frame consumes exactly its bytes; `Ok(None)` and a header error consume none,
//!   and an error has a message; on a serial line every byte ends up in exactly one event and
//!   at most one ADU is buffered;
//! - answers: at most 253 bytes; an exception is `[function | 0x80, code]` with a code Modbus
//!   defines; a normal answer has the request's function code and the length the request asks
//!   for (byte counts of reads, echoes of writes); a broadcast is never answered; a meter with
//!   no faults configured answers every request it serves;
//! - counters: every request ends in exactly one of response, exception, silence, dropped
//!   connection or broadcast.

use std::path::Path;
use std::sync::OnceLock;

use bytes::BytesMut;
use fleet_core::load::{EmbeddedSource, load_fleet};
use fleet_core::modbus::exception::INJECTABLE;
use fleet_core::{Device, DeviceCtx, DeviceId, Effect, Effects, Fleet, Input, RunSeed, SimTime};
use fleet_metrics::ModbusCounters;
use fleet_modbus::frame::{
    MAX_PDU_LEN, MAX_RTU_ADU_LEN, MAX_TCP_ADU_LEN, RtuDecoder, RtuEvent, crc16, decode_tcp,
    encode_rtu, encode_tcp,
};
use fleet_modbus::slave::{Outcome, Transport, execute};

/// Two power meters without MQTT: unit 1 has no faults, unit 2 has every fault the cohort may
/// inject (exceptions, silence, dropped connections, bad CRCs, cut answers, swapped words,
/// delays).
const PLANT: &str = r#"
name = "fuzz-plant"
duration = "1h"
[[cohorts]]
name = "clean"
profile = "../device-profiles/power-meter.toml"
count = 1
mqtt = false
[[cohorts]]
name = "faulty"
profile = "../device-profiles/power-meter.toml"
count = 1
mqtt = false
[cohorts.modbus_faults]
exception = 0.1
exception_code = 4
silence = 0.1
drop_connection = 0.1
bad_crc = 0.2
truncated = 0.1
swapped_words = 0.3
delay_ms = 5.0
"#;

const FILES: &[(&str, &str)] = &[
    ("scenarios/plant.toml", PLANT),
    (
        "device-profiles/power-meter.toml",
        include_str!("../../device-profiles/power-meter.toml"),
    ),
    (
        "firmware-models/meter-fw.toml",
        include_str!("../../firmware-models/meter-fw.toml"),
    ),
];

/// The plant and its two meters, powered on, booted and serving (cloned for every input).
struct Plant {
    fleet: Fleet,
    meters: [Device; 2],
    now: SimTime,
}

fn plant() -> &'static Plant {
    static PLANT_FLEET: OnceLock<Plant> = OnceLock::new();
    PLANT_FLEET.get_or_init(|| {
        let fleet = match load_fleet(&EmbeddedSource(FILES), Path::new("scenarios/plant.toml")) {
            Ok(f) => f,
            Err(e) => panic!("the fuzz plant does not load: {e}"),
        };
        let mut now = SimTime::ZERO;
        let meters = [0, 1].map(|i| {
            let cohort = &fleet.cohorts[i];
            let mut dev = Device::new(RunSeed(1), DeviceId(cohort.first_device), cohort);
            dev.power_on_at(SimTime::ZERO);
            let mut fx = Effects::default();
            for _ in 0..64 {
                let at = dev.wake_at();
                if dev.modbus_serving(now.max(at)) || at.is_never() {
                    break;
                }
                now = now.max(at);
                fx.clear();
                dev.handle(now, Input::Wake, &ctx(&fleet, dev.id), &mut fx);
            }
            dev
        });
        for m in &meters {
            assert!(m.modbus_serving(now), "a fuzz plant meter does not serve");
        }
        Plant { fleet, meters, now }
    })
}

fn ctx(fleet: &Fleet, id: DeviceId) -> DeviceCtx<'_> {
    DeviceCtx {
        cohort: fleet.cohort_of(id),
        epoch_ms: 1_700_000_000_000,
        end: SimTime::NEVER,
        real_network: false,
    }
}

/// The meters of one connection or line, and the time.
struct Session {
    fleet: &'static Fleet,
    meters: [Device; 2],
    now: SimTime,
    fx: Effects,
    counters: ModbusCounters,
}

impl Session {
    fn new() -> Session {
        let p = plant();
        Session {
            fleet: &p.fleet,
            meters: p.meters.clone(),
            now: p.now,
            fx: Effects::default(),
            counters: ModbusCounters::default(),
        }
    }

    /// Meter `i` serves `pdu` as the shard would, then is woken if the request made it due
    /// (a write to its reboot register, say). Time moves by 1 ms per request.
    fn serve(&mut self, i: usize, pdu: &[u8], transport: Transport, broadcast: bool) -> Outcome {
        self.now = SimTime(self.now.0 + 1_000);
        let dev = &mut self.meters[i];
        let ctx = ctx(self.fleet, dev.id);
        let serving = dev.modbus_serving(self.now);
        let before = self.counters;
        self.fx.clear();
        let out = execute(
            dev,
            &ctx,
            self.now,
            &mut self.fx,
            &mut self.counters,
            pdu,
            transport,
            broadcast,
        );
        check_counters(&before, &self.counters);
        check_answer(pdu, &out, broadcast);
        if out.pdu.is_empty() && !out.drop_connection && !broadcast {
            // Silence: a meter that is not serving, injected silence, or an empty PDU.
            assert!(
                !serving || i == 1 || pdu.is_empty(),
                "the meter without faults left {pdu:02x?} unanswered"
            );
        }
        assert!(
            !out.drop_connection || (i == 1 && transport == Transport::Tcp),
            "a connection dropped without the fault"
        );
        if dev.wake_at() <= self.now {
            self.fx.clear();
            dev.handle(self.now, Input::Wake, &ctx, &mut self.fx);
            for e in &self.fx.list {
                assert!(
                    !matches!(e, Effect::Connect | Effect::Publish(_)),
                    "a meter without MQTT used it: {e:?}"
                );
            }
        }
        out
    }
}

/// One request ended in exactly one way: requests = responses + exceptions + silent + dropped
/// connections + broadcasts (the identity `slave::execute` documents).
fn check_counters(before: &ModbusCounters, after: &ModbusCounters) {
    let ends = |m: &ModbusCounters| {
        m.responses + m.exceptions_total() + m.silent + m.dropped_connections + m.broadcasts
    };
    assert_eq!(
        after.requests,
        before.requests + 1,
        "one request, one count"
    );
    assert_eq!(
        ends(after) - ends(before),
        1,
        "a request did not end in exactly one way: {before:?} -> {after:?}"
    );
}

/// The answer's shape against the request's (see the module documentation).
fn check_answer(req: &[u8], out: &Outcome, broadcast: bool) {
    let resp = &out.pdu;
    if broadcast {
        assert!(
            resp.is_empty(),
            "a broadcast {req:02x?} was answered {resp:02x?}"
        );
        return;
    }
    let (Some(&f), Some(&r0)) = (req.first(), resp.first()) else {
        return;
    };
    assert!(
        resp.len() <= MAX_PDU_LEN,
        "an answer of {} bytes",
        resp.len()
    );
    if r0 & 0x80 != 0 {
        assert_eq!(resp.len(), 2, "exception {resp:02x?} to {req:02x?}");
        assert_eq!(r0, f | 0x80, "exception {resp:02x?} to {req:02x?}");
        assert!(
            INJECTABLE.contains(&resp[1]),
            "exception code {:#04x}",
            resp[1]
        );
        return;
    }
    assert_eq!(r0, f, "answer {resp:02x?} to {req:02x?}");
    let word = |at: usize| u16::from_be_bytes([req[at], req[at + 1]]);
    match f {
        0x01 | 0x02 => {
            let bytes = usize::from(word(3)).div_ceil(8);
            assert_eq!(resp.len(), 2 + bytes, "read bits {req:02x?} -> {resp:02x?}");
            assert_eq!(usize::from(resp[1]), bytes);
        }
        0x03 | 0x04 => {
            let bytes = 2 * usize::from(word(3));
            assert_eq!(
                resp.len(),
                2 + bytes,
                "read registers {req:02x?} -> {resp:02x?}"
            );
            assert_eq!(usize::from(resp[1]), bytes);
        }
        0x17 => {
            let bytes = 2 * usize::from(word(3));
            assert_eq!(
                resp.len(),
                2 + bytes,
                "read/write {req:02x?} -> {resp:02x?}"
            );
            assert_eq!(usize::from(resp[1]), bytes);
        }
        0x05 | 0x06 => assert_eq!(resp[..], req[..], "a write single is echoed"),
        0x0F | 0x10 => assert_eq!(resp[..], req[..5], "a write multiple is echoed"),
        0x2B => {
            assert!(resp.len() >= 7, "device identification {resp:02x?}");
            assert_eq!(resp[1..3], req[1..3], "device identification {resp:02x?}");
        }
        _ => panic!("function {f:#04x} answered normally: {resp:02x?}"),
    }
}

/// A Modbus TCP connection: the first byte picks the meter behind every unit id (bit 0), the
/// rest is what the master sends.
pub fn modbus_tcp(data: &[u8]) {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let meter = usize::from(pick & 1);
    let mut s = Session::new();
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match decode_tcp(&mut buf) {
            Ok(Some(frame)) => {
                assert!(
                    (1..=MAX_PDU_LEN).contains(&frame.pdu.len()),
                    "a frame with a PDU of {} bytes",
                    frame.pdu.len()
                );
                assert_eq!(
                    before - buf.len(),
                    7 + frame.pdu.len(),
                    "a frame consumed other bytes"
                );
                let answer = s.serve(meter, &frame.pdu, Transport::Tcp, false);
                if answer.drop_connection {
                    return;
                }
                if answer.pdu.is_empty() {
                    continue;
                }
                out.clear();
                encode_tcp(&mut out, frame.transaction, frame.unit, &answer.pdu);
                let mut back = BytesMut::from(&out[..]);
                match decode_tcp(&mut back) {
                    Ok(Some(f)) => {
                        assert_eq!((f.transaction, f.unit), (frame.transaction, frame.unit));
                        assert_eq!(f.pdu[..], answer.pdu[..]);
                    }
                    other => panic!("our answer {out:02x?} does not frame: {other:?}"),
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                assert!(
                    before < MAX_TCP_ADU_LEN,
                    "{before} bytes waiting for a frame"
                );
                return;
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "a header error consumed bytes");
                assert!(
                    !e.to_string().trim().is_empty(),
                    "a header error without a message"
                );
                return;
            }
        }
    }
}

/// A serial line: byte 0 sets the size of the pieces the bytes arrive in (1..=64), byte 1 which
/// pieces are followed by a silence (bit n: piece n, n mod 8); the line falls silent at the end.
/// Unit 1 is the meter without faults, unit 2 the faulty one, 0 broadcasts to both.
pub fn modbus_rtu(data: &[u8]) {
    let [piece, gaps, stream @ ..] = data else {
        return;
    };
    let piece = usize::from(piece % 64) + 1;
    let mut s = Session::new();
    let mut decoder = RtuDecoder::new();
    let mut accounted = 0usize;
    let mut events = Vec::new();
    let chunks: Vec<&[u8]> = stream.chunks(piece).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        decoder.push(chunk);
        assert!(
            decoder.buffered() <= MAX_RTU_ADU_LEN,
            "{} bytes buffered",
            decoder.buffered()
        );
        while let Some(e) = decoder.next_event() {
            events.push(e);
        }
        if gaps >> (n % 8) & 1 == 1 || n + 1 == chunks.len() {
            if let Some(e) = decoder.gap() {
                events.push(e);
            }
            while let Some(e) = decoder.next_event() {
                events.push(e);
            }
            assert_eq!(decoder.buffered(), 0, "bytes left after a silence");
        }
        for e in events.drain(..) {
            accounted += rtu_event(&mut s, e);
        }
    }
    assert_eq!(
        accounted,
        stream.len(),
        "bytes on the line that no event accounts for"
    );
}

/// Serves one decoded event as `server::serve_rtu` does; returns the bytes it stands for.
fn rtu_event(s: &mut Session, event: RtuEvent) -> usize {
    match event {
        RtuEvent::Frame { unit, pdu } => {
            assert!(
                (1..=MAX_PDU_LEN).contains(&pdu.len()),
                "an RTU PDU of {} bytes",
                pdu.len()
            );
            match unit {
                0 => {
                    for i in 0..2 {
                        s.serve(i, &pdu, Transport::Rtu, true);
                    }
                }
                1 | 2 => {
                    let answer = s.serve(usize::from(unit - 1), &pdu, Transport::Rtu, false);
                    if !answer.pdu.is_empty() {
                        let mut out = Vec::new();
                        encode_rtu(&mut out, unit, &answer.pdu);
                        let (body, crc) = out.split_at(out.len() - 2);
                        assert_eq!(crc16(body).to_le_bytes(), crc, "our answer's CRC");
                        assert!(out.len() <= MAX_RTU_ADU_LEN);
                    }
                }
                _ => {} // another slave's address
            }
            pdu.len() + 3
        }
        RtuEvent::BadCrc { len, .. } => {
            assert!(
                (4..=MAX_RTU_ADU_LEN).contains(&len),
                "a bad-CRC frame of {len} bytes"
            );
            len
        }
        RtuEvent::Garbage { len } => {
            assert!(len > 0, "an empty garbage event");
            len
        }
    }
}
