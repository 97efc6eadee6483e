//! Modbus framing for a slave: Modbus TCP (MBAP header) and Modbus RTU (unit id, PDU, CRC).
//! Pure code, no I/O: callers read bytes into buffers and hand them over.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Longest PDU (function code and data) Modbus allows.
pub const MAX_PDU_LEN: usize = 253;
/// Longest Modbus TCP ADU: 7-byte MBAP header (with the unit id) and the PDU.
pub const MAX_TCP_ADU_LEN: usize = MBAP_LEN + MAX_PDU_LEN;
/// Longest Modbus RTU ADU: unit id, PDU, 2-byte CRC.
pub const MAX_RTU_ADU_LEN: usize = 1 + MAX_PDU_LEN + 2;

/// MBAP header length, including the unit id.
const MBAP_LEN: usize = 7;
/// Smallest and largest valid values of the MBAP length field (unit id and PDU).
const MBAP_LENGTH_FIELD: std::ops::RangeInclusive<u16> = 2..=(1 + MAX_PDU_LEN as u16);

/// One Modbus TCP request as it came off the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    /// Transaction id, to be echoed in the response.
    pub transaction: u16,
    /// Unit id, to be echoed in the response.
    pub unit: u8,
    /// The PDU: function code and data (1..=253 bytes).
    pub pdu: Bytes,
}

/// A Modbus TCP header that cannot be right. The caller should close the connection, as it
/// cannot find the start of the next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TcpFrameError {
    /// The protocol id is not 0 (Modbus).
    #[error("MBAP protocol id is {0}, not 0 (Modbus)")]
    BadProtocol(u16),
    /// The length field is below 2 or above 254.
    #[error("MBAP length field is {0}, outside 2..=254")]
    BadLength(u16),
}

/// Takes one complete frame off the front of `buf` (a `BytesMut` the caller reads into);
/// `Ok(None)` means more bytes are needed.
///
/// A bad header is reported as soon as its bytes are in, and is left in `buf`. After
/// `Ok(None)`, `buf` holds less than [`MAX_TCP_ADU_LEN`] bytes.
pub fn decode_tcp(buf: &mut BytesMut) -> Result<Option<TcpFrame>, TcpFrameError> {
    if let Some(&[_, _, p0, p1]) = buf.first_chunk::<4>() {
        let protocol = u16::from_be_bytes([p0, p1]);
        if protocol != 0 {
            return Err(TcpFrameError::BadProtocol(protocol));
        }
    }
    let Some(&[t0, t1, _, _, l0, l1]) = buf.first_chunk::<6>() else {
        return Ok(None);
    };
    let length = u16::from_be_bytes([l0, l1]);
    if !MBAP_LENGTH_FIELD.contains(&length) {
        return Err(TcpFrameError::BadLength(length));
    }
    let total = 6 + usize::from(length);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(6);
    let unit = frame.get_u8();
    Ok(Some(TcpFrame {
        transaction: u16::from_be_bytes([t0, t1]),
        unit,
        pdu: frame,
    }))
}

/// Appends a Modbus TCP frame: MBAP header (protocol id 0) and the PDU.
///
/// The PDU should be at most [`MAX_PDU_LEN`] bytes; a longer one is written as it is, and
/// peers will reject the frame.
pub fn encode_tcp(out: &mut Vec<u8>, transaction: u16, unit: u8, pdu: &[u8]) {
    let length = u16::try_from(pdu.len().saturating_add(1)).unwrap_or(u16::MAX);
    out.reserve(MBAP_LEN + pdu.len());
    out.extend_from_slice(&transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&length.to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
}

/// CRC-16/MODBUS lookup table (reflected polynomial 0xA001), one entry per byte value.
static CRC_TABLE: [u16; 256] = crc_table();

const fn crc_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// Feeds `data` into a running CRC-16/MODBUS.
fn crc_update(crc: u16, data: &[u8]) -> u16 {
    data.iter().fold(crc, |crc, &byte| {
        (crc >> 8) ^ CRC_TABLE[usize::from(crc.to_le_bytes()[0] ^ byte)]
    })
}

/// CRC-16/MODBUS of `data` (init 0xFFFF). On the wire it goes low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    crc_update(0xFFFF, data)
}

/// Appends a Modbus RTU frame: unit id, PDU, CRC (low byte first).
pub fn encode_rtu(out: &mut Vec<u8>, unit: u8, pdu: &[u8]) {
    let crc = crc_update(crc16(&[unit]), pdu);
    out.reserve(pdu.len() + 3);
    out.push(unit);
    out.extend_from_slice(pdu);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The function code of an RTU request is one whose length we cannot tell from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot tell the length of a request with function code {0:#04x}")]
pub struct UnknownFunction(pub u8);

/// What the first bytes of a request ADU tell about its length.
enum Need {
    /// The whole ADU is this long.
    Total(usize),
    /// At least this many bytes are needed to tell.
    AtLeast(usize),
    /// Unknown function code.
    Unknown(u8),
}

fn request_need(buf: &[u8]) -> Need {
    let Some(&function) = buf.get(1) else {
        return Need::AtLeast(2);
    };
    // Length is `fixed` plus the byte count at index `at`.
    let counted = |at: usize, fixed: usize| match buf.get(at) {
        Some(&count) => Need::Total(fixed + usize::from(count)),
        None => Need::AtLeast(at + 1),
    };
    match function {
        0x01..=0x06 | 0x08 => Need::Total(8),
        0x07 | 0x0B | 0x0C | 0x11 => Need::Total(4),
        0x0F | 0x10 => counted(6, 9),
        0x14 | 0x15 => counted(2, 5),
        0x16 => Need::Total(10),
        0x17 => counted(10, 13),
        0x18 => Need::Total(6),
        0x2B => Need::Total(7),
        other => Need::Unknown(other),
    }
}

/// How long a *request* ADU starting with these bytes is, once enough bytes are there to tell.
///
/// FC 1..=6 and 8: 8 bytes. FC 0x0F, 0x10: 9 + byte count (at index 6). FC 0x17: 13 + byte
/// count (at index 10). FC 0x07, 0x0B, 0x0C, 0x11: 4 bytes. FC 0x14, 0x15: 5 + byte count
/// (at index 2). FC 0x16: 10 bytes. FC 0x18: 6 bytes. FC 0x2B: 7 bytes.
///
/// `Ok(None)` means more bytes are needed to tell; `Err` means an unknown function code (the
/// caller then waits for line silence). The length may exceed [`MAX_RTU_ADU_LEN`], in which
/// case the request is not valid.
pub fn rtu_request_len(buf: &[u8]) -> Result<Option<usize>, UnknownFunction> {
    match request_need(buf) {
        Need::Total(n) => Ok(Some(n)),
        Need::AtLeast(_) => Ok(None),
        Need::Unknown(function) => Err(UnknownFunction(function)),
    }
}

/// What [`RtuDecoder`] found on the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtuEvent {
    /// A request with a valid CRC.
    Frame {
        /// Unit id (0 is broadcast).
        unit: u8,
        /// The PDU, without unit id and CRC (1..=253 bytes).
        pdu: Bytes,
    },
    /// A frame whose CRC did not match (a slave stays silent; the caller counts it).
    BadCrc {
        /// Unit id as received.
        unit: u8,
        /// Bytes in the frame, unit id and CRC included.
        len: usize,
    },
    /// Bytes that made no frame (unknown function code followed by silence, too short,
    /// overlong, or the rest of a burst after a bad CRC); counted and dropped.
    Garbage {
        /// How many bytes were dropped.
        len: usize,
    },
}

/// A stream decoder for a slave on a serial line.
///
/// The caller pushes bytes as they arrive and calls [`gap`](Self::gap) when the line has been
/// silent for 3.5 character times (the caller owns the timer). Requests whose length is known
/// from their function code come out as soon as their last byte is in, so a master may
/// pipeline them without gaps. Other bytes wait for the next gap.
///
/// At most [`MAX_RTU_ADU_LEN`] bytes are buffered. Every byte pushed ends up in exactly one
/// event (a `Frame` stands for its PDU plus 3 bytes). Events wait in a queue until taken, so
/// call [`next_event`](Self::next_event) until it gives `None` after each push and gap.
#[derive(Debug, Default)]
pub struct RtuDecoder {
    /// The start of the current ADU.
    buf: Vec<u8>,
    /// `Some(n)`: dropping bytes until the next gap, `n` of them so far not yet reported.
    skipping: Option<usize>,
    /// Events not yet taken.
    events: VecDeque<RtuEvent>,
}

impl RtuDecoder {
    /// A decoder waiting for the first byte of a request.
    pub fn new() -> Self {
        RtuDecoder {
            buf: Vec::with_capacity(MAX_RTU_ADU_LEN),
            skipping: None,
            events: VecDeque::new(),
        }
    }

    /// Adds bytes that came off the line.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if let Some(dropped) = &mut self.skipping {
                *dropped = dropped.saturating_add(bytes.len());
                return;
            }
            let want = match request_need(&self.buf) {
                Need::Total(n) | Need::AtLeast(n) => n.saturating_sub(self.buf.len()),
                Need::Unknown(_) if self.buf.len() >= MAX_RTU_ADU_LEN => {
                    // Too long to be a frame: drop it all until the next gap.
                    self.skipping = Some(self.buf.len());
                    self.buf.clear();
                    continue;
                }
                Need::Unknown(_) => MAX_RTU_ADU_LEN - self.buf.len(),
            };
            let (head, rest) = bytes.split_at(want.clamp(1, bytes.len()));
            self.buf.extend_from_slice(head);
            bytes = rest;
            self.settle();
        }
    }

    /// Emits the buffered ADU if it is complete, or starts skipping if it cannot be valid.
    fn settle(&mut self) {
        let Need::Total(n) = request_need(&self.buf) else {
            return;
        };
        if n > MAX_RTU_ADU_LEN {
            self.skipping = Some(self.buf.len());
            self.buf.clear();
        } else if n == self.buf.len() {
            let event = valid_frame(&self.buf).unwrap_or_else(|| {
                // Resynchronise at the next gap: what follows may be the rest of a
                // damaged frame.
                self.skipping = Some(0);
                RtuEvent::BadCrc {
                    unit: self.buf.first().copied().unwrap_or(0),
                    len: n,
                }
            });
            self.buf.clear();
            self.events.push_back(event);
        }
    }

    /// The next event from what has been pushed so far, if any is complete.
    pub fn next_event(&mut self) -> Option<RtuEvent> {
        self.events.pop_front()
    }

    /// The line went silent: whatever is buffered and incomplete is a frame now (checked by
    /// CRC) or garbage. Returns the next event like [`next_event`](Self::next_event) does;
    /// call that for any further ones.
    #[must_use = "the event returned is taken off the queue; handle it"]
    pub fn gap(&mut self) -> Option<RtuEvent> {
        if let Some(dropped) = self.skipping.take() {
            if dropped > 0 {
                self.events.push_back(RtuEvent::Garbage { len: dropped });
            }
        } else if !self.buf.is_empty() {
            let event = valid_frame(&self.buf).unwrap_or(RtuEvent::Garbage {
                len: self.buf.len(),
            });
            self.buf.clear();
            self.events.push_back(event);
        }
        self.events.pop_front()
    }

    /// How many bytes of an unfinished ADU are held (at most [`MAX_RTU_ADU_LEN`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// `adu` as a frame, if it has a unit id, a PDU of at least one byte and a matching CRC.
fn valid_frame(adu: &[u8]) -> Option<RtuEvent> {
    let (body, crc) = adu.split_last_chunk::<2>()?;
    let (&unit, pdu) = body.split_first()?;
    if pdu.is_empty() || crc16(body) != u16::from_le_bytes(*crc) {
        return None;
    }
    Some(RtuEvent::Frame {
        unit,
        pdu: Bytes::copy_from_slice(pdu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{self, Request};
    use proptest::prelude::*;

    fn rtu(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_rtu(&mut out, unit, pdu);
        out
    }

    fn frame(unit: u8, pdu: &[u8]) -> RtuEvent {
        RtuEvent::Frame {
            unit,
            pdu: Bytes::copy_from_slice(pdu),
        }
    }

    fn drain(dec: &mut RtuDecoder) -> Vec<RtuEvent> {
        std::iter::from_fn(|| dec.next_event()).collect()
    }

    /// The bit-by-bit CRC the table is built from.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc = 0xFFFFu16;
        for &byte in data {
            crc ^= u16::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc16_known_vectors() {
        assert_eq!(crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]), 0xCDC5);
        assert_eq!(
            rtu(0x01, &[0x03, 0x00, 0x00, 0x00, 0x0A]),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
        assert_eq!(crc16(&[0x11, 0x03, 0x00, 0x6B, 0x00, 0x03]), 0x8776);
        assert_eq!(
            rtu(0x11, &[0x03, 0x00, 0x6B, 0x00, 0x03]),
            [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]
        );
        // The CRC-16/MODBUS check value.
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(crc16(&[]), 0xFFFF);
        // A frame with its CRC appended has a residue of zero.
        assert_eq!(crc16(&rtu(0x11, &[0x03, 0x00, 0x6B, 0x00, 0x03])), 0);
    }

    #[test]
    fn rtu_request_lengths() {
        type Case = (&'static [u8], Result<Option<usize>, UnknownFunction>);
        let cases: &[Case] = &[
            (&[], Ok(None)),
            (&[0x01], Ok(None)),
            (&[0x01, 0x01], Ok(Some(8))),
            (&[0x01, 0x06], Ok(Some(8))),
            (&[0x01, 0x08], Ok(Some(8))),
            (&[0x01, 0x07], Ok(Some(4))),
            (&[0x01, 0x0B], Ok(Some(4))),
            (&[0x01, 0x0C], Ok(Some(4))),
            (&[0x01, 0x11], Ok(Some(4))),
            (&[0x01, 0x2B], Ok(Some(7))),
            (&[0x01, 0x16], Ok(Some(10))),
            (&[0x01, 0x18], Ok(Some(6))),
            (&[0x01, 0x0F, 0, 0, 0, 10], Ok(None)),
            (&[0x01, 0x0F, 0, 0, 0, 10, 2], Ok(Some(11))),
            (&[0x01, 0x10, 0, 1, 0, 2, 4], Ok(Some(13))),
            (&[0x01, 0x10, 0, 1, 0, 2, 255], Ok(Some(264))),
            (&[0x01, 0x17, 0, 0, 0, 1, 0, 0, 0, 1], Ok(None)),
            (&[0x01, 0x17, 0, 0, 0, 1, 0, 0, 0, 1, 2], Ok(Some(15))),
            (&[0x01, 0x14], Ok(None)),
            (&[0x01, 0x14, 7], Ok(Some(12))),
            (&[0x01, 0x00], Err(UnknownFunction(0x00))),
            (&[0x01, 0x09], Err(UnknownFunction(0x09))),
            (&[0x01, 0x83, 0x02], Err(UnknownFunction(0x83))),
        ];
        for (buf, want) in cases {
            assert_eq!(rtu_request_len(buf), *want, "{buf:02x?}");
        }
    }

    #[test]
    fn tcp_spec_example_and_encode() {
        let wire = [
            0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x11, 0x03, 0x00, 0x6B, 0x00, 0x03,
        ];
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            decode_tcp(&mut buf),
            Ok(Some(TcpFrame {
                transaction: 1,
                unit: 0x11,
                pdu: Bytes::from_static(&[0x03, 0x00, 0x6B, 0x00, 0x03]),
            }))
        );
        assert!(buf.is_empty());
        let mut out = vec![0xEE];
        encode_tcp(&mut out, 1, 0x11, &[0x03, 0x00, 0x6B, 0x00, 0x03]);
        assert_eq!(out[1..], wire);
    }

    #[test]
    fn tcp_partial_header_and_body() {
        let mut wire = Vec::new();
        encode_tcp(&mut wire, 0xBEEF, 9, &[0x06, 0x00, 0x01, 0x00, 0x03]);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode_tcp(&mut buf), Ok(None), "{cut} bytes");
            assert_eq!(buf.len(), cut, "nothing taken with {cut} bytes");
            buf.extend_from_slice(&wire[cut..]);
            let got = decode_tcp(&mut buf).unwrap().unwrap();
            assert_eq!((got.transaction, got.unit), (0xBEEF, 9));
            assert_eq!(got.pdu[..], [0x06, 0x00, 0x01, 0x00, 0x03]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn tcp_two_frames_in_one_buffer() {
        let mut wire = Vec::new();
        encode_tcp(&mut wire, 1, 1, &[0x03, 0x00, 0x00, 0x00, 0x01]);
        encode_tcp(&mut wire, 2, 2, &[0x2B, 0x0E, 0x01, 0x00]);
        wire.extend_from_slice(&[0x00, 0x03, 0x00]); // start of a third
        let mut buf = BytesMut::from(&wire[..]);
        let a = decode_tcp(&mut buf).unwrap().unwrap();
        let b = decode_tcp(&mut buf).unwrap().unwrap();
        assert_eq!((a.transaction, a.unit, a.pdu.len()), (1, 1, 5));
        assert_eq!(
            (b.transaction, b.unit, &b.pdu[..]),
            (2, 2, &[0x2B, 0x0E, 0x01, 0x00][..])
        );
        assert_eq!(decode_tcp(&mut buf), Ok(None));
        assert_eq!(buf[..], [0x00, 0x03, 0x00]);
    }

    #[test]
    fn tcp_bad_headers() {
        // A bad protocol id is seen with 4 bytes.
        let mut buf = BytesMut::from(&[0x00, 0x01, 0x00, 0x01][..]);
        assert_eq!(decode_tcp(&mut buf), Err(TcpFrameError::BadProtocol(1)));
        let mut buf = BytesMut::from(&[0, 1, 0xAB, 0xCD, 0, 6, 1, 3, 0, 0, 0, 1][..]);
        assert_eq!(
            decode_tcp(&mut buf),
            Err(TcpFrameError::BadProtocol(0xABCD))
        );
        for (length, ok) in [
            (0u16, false),
            (1, false),
            (2, true),
            (254, true),
            (255, false),
        ] {
            let mut buf = BytesMut::from(&[0, 1, 0, 0][..]);
            buf.extend_from_slice(&length.to_be_bytes());
            let got = decode_tcp(&mut buf);
            if ok {
                assert_eq!(got, Ok(None), "length {length}");
            } else {
                assert_eq!(
                    got,
                    Err(TcpFrameError::BadLength(length)),
                    "length {length}"
                );
            }
        }
        let mut buf = BytesMut::from(&[0, 1, 0, 0, 0xFF, 0xFF, 1][..]);
        assert_eq!(decode_tcp(&mut buf), Err(TcpFrameError::BadLength(0xFFFF)));
        // The largest PDU is accepted.
        let mut wire = Vec::new();
        encode_tcp(&mut wire, 7, 1, &[0x10; MAX_PDU_LEN]);
        assert_eq!(wire.len(), MAX_TCP_ADU_LEN);
        let got = decode_tcp(&mut BytesMut::from(&wire[..])).unwrap().unwrap();
        assert_eq!(got.pdu.len(), MAX_PDU_LEN);
    }

    #[test]
    fn rtu_byte_by_byte() {
        let wire = rtu(0x11, &[0x03, 0x00, 0x6B, 0x00, 0x03]);
        let mut dec = RtuDecoder::new();
        for (i, &b) in wire.iter().enumerate() {
            assert_eq!(dec.next_event(), None);
            dec.push(&[b]);
            if i + 1 < wire.len() {
                assert_eq!(dec.buffered(), i + 1);
            }
        }
        assert_eq!(
            dec.next_event(),
            Some(frame(0x11, &[0x03, 0x00, 0x6B, 0x00, 0x03]))
        );
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.gap(), None);
        // A variable-length request, byte by byte.
        let pdu = [0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02];
        for &b in &rtu(0x01, &pdu) {
            dec.push(&[b]);
        }
        assert_eq!(drain(&mut dec), [frame(0x01, &pdu)]);
    }

    #[test]
    fn rtu_back_to_back_frames() {
        let pdus: [&[u8]; 5] = [
            &[0x03, 0x00, 0x6B, 0x00, 0x03],
            &[0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01],
            &[0x11],
            &[
                0x17, 0, 3, 0, 6, 0, 0x0E, 0, 3, 6, 0, 0xFF, 0, 0xFF, 0, 0xFF,
            ],
            &[0x2B, 0x0E, 0x01, 0x00],
        ];
        let mut wire = Vec::new();
        for (unit, pdu) in pdus.iter().enumerate() {
            encode_rtu(&mut wire, unit as u8, pdu);
        }
        let want: Vec<_> = pdus
            .iter()
            .enumerate()
            .map(|(unit, pdu)| frame(unit as u8, pdu))
            .collect();
        // All at once, and in chunks of every size.
        for chunk in 1..=wire.len() {
            let mut dec = RtuDecoder::new();
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                dec.push(part);
                got.extend(drain(&mut dec));
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert_eq!(dec.gap(), None);
        }
    }

    #[test]
    fn rtu_bad_crc_then_resync_after_gap() {
        let good = rtu(0x01, &[0x03, 0x00, 0x00, 0x00, 0x0A]);
        let mut bad = good.clone();
        bad[3] ^= 0x40;
        let mut dec = RtuDecoder::new();
        dec.push(&bad);
        assert_eq!(dec.next_event(), Some(RtuEvent::BadCrc { unit: 1, len: 8 }));
        // A good frame right after a bad one, with no gap, is ignored...
        dec.push(&good);
        assert_eq!(dec.next_event(), None);
        assert_eq!(dec.buffered(), 0);
        // ...and reported as garbage at the gap.
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 8 }));
        assert_eq!(dec.next_event(), None);
        // After the gap, decoding starts fresh.
        dec.push(&good);
        assert_eq!(
            dec.next_event(),
            Some(frame(1, &[0x03, 0x00, 0x00, 0x00, 0x0A]))
        );
        // A bad CRC followed directly by silence gives just the one event.
        dec.push(&bad);
        assert_eq!(drain(&mut dec), [RtuEvent::BadCrc { unit: 1, len: 8 }]);
        assert_eq!(dec.gap(), None);
        dec.push(&good);
        assert_eq!(drain(&mut dec).len(), 1);
    }

    #[test]
    fn rtu_unknown_function_then_gap() {
        // Unknown function code with a good CRC: a frame at the gap, for an exception reply.
        let wire = rtu(0x05, &[0x09, 0x12, 0x34]);
        let mut dec = RtuDecoder::new();
        dec.push(&wire);
        assert_eq!(dec.next_event(), None);
        assert_eq!(dec.buffered(), wire.len());
        assert_eq!(dec.gap(), Some(frame(0x05, &[0x09, 0x12, 0x34])));
        assert_eq!(dec.buffered(), 0);
        // The same with a bad CRC: garbage.
        let mut bad = wire.clone();
        bad[4] ^= 1;
        dec.push(&bad);
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 6 }));
        // Shortest frame: unit, fc, crc.
        dec.push(&rtu(0x05, &[0x41]));
        assert_eq!(dec.gap(), Some(frame(0x05, &[0x41])));
        // An exception function code (a master never sends one) also waits for the gap.
        dec.push(&rtu(0x05, &[0x83, 0x02]));
        assert_eq!(dec.next_event(), None);
        assert_eq!(dec.gap(), Some(frame(0x05, &[0x83, 0x02])));
    }

    #[test]
    fn rtu_garbage() {
        let mut dec = RtuDecoder::new();
        assert_eq!(dec.gap(), None, "nothing buffered");
        // Too short.
        dec.push(&[0x01, 0x03, 0x00]);
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 3 }));
        dec.push(&[0x01]);
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 1 }));
        // A known function cut short by silence.
        let wire = rtu(0x01, &[0x03, 0x00, 0x00, 0x00, 0x0A]);
        dec.push(&wire[..6]);
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 6 }));
        // A byte count that makes the frame longer than 256 bytes: dropped at once.
        dec.push(&[0x01, 0x10, 0x00, 0x00, 0x00, 0x7F, 0xFE]);
        assert_eq!(dec.buffered(), 0);
        dec.push(&[0xAA; 100]);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next_event(), None);
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 107 }));
        // An unknown function code running on past 256 bytes.
        dec.push(&[0x01, 0x42]);
        dec.push(&[0x55; 300]);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.gap(), Some(RtuEvent::Garbage { len: 302 }));
        // Exactly 256 bytes of an unknown function is still checked as a frame.
        let long = rtu(0x01, &[0x42; MAX_PDU_LEN]);
        dec.push(&long);
        assert_eq!(dec.buffered(), MAX_RTU_ADU_LEN);
        assert_eq!(dec.gap(), Some(frame(0x01, &[0x42; MAX_PDU_LEN])));
        // Everything is back to normal.
        dec.push(&wire);
        assert_eq!(drain(&mut dec).len(), 1);
    }

    #[test]
    fn rtu_gap_with_queued_events() {
        // The caller calls gap() without taking the events first: nothing is lost.
        let a = rtu(0x01, &[0x06, 0x00, 0x01, 0x00, 0x03]);
        let b = rtu(0x02, &[0x65, 0x01]);
        let mut dec = RtuDecoder::new();
        dec.push(&[a.clone(), b].concat());
        assert_eq!(
            dec.gap(),
            Some(frame(0x01, &[0x06, 0x00, 0x01, 0x00, 0x03]))
        );
        assert_eq!(dec.next_event(), Some(frame(0x02, &[0x65, 0x01])));
        assert_eq!(dec.next_event(), None);
    }

    /// Bytes an event stands for.
    fn event_len(e: &RtuEvent) -> usize {
        match e {
            RtuEvent::Frame { pdu, .. } => pdu.len() + 3,
            RtuEvent::BadCrc { len, .. } | RtuEvent::Garbage { len } => *len,
        }
    }

    proptest! {
        #[test]
        fn crc_table_matches_bitwise(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(crc16(&data), crc16_bitwise(&data));
        }

        #[test]
        fn decode_tcp_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20),
            zero_protocol in any::<bool>(),
        ) {
            let mut buf = BytesMut::new();
            for (i, mut chunk) in chunks.into_iter().enumerate() {
                if zero_protocol && i == 0 && chunk.len() >= 4 {
                    chunk[2] = 0;
                    chunk[3] = 0;
                }
                buf.extend_from_slice(&chunk);
                loop {
                    match decode_tcp(&mut buf) {
                        Ok(Some(frame)) => {
                            prop_assert!((1..=MAX_PDU_LEN).contains(&frame.pdu.len()));
                        }
                        Ok(None) => {
                            prop_assert!(buf.len() < MAX_TCP_ADU_LEN);
                            break;
                        }
                        Err(_) => return Ok(()), // the caller closes the connection
                    }
                }
            }
        }

        #[test]
        fn rtu_decoder_never_panics(
            steps in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()),
                0..20,
            ),
        ) {
            let mut dec = RtuDecoder::new();
            let (mut pushed, mut accounted) = (0, 0);
            for (chunk, gap) in steps {
                dec.push(&chunk);
                pushed += chunk.len();
                prop_assert!(dec.buffered() <= MAX_RTU_ADU_LEN);
                if gap {
                    accounted += dec.gap().map_or(0, |e| event_len(&e));
                }
                while let Some(event) = dec.next_event() {
                    if let RtuEvent::Frame { pdu, .. } = &event {
                        prop_assert!(!pdu.is_empty() && pdu.len() <= MAX_PDU_LEN);
                    }
                    accounted += event_len(&event);
                }
            }
            accounted += dec.gap().map_or(0, |e| event_len(&e));
            accounted += drain(&mut dec).iter().map(event_len).sum::<usize>();
            prop_assert_eq!(dec.buffered(), 0);
            prop_assert_eq!(accounted, pushed, "every byte is in exactly one event");
        }

        #[test]
        fn rtu_round_trip(
            requests in proptest::collection::vec((any::<u8>(), pdu::arb_request()), 1..6),
            chunk in 1usize..64,
            gaps in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (unit, req) in &requests {
                let mut pdu = Vec::new();
                pdu::encode_request(&mut pdu, req);
                encode_rtu(&mut wire, *unit, &pdu);
                want.push((*unit, req.clone()));
            }
            let mut dec = RtuDecoder::new();
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                dec.push(part);
                prop_assert!(dec.buffered() <= MAX_RTU_ADU_LEN);
                got.extend(drain(&mut dec));
            }
            if gaps {
                got.extend(dec.gap());
            }
            let got: Vec<(u8, Request)> = got
                .into_iter()
                .map(|e| match e {
                    RtuEvent::Frame { unit, pdu } => (unit, pdu::parse_request(&pdu).unwrap()),
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn tcp_round_trip(
            requests in proptest::collection::vec((any::<u16>(), any::<u8>(), pdu::arb_request()), 1..6),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for (transaction, unit, req) in &requests {
                let mut pdu = Vec::new();
                pdu::encode_request(&mut pdu, req);
                encode_tcp(&mut wire, *transaction, *unit, &pdu);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                buf.extend_from_slice(part);
                while let Some(f) = decode_tcp(&mut buf).unwrap() {
                    got.push((f.transaction, f.unit, pdu::parse_request(&f.pdu).unwrap()));
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, requests);
        }
    }

    /// Cross-checks against tokio-modbus 0.17: its client talks to a tiny slave built on this
    /// crate's codec over an in-memory pipe. Its codec is private, but its client is not.
    mod tokio_modbus_client {
        use super::*;
        use crate::pdu::{
            encode_bits, encode_exception, encode_registers, encode_write_multiple,
            encode_write_single, parse_request,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
        use tokio_modbus::prelude::{ExceptionCode, Reader, Slave, Writer};

        fn coil(addr: u16) -> bool {
            addr.is_multiple_of(3)
        }
        fn register(addr: u16) -> u16 {
            addr.wrapping_mul(31) ^ 0x5A5A
        }

        /// Answers one request PDU the way a simple device would; returns the parsed request.
        fn answer(pdu: &[u8], out: &mut Vec<u8>) -> Option<Request> {
            let req = match parse_request(pdu) {
                Ok(req) => req,
                Err(e) => {
                    let (function, code) = e.exception()?;
                    encode_exception(out, function, code);
                    return None;
                }
            };
            let f = req.function_code();
            let regs = |addr: u16, count: u16| -> Vec<u16> {
                (0..count).map(|i| register(addr.wrapping_add(i))).collect()
            };
            match &req {
                Request::ReadCoils { addr, count }
                | Request::ReadDiscreteInputs { addr, count } => {
                    encode_bits(out, f, (0..*count).map(|i| coil(addr.wrapping_add(i))));
                }
                Request::ReadHoldingRegisters { addr, count }
                | Request::ReadInputRegisters { addr, count } => {
                    encode_registers(out, f, &regs(*addr, *count));
                }
                Request::WriteSingleCoil { addr, value } => {
                    let value = if *value { pdu::COIL_ON } else { pdu::COIL_OFF };
                    encode_write_single(out, f, *addr, value);
                }
                Request::WriteSingleRegister { addr, value } => {
                    encode_write_single(out, f, *addr, *value);
                }
                Request::WriteMultipleCoils { addr, values } => {
                    encode_write_multiple(out, f, *addr, values.len() as u16);
                }
                Request::WriteMultipleRegisters { addr, values } => {
                    encode_write_multiple(out, f, *addr, values.len() as u16);
                }
                Request::ReadWriteMultipleRegisters {
                    read_addr,
                    read_count,
                    ..
                } => {
                    encode_registers(out, f, &regs(*read_addr, *read_count));
                }
                Request::ReadDeviceIdentification { read_code, .. } => {
                    pdu::encode_device_identification(out, *read_code, &[(0, b"test".as_slice())]);
                }
            }
            Some(req)
        }

        async fn serve_tcp(mut io: DuplexStream) -> Vec<(u8, Request)> {
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            loop {
                while let Some(frame) = decode_tcp(&mut buf).unwrap() {
                    let mut pdu = Vec::new();
                    seen.extend(answer(&frame.pdu, &mut pdu).map(|r| (frame.unit, r)));
                    let mut out = Vec::new();
                    encode_tcp(&mut out, frame.transaction, frame.unit, &pdu);
                    io.write_all(&out).await.unwrap();
                }
                if io.read_buf(&mut buf).await.unwrap() == 0 {
                    return seen;
                }
            }
        }

        async fn serve_rtu(mut io: DuplexStream) -> Vec<(u8, Request)> {
            let mut dec = RtuDecoder::new();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                while let Some(event) = dec.next_event() {
                    let RtuEvent::Frame { unit, pdu } = event else {
                        panic!("unexpected {event:?}");
                    };
                    let mut resp = Vec::new();
                    seen.extend(answer(&pdu, &mut resp).map(|r| (unit, r)));
                    let mut out = Vec::new();
                    encode_rtu(&mut out, unit, &resp);
                    io.write_all(&out).await.unwrap();
                }
                let n = io.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return seen;
                }
                dec.push(&chunk[..n]);
            }
        }

        /// Sends the requests of `expected` (and three that fail) through a tokio-modbus client.
        async fn exercise(ctx: &mut tokio_modbus::client::Context) {
            let regs = |addr: u16, count: u16| -> Vec<u16> {
                (0..count).map(|i| register(addr + i)).collect()
            };
            let coils = |addr: u16, count: u16| -> Vec<bool> {
                (0..count).map(|i| coil(addr + i)).collect()
            };
            assert_eq!(ctx.read_coils(20, 19).await.unwrap(), Ok(coils(20, 19)));
            assert_eq!(
                ctx.read_discrete_inputs(0xF830, 2000).await.unwrap(),
                Ok(coils(0xF830, 2000))
            );
            assert_eq!(
                ctx.read_holding_registers(0x6B, 3).await.unwrap(),
                Ok(regs(0x6B, 3))
            );
            assert_eq!(
                ctx.read_input_registers(0, 125).await.unwrap(),
                Ok(regs(0, 125))
            );
            assert_eq!(ctx.write_single_coil(0xAC, true).await.unwrap(), Ok(()));
            assert_eq!(ctx.write_single_coil(0xAD, false).await.unwrap(), Ok(()));
            assert_eq!(ctx.write_single_register(1, 3).await.unwrap(), Ok(()));
            let many: Vec<bool> = (0..1968).map(|i| i % 5 == 1).collect();
            assert_eq!(ctx.write_multiple_coils(0x13, &many).await.unwrap(), Ok(()));
            assert_eq!(
                ctx.write_multiple_registers(1, &[0x000A, 0x0102])
                    .await
                    .unwrap(),
                Ok(())
            );
            assert_eq!(
                ctx.read_write_multiple_registers(3, 6, 0x0E, &[0xFF; 3])
                    .await
                    .unwrap(),
                Ok(regs(3, 6))
            );
            // Exceptions come back as such.
            assert_eq!(
                ctx.read_holding_registers(0xFFFF, 2).await.unwrap(),
                Err(ExceptionCode::IllegalDataAddress)
            );
            assert_eq!(
                ctx.read_input_registers(0, 126).await.unwrap(),
                Err(ExceptionCode::IllegalDataValue)
            );
            assert_eq!(
                ctx.masked_write_register(1, 0xFF00, 0x0012).await.unwrap(),
                Err(ExceptionCode::IllegalFunction)
            );
        }

        fn expected(unit: u8) -> Vec<(u8, Request)> {
            let many: Vec<bool> = (0..1968).map(|i| i % 5 == 1).collect();
            [
                Request::ReadCoils {
                    addr: 20,
                    count: 19,
                },
                Request::ReadDiscreteInputs {
                    addr: 0xF830,
                    count: 2000,
                },
                Request::ReadHoldingRegisters {
                    addr: 0x6B,
                    count: 3,
                },
                Request::ReadInputRegisters {
                    addr: 0,
                    count: 125,
                },
                Request::WriteSingleCoil {
                    addr: 0xAC,
                    value: true,
                },
                Request::WriteSingleCoil {
                    addr: 0xAD,
                    value: false,
                },
                Request::WriteSingleRegister { addr: 1, value: 3 },
                Request::WriteMultipleCoils {
                    addr: 0x13,
                    values: many,
                },
                Request::WriteMultipleRegisters {
                    addr: 1,
                    values: vec![0x000A, 0x0102],
                },
                Request::ReadWriteMultipleRegisters {
                    read_addr: 3,
                    read_count: 6,
                    write_addr: 0x0E,
                    values: vec![0xFF; 3],
                },
            ]
            .into_iter()
            .map(|r| (unit, r))
            .collect()
        }

        #[tokio::test]
        async fn tcp_client() {
            let (client, server) = tokio::io::duplex(4096);
            let server = tokio::spawn(serve_tcp(server));
            let mut ctx = tokio_modbus::client::tcp::attach_slave(client, Slave(17));
            exercise(&mut ctx).await;
            drop(ctx);
            assert_eq!(server.await.unwrap(), expected(17));
        }

        #[tokio::test]
        async fn rtu_client() {
            let (client, server) = tokio::io::duplex(4096);
            let server = tokio::spawn(serve_rtu(server));
            let mut ctx = tokio_modbus::client::rtu::attach_slave(client, Slave(0x11));
            exercise(&mut ctx).await;
            drop(ctx);
            assert_eq!(server.await.unwrap(), expected(0x11));
        }
    }
}
