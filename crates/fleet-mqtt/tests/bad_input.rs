//! Bad input from a broker: bytes that reach `codec::read_packet` the way a session's reader
//! feeds them. The checks live in `fuzz/harness/fleet_mqtt.rs`, shared with the fuzz target
//! `mqtt_packet`: no panic, `Incomplete` consumes nothing, a malformed packet is an error with a
//! message, bytes in pieces decode like bytes at once.
//!
//! Here they run under proptest (arbitrary bytes, and streams of valid broker packets with a
//! byte changed or cut short) with a fixed seed and no persistence file, and over every file of
//! `fuzz/corpus/mqtt_packet/` and `fuzz/regressions/mqtt_packet/`.

#[path = "../../../fuzz/harness/fleet_mqtt.rs"]
mod harness;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

use bytes::{BufMut, BytesMut};
use fleet_mqtt::codec::{self, DecodeError, Version, read_packet};
use proptest::prelude::*;
use proptest::sample::Index;
use replay::{config, replay};

#[test]
fn the_regression_corpus_of_mqtt_packet_passes() {
    replay("mqtt_packet", harness::mqtt_packet);
}

/// One packet a broker sends a client.
#[derive(Clone, Debug)]
enum Packet {
    ConnAck {
        code: u8,
        session_present: bool,
    },
    Publish {
        topic: Vec<u8>,
        qos: u8,
        pkid: u16,
        payload: Vec<u8>,
    },
    SubAck {
        pkid: u16,
        code: u8,
    },
    Ack {
        kind: u8,
        pkid: u16,
    },
    PingResp,
    Disconnect,
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (0u8..6, any::<bool>()).prop_map(|(code, session_present)| Packet::ConnAck {
            code,
            session_present
        }),
        (
            "[a-z/0-9-]{1,24}",
            0u8..3,
            1u16..,
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(topic, qos, pkid, payload)| Packet::Publish {
                topic: topic.into_bytes(),
                qos,
                pkid,
                payload
            }),
        (1u16.., prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)])
            .prop_map(|(pkid, code)| Packet::SubAck { pkid, code }),
        (
            prop_oneof![
                Just(codec::PUBACK),
                Just(codec::PUBREC),
                Just(codec::PUBREL),
                Just(codec::PUBCOMP)
            ],
            1u16..
        )
            .prop_map(|(kind, pkid)| Packet::Ack { kind, pkid }),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

/// The packet's bytes, as a broker of `version` writes it.
fn write(out: &mut BytesMut, version: Version, p: &Packet) {
    let v5 = version == Version::V5;
    match p {
        Packet::ConnAck {
            code,
            session_present,
        } => {
            // v5 reason codes: 0 success, 0x80.. refusals; v3.1.1 return codes 0..=5.
            let code = if v5 && *code > 0 { 0x80 + code } else { *code };
            out.put_slice(&[0x20, 2 + u8::from(v5), u8::from(*session_present), code]);
            if v5 {
                out.put_u8(0);
            }
        }
        Packet::Publish {
            topic,
            qos,
            pkid,
            payload,
        } => codec::write_publish(out, version, topic, *qos, false, *pkid, payload),
        Packet::SubAck { pkid, code } => {
            out.put_slice(&[0x90, 3 + u8::from(v5)]);
            out.put_u16(*pkid);
            if v5 {
                out.put_u8(0);
            }
            out.put_u8(*code);
        }
        Packet::Ack { kind, pkid } => codec::write_ack(out, *kind, *pkid),
        Packet::PingResp => out.put_slice(&[0xD0, 0x00]),
        // v5 also has the short form (reason code 0, no properties): `read_packet` reads both;
        // the long one is written here, the short one is the 3.1.1 bytes below.
        Packet::Disconnect if v5 => out.put_slice(&[0xE0, 0x02, 0x00, 0x00]),
        Packet::Disconnect => out.put_slice(&[0xE0, 0x00]),
    }
}

/// A change to a stream of valid packets.
#[derive(Clone, Debug)]
enum Change {
    Flip(Index, u8),
    Cut(Index),
    Insert(Index, u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<Index>(), 1u8..).prop_map(|(i, m)| Change::Flip(i, m)),
        any::<Index>().prop_map(Change::Cut),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Change::Insert(i, b)),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_from_a_broker_decode_or_fail_with_a_message(
        data in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        harness::mqtt_packet(&data);
    }

    #[test]
    fn valid_broker_packets_decode_one_by_one_and_changed_ones_do_not_panic(
        packets in proptest::collection::vec(packet(), 1..6),
        v5 in any::<bool>(),
        piece in any::<u8>(),
        change in change(),
    ) {
        let version = if v5 { Version::V5 } else { Version::V311 };
        let mut buf = BytesMut::new();
        for p in &packets {
            write(&mut buf, version, p);
        }
        let mut stream = buf.to_vec();
        // Unchanged, the stream is exactly these packets.
        let mut decoded = 0;
        loop {
            match read_packet(&mut buf, version) {
                Ok(_) => decoded += 1,
                Err(DecodeError::Incomplete) => break,
                Err(DecodeError::Malformed(why)) => {
                    panic!("{version:?}: packet {decoded} of {packets:?} is malformed: {why}")
                }
            }
        }
        prop_assert_eq!(decoded, packets.len());
        prop_assert!(buf.is_empty());

        let mut input = vec![piece];
        input.extend_from_slice(&stream);
        harness::mqtt_packet(&input);
        match change {
            Change::Flip(i, mask) => {
                let j = i.index(stream.len());
                stream[j] ^= mask;
            }
            Change::Cut(i) => stream.truncate(i.index(stream.len())),
            Change::Insert(i, b) => stream.insert(i.index(stream.len() + 1), b),
        }
        let mut input = vec![piece];
        input.extend_from_slice(&stream);
        harness::mqtt_packet(&input);
    }
}
