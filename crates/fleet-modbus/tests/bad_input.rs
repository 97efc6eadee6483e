//! Bad input from a Modbus master: bytes on a TCP connection and on a serial line, taken the way
//! the servers take them (`frame::decode_tcp`, `frame::RtuDecoder`, `slave::execute` on a
//! simulated power meter). The checks live in `fuzz/harness/fleet_modbus.rs`, shared with the
//! fuzz targets `modbus_tcp` and `modbus_rtu`: framing that accounts for every byte, answers of
//! the right shape (an exception is `function | 0x80` and a defined code), counters where every
//! request ends in exactly one way.
//!
//! Here they run under proptest (arbitrary bytes, and valid requests with a byte changed) with
//! a fixed seed and no persistence file, and over every file of the regression corpus.

#[path = "../../../fuzz/harness/fleet_modbus.rs"]
mod harness;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

use fleet_modbus::frame::{encode_rtu, encode_tcp};
use proptest::prelude::*;
use proptest::sample::Index;
use replay::{config, replay};

#[test]
fn the_regression_corpus_of_every_modbus_target_passes() {
    replay("modbus_tcp", harness::modbus_tcp);
    replay("modbus_rtu", harness::modbus_rtu);
}

/// An address: mostly inside the meter's register map, sometimes anywhere.
fn addr() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 0u16..320, 1 => any::<u16>()]
}

/// A unit id: mostly the ones a port with one device answers to.
fn unit() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), Just(1), Just(255), any::<u8>()]
}

/// A request PDU a master could send, within the spec's limits.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let be = |v: u16| v.to_be_bytes();
    prop_oneof![
        (prop_oneof![Just(1u8), Just(2)], addr(), 1u16..=2000).prop_map(move |(f, a, n)| [
            &[f][..],
            &be(a),
            &be(n)
        ]
        .concat()),
        (prop_oneof![Just(3u8), Just(4)], addr(), 1u16..=125).prop_map(move |(f, a, n)| [
            &[f][..],
            &be(a),
            &be(n)
        ]
        .concat()),
        (addr(), any::<bool>()).prop_map(move |(a, on)| [
            &[5u8][..],
            &be(a),
            &be(if on { 0xFF00 } else { 0 })
        ]
        .concat()),
        (addr(), any::<u16>()).prop_map(move |(a, v)| [&[6u8][..], &be(a), &be(v)].concat()),
        (addr(), proptest::collection::vec(any::<bool>(), 1..40)).prop_map(move |(a, bits)| {
            let mut data = vec![0u8; bits.len().div_ceil(8)];
            for (i, b) in bits.iter().enumerate() {
                data[i / 8] |= u8::from(*b) << (i % 8);
            }
            [
                &[0x0Fu8][..],
                &be(a),
                &be(bits.len() as u16),
                &[data.len() as u8],
                &data,
            ]
            .concat()
        }),
        (addr(), proptest::collection::vec(any::<u16>(), 1..20)).prop_map(move |(a, regs)| {
            let data: Vec<u8> = regs.iter().flat_map(|r| r.to_be_bytes()).collect();
            [
                &[0x10u8][..],
                &be(a),
                &be(regs.len() as u16),
                &[data.len() as u8],
                &data,
            ]
            .concat()
        }),
        (
            addr(),
            1u16..=125,
            addr(),
            proptest::collection::vec(any::<u16>(), 1..20)
        )
            .prop_map(move |(ra, rn, wa, regs)| {
                let data: Vec<u8> = regs.iter().flat_map(|r| r.to_be_bytes()).collect();
                [
                    &[0x17u8][..],
                    &be(ra),
                    &be(rn),
                    &be(wa),
                    &be(regs.len() as u16),
                    &[data.len() as u8],
                    &data,
                ]
                .concat()
            }),
        (1u8..=4, 0u8..8).prop_map(|(code, object)| vec![0x2B, 0x0E, code, object]),
        proptest::collection::vec(any::<u8>(), 1..12),
    ]
}

/// A change to a byte string.
#[derive(Clone, Debug)]
enum Change {
    None,
    Flip(Index, u8),
    Cut(Index),
    Insert(Index, u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        1 => Just(Change::None),
        3 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Change::Flip(i, m)),
        1 => any::<Index>().prop_map(Change::Cut),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Change::Insert(i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::None => {}
        Change::Flip(i, mask) => {
            if !bytes.is_empty() {
                let j = i.index(bytes.len());
                bytes[j] ^= mask;
            }
        }
        Change::Cut(i) => bytes.truncate(i.index(bytes.len() + 1)),
        Change::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_on_a_tcp_connection_get_well_formed_answers(
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        harness::modbus_tcp(&data);
    }

    #[test]
    fn arbitrary_bytes_on_a_serial_line_are_all_accounted_for(
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        harness::modbus_rtu(&data);
    }

    #[test]
    fn valid_tcp_requests_with_a_byte_changed_get_well_formed_answers(
        requests in proptest::collection::vec((request(), any::<u16>(), unit()), 1..5),
        faulty in any::<bool>(),
        change in change(),
    ) {
        let mut adus = vec![u8::from(faulty)];
        for (pdu, transaction, unit) in &requests {
            encode_tcp(&mut adus, *transaction, *unit, pdu);
        }
        harness::modbus_tcp(&adus);
        apply(&mut adus, &change);
        harness::modbus_tcp(&adus);
    }

    #[test]
    fn valid_rtu_requests_with_a_byte_changed_are_accounted_for(
        requests in proptest::collection::vec((request(), 0u8..4), 1..5),
        piece in any::<u8>(),
        gaps in any::<u8>(),
        change in change(),
    ) {
        let mut line = vec![piece, gaps];
        for (pdu, unit) in &requests {
            encode_rtu(&mut line, *unit, pdu);
        }
        harness::modbus_rtu(&line);
        apply(&mut line, &change);
        harness::modbus_rtu(&line);
    }
}
