//! Modbus slave counters: requests by function code, exceptions by code, injected faults and
//! frames that made no request. Cumulative per shard, summed across shards like `Counters`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Function codes counted one by one; anything else is counted as `other`.
pub const FUNCTIONS: [(u8, &str); 10] = [
    (0x01, "read_coils"),
    (0x02, "read_discrete_inputs"),
    (0x03, "read_holding_registers"),
    (0x04, "read_input_registers"),
    (0x05, "write_single_coil"),
    (0x06, "write_single_register"),
    (0x0F, "write_multiple_coils"),
    (0x10, "write_multiple_registers"),
    (0x17, "read_write_multiple_registers"),
    (0x2B, "read_device_identification"),
];

/// Exception codes counted (index = code; 0 unused).
pub const EXCEPTION_SLOTS: usize = 12;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModbusCounters {
    /// Requests that reached a device (one of ours, unicast or broadcast).
    pub requests: u64,
    /// By function code, in `FUNCTIONS` order; the last slot is every other code. Serialized
    /// as `requests_by_function`: {"read_coils": n, ..., "other": n}.
    #[serde(
        rename = "requests_by_function",
        serialize_with = "by_name",
        deserialize_with = "from_names"
    )]
    pub by_function: [u64; FUNCTIONS.len() + 1],
    /// Normal responses sent.
    pub responses: u64,
    /// Exception responses sent, by code (index = code; the last slot is any higher code).
    /// Serialized as `exceptions_by_code`: {"02": n, "0B": n}, codes that were sent only.
    #[serde(
        rename = "exceptions_by_code",
        serialize_with = "by_code",
        deserialize_with = "from_codes"
    )]
    pub exceptions: [u64; EXCEPTION_SLOTS],
    /// Exceptions that were injected faults (also counted in `exceptions`).
    pub injected_exceptions: u64,
    /// Requests left unanswered: injected silence, device not serving (booting, outage, dead).
    pub silent: u64,
    /// Of those, because the device was not serving.
    pub not_serving: u64,
    /// Injected: connections closed instead of answered (TCP).
    pub dropped_connections: u64,
    /// Injected: answers sent with a wrong CRC, cut short (RTU), or in the wrong word order.
    pub bad_crc: u64,
    pub truncated: u64,
    pub swapped_words: u64,
    /// Answers held back by an injected delay.
    pub delayed: u64,
    /// Broadcast requests (unit 0, RTU): carried out, never answered.
    pub broadcasts: u64,
    /// Writes that changed a device.
    pub writes: u64,
    /// TCP requests for a unit id no device has (answered with exception 0x0B).
    pub unknown_unit: u64,
    /// Frames that made no request: bad MBAP header, RTU CRC error, garbage on the line.
    pub malformed_frames: u64,
    /// Connections accepted (TCP) or lines opened (RTU).
    pub connections: u64,
}

fn by_name<S: Serializer>(v: &[u64; FUNCTIONS.len() + 1], s: S) -> Result<S::Ok, S::Error> {
    let mut m: BTreeMap<&str, u64> = FUNCTIONS
        .iter()
        .zip(v)
        .map(|((_, n), c)| (*n, *c))
        .collect();
    m.insert("other", v[FUNCTIONS.len()]);
    m.serialize(s)
}

fn from_names<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; FUNCTIONS.len() + 1], D::Error> {
    let m = BTreeMap::<String, u64>::deserialize(d)?;
    let mut v = [0u64; FUNCTIONS.len() + 1];
    for (name, n) in m {
        match FUNCTIONS.iter().position(|(_, f)| *f == name) {
            Some(i) => v[i] = n,
            None => v[FUNCTIONS.len()] += n,
        }
    }
    Ok(v)
}

fn from_codes<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; EXCEPTION_SLOTS], D::Error> {
    let m = BTreeMap::<String, u64>::deserialize(d)?;
    let mut v = [0u64; EXCEPTION_SLOTS];
    for (code, n) in m {
        let i = usize::from_str_radix(&code, 16)
            .map_err(|_| serde::de::Error::custom(format!("exception code {code:?} is not hex")))?;
        v[i.min(EXCEPTION_SLOTS - 1)] += n;
    }
    Ok(v)
}

fn by_code<S: Serializer>(v: &[u64; EXCEPTION_SLOTS], s: S) -> Result<S::Ok, S::Error> {
    let m: BTreeMap<String, u64> = v
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| (format!("{code:02X}"), *n))
        .collect();
    m.serialize(s)
}

impl ModbusCounters {
    /// Counts a request with function code `function`.
    pub fn count_request(&mut self, function: u8) {
        self.requests += 1;
        let slot = FUNCTIONS
            .iter()
            .position(|(f, _)| *f == function)
            .unwrap_or(FUNCTIONS.len());
        self.by_function[slot] += 1;
    }

    pub fn count_exception(&mut self, code: u8) {
        let slot = usize::from(code).min(EXCEPTION_SLOTS - 1);
        self.exceptions[slot] += 1;
    }

    pub fn exceptions_total(&self) -> u64 {
        self.exceptions.iter().sum()
    }

    pub fn add(&mut self, o: &ModbusCounters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            requests,
            responses,
            injected_exceptions,
            silent,
            not_serving,
            dropped_connections,
            bad_crc,
            truncated,
            swapped_words,
            delayed,
            broadcasts,
            writes,
            unknown_unit,
            malformed_frames,
            connections
        );
        for (a, b) in self.by_function.iter_mut().zip(o.by_function) {
            *a += b;
        }
        for (a, b) in self.exceptions.iter_mut().zip(o.exceptions) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_function_and_summed() {
        let mut a = ModbusCounters::default();
        a.count_request(0x03);
        a.count_request(0x03);
        a.count_request(0x2B);
        a.count_request(0x08); // diagnostics: not one of ours, counted as `other`
        a.count_exception(0x02);
        a.count_exception(0x40);
        let mut t = ModbusCounters::default();
        t.add(&a);
        t.add(&a);
        assert_eq!(t.requests, 8);
        assert_eq!(t.by_function[2], 4);
        assert_eq!(
            t.by_function[FUNCTIONS.len() - 1],
            2,
            "0x2B has a slot of its own"
        );
        assert_eq!(t.by_function[FUNCTIONS.len()], 2);
        assert_eq!(t.exceptions[2], 2);
        assert_eq!(t.exceptions[EXCEPTION_SLOTS - 1], 2);
        assert_eq!(t.exceptions_total(), 4);
    }
}
