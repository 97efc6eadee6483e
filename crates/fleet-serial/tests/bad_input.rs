//! Bad input to the serial personas' parsers: bytes from the line to the AT-command modem, and
//! fuzzed fixes and raw lines to the NMEA writer and checksum code. The checks live in
//! `fuzz/harness/fleet_serial.rs`, shared with the fuzz targets `at_command` and
//! `nmea_sentence`: no panic, exactly one final result code per command line, NMEA lines of at
//! most 82 printable characters with a valid checksum.
//!
//! Here they run under proptest (arbitrary bytes, and valid command lines with a byte changed)
//! with a fixed seed and no persistence file, and over every file of the regression corpus.

#[path = "../../../fuzz/harness/fleet_serial.rs"]
mod harness;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

use proptest::prelude::*;
use proptest::sample::Index;
use replay::{config, replay};

#[test]
fn the_regression_corpus_of_every_serial_target_passes() {
    replay("at_command", harness::at_command);
    replay("nmea_sentence", harness::nmea_sentence);
}

/// Command lines a terminal program or a modem driver sends.
const COMMANDS: &[&str] = &[
    "AT",
    "ATE0",
    "ATE1",
    "ATI",
    "ATZ",
    "AT&F",
    "AT+CGMI",
    "AT+CGMM",
    "AT+CGMR",
    "AT+CGSN",
    "AT+CSQ",
    "AT+CSQ=?",
    "AT+CREG?",
    "AT+CREG=2",
    "AT+CREG=?",
    "AT+CEREG?",
    "AT+CEREG=1",
    "AT+CGATT?",
    "AT+CGATT=1",
    "AT+CGATT=0",
    "AT+COPS?",
    "AT+CMEE=2",
    "AT+CMEE?",
    "AT+CFUN?",
    "AT+CPIN?",
    "at+csq",
    "AT + CSQ",
    "AT+CREG=3",
    "AT+CMEE=0",
    "AT;+CSQ",
    "ATD123;",
];

/// A change to one command line.
#[derive(Clone, Debug)]
enum Change {
    None,
    Flip(Index, u8),
    Insert(Index, u8),
    /// A parameter as a terminal would not send it.
    Param(String),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        2 => Just(Change::None),
        2 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Change::Flip(i, m)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Change::Insert(i, b)),
        1 => "[=?0-9,\"a-z ]{0,8}".prop_map(Change::Param),
    ]
}

fn session() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        any::<[u8; 8]>(),
        proptest::collection::vec(
            (
                any::<Index>(),
                change(),
                prop_oneof![Just("\r"), Just("\r\n"), Just("\n")],
            ),
            1..10,
        ),
    )
        .prop_map(|(piece, header, lines)| {
            let mut out = vec![piece];
            out.extend_from_slice(&header);
            for (cmd, change, end) in lines {
                let mut line = COMMANDS[cmd.index(COMMANDS.len())].as_bytes().to_vec();
                match change {
                    Change::None => {}
                    Change::Flip(i, mask) => {
                        let j = i.index(line.len());
                        line[j] ^= mask;
                    }
                    Change::Insert(i, b) => line.insert(i.index(line.len() + 1), b),
                    Change::Param(p) => line.extend_from_slice(p.as_bytes()),
                }
                out.extend_from_slice(&line);
                out.extend_from_slice(end.as_bytes());
            }
            out
        })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_to_the_modem_get_one_result_code_per_line(
        data in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        harness::at_command(&data);
    }

    #[test]
    fn command_lines_with_a_byte_changed_get_one_result_code_each(data in session()) {
        harness::at_command(&data);
    }

    #[test]
    fn arbitrary_fixes_give_short_printable_sentences_with_valid_checksums(
        data in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        harness::nmea_sentence(&data);
    }

    #[test]
    fn sentences_with_a_byte_changed_do_not_confuse_the_checksum_code(
        fix in proptest::collection::vec(any::<u8>(), 0..120),
        sentence in prop_oneof![
            Just("$GPGGA,123519.00,4807.03800,N,01131.00000,E,1,08,0.9,545.4,M,46.9,M,,*4B\r\n"),
            Just("$GPRMC,123519.00,A,4807.03800,N,01131.00000,E,0.000,0.0,230394,,,A*6D"),
            Just("$GPVTG,0.0,T,,M,0.000,N,0.000,K,A*0D\r\n"),
        ],
        change in proptest::option::of((any::<Index>(), 1u8..)),
    ) {
        // Byte 0 is the length of the fix bytes that follow, then comes the raw line.
        let mut data = vec![fix.len() as u8];
        data.extend_from_slice(&fix);
        let mut line = sentence.as_bytes().to_vec();
        if let Some((i, mask)) = change {
            let j = i.index(line.len());
            line[j] ^= mask;
        }
        data.extend_from_slice(&line);
        harness::nmea_sentence(&data);
    }
}
