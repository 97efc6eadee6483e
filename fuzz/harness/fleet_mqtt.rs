//! Bad-input checks of the MQTT packet decoder (`fleet_mqtt::codec::read_packet`), shared by
//! the fuzz target `mqtt_packet` and `crates/fleet-mqtt/tests/bad_input.rs`.
//!
//! The bytes are what a broker sends on a session, decoded the way the session's reader does
//! (`adapter.rs`, `read_loop`): `read_packet` until it asks for more bytes or finds a malformed
//! packet, which closes the session. Checked, in both protocol versions:
//! - a decoded packet consumes bytes; `Incomplete` consumes none (the reader appends to the same
//!   buffer and tries again); a `Malformed` error has a message;
//! - the bytes arriving in pieces give the same packets and the same end as all at once.

use bytes::BytesMut;
use fleet_mqtt::codec::{DecodeError, Inbound, Version, read_packet};

/// How a stream of packets ended.
#[derive(Clone, Debug, PartialEq)]
enum End {
    /// Waiting for more bytes (this many are buffered).
    Incomplete(usize),
    /// A malformed packet: the session closes.
    Malformed,
}

/// Decodes packets off the front of `buf` until it needs more bytes or finds a malformed one.
fn drain(buf: &mut BytesMut, version: Version, out: &mut Vec<Inbound>) -> End {
    loop {
        let before = buf.len();
        match read_packet(buf, version) {
            Ok(packet) => {
                assert!(
                    buf.len() < before,
                    "{version:?}: {packet:?} decoded without consuming a byte"
                );
                out.push(packet);
            }
            Err(DecodeError::Incomplete) => {
                assert_eq!(buf.len(), before, "{version:?}: Incomplete consumed bytes");
                return End::Incomplete(before);
            }
            Err(DecodeError::Malformed(why)) => {
                assert!(
                    !why.trim().is_empty(),
                    "{version:?}: Malformed without a message"
                );
                return End::Malformed;
            }
        }
    }
}

/// Inbound bytes from a broker: see the module documentation. The first byte sets the size of
/// the pieces the rest arrives in (1..=256 bytes).
pub fn mqtt_packet(data: &[u8]) {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece) + 1;
    for version in [Version::V311, Version::V5] {
        let mut whole_packets = Vec::new();
        let whole_end = drain(&mut BytesMut::from(stream), version, &mut whole_packets);

        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        let mut end = End::Incomplete(0);
        for chunk in stream.chunks(piece) {
            buf.extend_from_slice(chunk);
            end = drain(&mut buf, version, &mut packets);
            if end == End::Malformed {
                break;
            }
        }
        assert_eq!(
            packets, whole_packets,
            "{version:?}: in pieces of {piece} bytes the packets differ"
        );
        assert_eq!(
            end, whole_end,
            "{version:?}: in pieces of {piece} bytes the end differs"
        );
    }
}
