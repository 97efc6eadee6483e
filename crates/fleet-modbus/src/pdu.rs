//! Modbus protocol data units (PDUs) as a slave sees them: parsing requests and encoding
//! responses. Pure code, no I/O, no framing (see [`crate::frame`] for that).

use function_code as fc;

/// Exception codes we send.
pub mod exception {
    /// The function code is not supported.
    pub const ILLEGAL_FUNCTION: u8 = 0x01;
    /// The address range is not valid for this device.
    pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
    /// A value in the request (quantity, byte count, coil value, length) is not valid.
    pub const ILLEGAL_DATA_VALUE: u8 = 0x03;
    /// The device failed while handling the request.
    pub const SERVER_DEVICE_FAILURE: u8 = 0x04;
    /// The device is busy; the master should retry later.
    pub const SERVER_DEVICE_BUSY: u8 = 0x06;
    /// A gateway could not route the request.
    pub const GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;
    /// A gateway got no answer from the target device.
    pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;
}

/// Function codes we implement.
pub mod function_code {
    /// Read coils (0x01).
    pub const READ_COILS: u8 = 0x01;
    /// Read discrete inputs (0x02).
    pub const READ_DISCRETE_INPUTS: u8 = 0x02;
    /// Read holding registers (0x03).
    pub const READ_HOLDING_REGISTERS: u8 = 0x03;
    /// Read input registers (0x04).
    pub const READ_INPUT_REGISTERS: u8 = 0x04;
    /// Write single coil (0x05).
    pub const WRITE_SINGLE_COIL: u8 = 0x05;
    /// Write single register (0x06).
    pub const WRITE_SINGLE_REGISTER: u8 = 0x06;
    /// Write multiple coils (0x0F).
    pub const WRITE_MULTIPLE_COILS: u8 = 0x0F;
    /// Write multiple registers (0x10).
    pub const WRITE_MULTIPLE_REGISTERS: u8 = 0x10;
    /// Read/write multiple registers (0x17).
    pub const READ_WRITE_MULTIPLE_REGISTERS: u8 = 0x17;
    /// Encapsulated interface transport (0x2B); MEI type 0x0E is Read Device Identification.
    pub const ENCAPSULATED_INTERFACE: u8 = 0x2B;
}

/// MEI type of Read Device Identification (function 0x2B).
pub const MEI_READ_DEVICE_ID: u8 = 0x0E;

/// Most coils or discrete inputs one read may ask for.
pub const MAX_READ_BITS: u16 = 2000;
/// Most registers one read may ask for (also the read part of 0x17).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most coils one write (0x0F) may carry.
pub const MAX_WRITE_BITS: u16 = 1968;
/// Most registers one write (0x10) may carry.
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// Most registers the write part of a read/write request (0x17) may carry.
pub const MAX_READ_WRITE_REGISTERS: u16 = 121;

/// The value a write single coil request (0x05) carries to switch a coil on.
pub const COIL_ON: u16 = 0xFF00;
/// The value a write single coil request (0x05) carries to switch a coil off.
pub const COIL_OFF: u16 = 0x0000;

/// A request a master sent, checked against the limits of the Modbus spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// FC 0x01: read coils.
    ReadCoils {
        /// First coil.
        addr: u16,
        /// How many (1..=2000).
        count: u16,
    },
    /// FC 0x02: read discrete inputs.
    ReadDiscreteInputs {
        /// First input.
        addr: u16,
        /// How many (1..=2000).
        count: u16,
    },
    /// FC 0x03: read holding registers.
    ReadHoldingRegisters {
        /// First register.
        addr: u16,
        /// How many (1..=125).
        count: u16,
    },
    /// FC 0x04: read input registers.
    ReadInputRegisters {
        /// First register.
        addr: u16,
        /// How many (1..=125).
        count: u16,
    },
    /// FC 0x05: switch one coil on or off.
    WriteSingleCoil {
        /// The coil.
        addr: u16,
        /// On (sent as 0xFF00) or off (0x0000).
        value: bool,
    },
    /// FC 0x06: write one holding register.
    WriteSingleRegister {
        /// The register.
        addr: u16,
        /// Its new value.
        value: u16,
    },
    /// FC 0x0F: write several coils.
    WriteMultipleCoils {
        /// First coil.
        addr: u16,
        /// New states, 1..=1968 of them.
        values: Vec<bool>,
    },
    /// FC 0x10: write several holding registers.
    WriteMultipleRegisters {
        /// First register.
        addr: u16,
        /// New values, 1..=123 of them.
        values: Vec<u16>,
    },
    /// FC 0x17: write registers, then read registers (the write happens first).
    ReadWriteMultipleRegisters {
        /// First register to read.
        read_addr: u16,
        /// How many to read (1..=125).
        read_count: u16,
        /// First register to write.
        write_addr: u16,
        /// New values, 1..=121 of them.
        values: Vec<u16>,
    },
    /// FC 0x2B / MEI 0x0E: read device identification.
    ReadDeviceIdentification {
        /// 1 basic, 2 regular, 3 extended (stream access), 4 one object.
        read_code: u8,
        /// The object asked for (read code 4) or the first one (stream access).
        object_id: u8,
    },
}

impl Request {
    /// The function code of this request.
    pub fn function_code(&self) -> u8 {
        match self {
            Request::ReadCoils { .. } => fc::READ_COILS,
            Request::ReadDiscreteInputs { .. } => fc::READ_DISCRETE_INPUTS,
            Request::ReadHoldingRegisters { .. } => fc::READ_HOLDING_REGISTERS,
            Request::ReadInputRegisters { .. } => fc::READ_INPUT_REGISTERS,
            Request::WriteSingleCoil { .. } => fc::WRITE_SINGLE_COIL,
            Request::WriteSingleRegister { .. } => fc::WRITE_SINGLE_REGISTER,
            Request::WriteMultipleCoils { .. } => fc::WRITE_MULTIPLE_COILS,
            Request::WriteMultipleRegisters { .. } => fc::WRITE_MULTIPLE_REGISTERS,
            Request::ReadWriteMultipleRegisters { .. } => fc::READ_WRITE_MULTIPLE_REGISTERS,
            Request::ReadDeviceIdentification { .. } => fc::ENCAPSULATED_INTERFACE,
        }
    }
}

/// Why a PDU could not be turned into a [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// Empty PDU: nothing to answer (the frame is malformed).
    #[error("empty PDU")]
    Empty,
    /// A function code we do not implement (answer exception 0x01).
    #[error("function code {function:#04x} is not supported")]
    IllegalFunction {
        /// The function code of the request.
        function: u8,
    },
    /// Known function, but the address range runs past 0xFFFF (answer exception 0x02).
    #[error("address range out of bounds for function code {function:#04x}")]
    IllegalDataAddress {
        /// The function code of the request.
        function: u8,
    },
    /// Known function, bad quantity / byte count / coil value / length mismatch
    /// (answer exception 0x03).
    #[error("bad quantity, byte count, value or length for function code {function:#04x}")]
    IllegalDataValue {
        /// The function code of the request.
        function: u8,
    },
}

impl PduError {
    /// The exception response to send, if any: `Some((function, code))`, where `function` is
    /// the request's function code (without the 0x80 bit). `Empty` gives `None`.
    pub fn exception(&self) -> Option<(u8, u8)> {
        match *self {
            PduError::Empty => None,
            PduError::IllegalFunction { function } => Some((function, exception::ILLEGAL_FUNCTION)),
            PduError::IllegalDataAddress { function } => {
                Some((function, exception::ILLEGAL_DATA_ADDRESS))
            }
            PduError::IllegalDataValue { function } => {
                Some((function, exception::ILLEGAL_DATA_VALUE))
            }
        }
    }
}

/// Parses a request PDU (function code and data, no framing).
///
/// Checks are made in the order of the Modbus spec: function code (exception 0x01), then
/// length, quantity, byte count and values (0x03), then the address range (0x02).
pub fn parse_request(pdu: &[u8]) -> Result<Request, PduError> {
    let Some((&function, body)) = pdu.split_first() else {
        return Err(PduError::Empty);
    };
    let bad_value = PduError::IllegalDataValue { function };
    let bad_addr = PduError::IllegalDataAddress { function };

    match function {
        fc::READ_COILS
        | fc::READ_DISCRETE_INPUTS
        | fc::READ_HOLDING_REGISTERS
        | fc::READ_INPUT_REGISTERS => {
            let (addr, count) = two_words(body).ok_or(bad_value)?;
            let max = if function <= fc::READ_DISCRETE_INPUTS {
                MAX_READ_BITS
            } else {
                MAX_READ_REGISTERS
            };
            if !(1..=max).contains(&count) {
                return Err(bad_value);
            }
            if !range_fits(addr, count) {
                return Err(bad_addr);
            }
            Ok(match function {
                fc::READ_COILS => Request::ReadCoils { addr, count },
                fc::READ_DISCRETE_INPUTS => Request::ReadDiscreteInputs { addr, count },
                fc::READ_HOLDING_REGISTERS => Request::ReadHoldingRegisters { addr, count },
                _ => Request::ReadInputRegisters { addr, count },
            })
        }
        fc::WRITE_SINGLE_COIL => {
            let (addr, raw) = two_words(body).ok_or(bad_value)?;
            let value = match raw {
                COIL_ON => true,
                COIL_OFF => false,
                _ => return Err(bad_value),
            };
            Ok(Request::WriteSingleCoil { addr, value })
        }
        fc::WRITE_SINGLE_REGISTER => {
            let (addr, value) = two_words(body).ok_or(bad_value)?;
            Ok(Request::WriteSingleRegister { addr, value })
        }
        fc::WRITE_MULTIPLE_COILS => {
            let &[a0, a1, c0, c1, byte_count, ref data @ ..] = body else {
                return Err(bad_value);
            };
            let (addr, count) = (u16::from_be_bytes([a0, a1]), u16::from_be_bytes([c0, c1]));
            if !(1..=MAX_WRITE_BITS).contains(&count)
                || usize::from(byte_count) != usize::from(count).div_ceil(8)
                || data.len() != usize::from(byte_count)
            {
                return Err(bad_value);
            }
            if !range_fits(addr, count) {
                return Err(bad_addr);
            }
            let values = unpack_bits(data, usize::from(count));
            Ok(Request::WriteMultipleCoils { addr, values })
        }
        fc::WRITE_MULTIPLE_REGISTERS => {
            let &[a0, a1, c0, c1, byte_count, ref data @ ..] = body else {
                return Err(bad_value);
            };
            let (addr, count) = (u16::from_be_bytes([a0, a1]), u16::from_be_bytes([c0, c1]));
            if !(1..=MAX_WRITE_REGISTERS).contains(&count)
                || usize::from(byte_count) != 2 * usize::from(count)
                || data.len() != usize::from(byte_count)
            {
                return Err(bad_value);
            }
            if !range_fits(addr, count) {
                return Err(bad_addr);
            }
            let values = unpack_words(data);
            Ok(Request::WriteMultipleRegisters { addr, values })
        }
        fc::ENCAPSULATED_INTERFACE => {
            let &[mei, read_code, object_id] = body else {
                return Err(bad_value);
            };
            if mei != MEI_READ_DEVICE_ID {
                // Other MEI types (CANopen general reference, 0x0D) are not implemented.
                return Err(PduError::IllegalFunction { function });
            }
            if !(1..=4).contains(&read_code) {
                return Err(bad_value);
            }
            Ok(Request::ReadDeviceIdentification {
                read_code,
                object_id,
            })
        }
        fc::READ_WRITE_MULTIPLE_REGISTERS => {
            let &[
                r0,
                r1,
                rc0,
                rc1,
                w0,
                w1,
                wc0,
                wc1,
                byte_count,
                ref data @ ..,
            ] = body
            else {
                return Err(bad_value);
            };
            let read_addr = u16::from_be_bytes([r0, r1]);
            let read_count = u16::from_be_bytes([rc0, rc1]);
            let write_addr = u16::from_be_bytes([w0, w1]);
            let write_count = u16::from_be_bytes([wc0, wc1]);
            if !(1..=MAX_READ_REGISTERS).contains(&read_count)
                || !(1..=MAX_READ_WRITE_REGISTERS).contains(&write_count)
                || usize::from(byte_count) != 2 * usize::from(write_count)
                || data.len() != usize::from(byte_count)
            {
                return Err(bad_value);
            }
            if !range_fits(read_addr, read_count) || !range_fits(write_addr, write_count) {
                return Err(bad_addr);
            }
            Ok(Request::ReadWriteMultipleRegisters {
                read_addr,
                read_count,
                write_addr,
                values: unpack_words(data),
            })
        }
        _ => Err(PduError::IllegalFunction { function }),
    }
}

/// The two big-endian words of a 4-byte body, or `None` if the body is not exactly 4 bytes.
fn two_words(body: &[u8]) -> Option<(u16, u16)> {
    let &[a0, a1, b0, b1] = body else {
        return None;
    };
    Some((u16::from_be_bytes([a0, a1]), u16::from_be_bytes([b0, b1])))
}

/// Whether `count` items starting at `addr` stay within the 16-bit address space.
fn range_fits(addr: u16, count: u16) -> bool {
    u32::from(addr) + u32::from(count) <= 0x1_0000
}

/// The first `count` bits of `data`, least significant bit of each byte first.
fn unpack_bits(data: &[u8], count: usize) -> Vec<bool> {
    data.iter()
        .flat_map(|&byte| (0..8).map(move |bit| byte >> bit & 1 != 0))
        .take(count)
        .collect()
}

/// Big-endian words; a trailing odd byte is ignored (callers check the length first).
fn unpack_words(data: &[u8]) -> Vec<u16> {
    let (words, _) = data.as_chunks::<2>();
    words.iter().map(|&w| u16::from_be_bytes(w)).collect()
}

/// Appends a Read Device Identification response (FC 0x2B / MEI 0x0E) with `objects` (id,
/// value), all in one response: conformity level 0x82 (regular identification, stream and
/// individual access), nothing more follows. Objects are cut to fit the 253-byte PDU.
pub fn encode_device_identification(out: &mut Vec<u8>, read_code: u8, objects: &[(u8, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&[
        fc::ENCAPSULATED_INTERFACE,
        MEI_READ_DEVICE_ID,
        read_code,
        0x82,
        0x00,
        0x00,
        0,
    ]);
    let count_at = out.len() - 1;
    let mut count = 0u8;
    for (id, value) in objects {
        let used = out.len() - start;
        let room = 253usize.saturating_sub(used + 2);
        if room == 0 {
            break;
        }
        let v = &value[..value.len().min(room).min(255)];
        out.push(*id);
        out.push(v.len() as u8);
        out.extend_from_slice(v);
        count += 1;
    }
    out[count_at] = count;
}

/// Appends a read bits response (FC 0x01/0x02): function code, byte count, then the bits
/// packed least significant bit first, unused high bits of the last byte zero.
///
/// At most [`MAX_READ_BITS`] bits are encoded; any more are ignored, as a longer response
/// is not valid Modbus.
pub fn encode_bits(out: &mut Vec<u8>, function: u8, bits: impl ExactSizeIterator<Item = bool>) {
    let max = usize::from(MAX_READ_BITS);
    out.reserve(2 + bits.len().min(max).div_ceil(8));
    out.push(function);
    let count_at = out.len();
    out.push(0);
    let mut byte_count: u8 = 0;
    let mut current = 0u8;
    let mut used = 0u8;
    for bit in bits.take(max) {
        current |= u8::from(bit) << used;
        used += 1;
        if used == 8 {
            out.push(current);
            byte_count += 1;
            (current, used) = (0, 0);
        }
    }
    if used > 0 {
        out.push(current);
        byte_count += 1;
    }
    if let Some(slot) = out.get_mut(count_at) {
        *slot = byte_count;
    }
}

/// Appends a read registers response (FC 0x03/0x04/0x17): function code, byte count, then
/// the registers as big-endian words.
///
/// At most [`MAX_READ_REGISTERS`] registers are encoded; any more are ignored, as a longer
/// response is not valid Modbus.
pub fn encode_registers(out: &mut Vec<u8>, function: u8, regs: &[u16]) {
    let regs = regs.get(..usize::from(MAX_READ_REGISTERS)).unwrap_or(regs);
    out.reserve(2 + 2 * regs.len());
    out.push(function);
    // At most 125 registers, so the byte count (at most 250) fits in a byte.
    out.push(u8::try_from(2 * regs.len()).unwrap_or(u8::MAX));
    for reg in regs {
        out.extend_from_slice(&reg.to_be_bytes());
    }
}

/// Appends a write single coil or register response (FC 0x05/0x06), which echoes the request:
/// function code, address, value. For a coil pass [`COIL_ON`] or [`COIL_OFF`].
pub fn encode_write_single(out: &mut Vec<u8>, function: u8, addr: u16, value: u16) {
    out.push(function);
    out.extend_from_slice(&addr.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a write multiple coils or registers response (FC 0x0F/0x10): function code,
/// starting address, quantity written.
pub fn encode_write_multiple(out: &mut Vec<u8>, function: u8, addr: u16, count: u16) {
    out.push(function);
    out.extend_from_slice(&addr.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
}

/// Appends an exception response: the function code with its high bit set, then the
/// exception code (see [`exception`]).
pub fn encode_exception(out: &mut Vec<u8>, function: u8, code: u8) {
    out.push(function | 0x80);
    out.push(code);
}

/// Encodes a request PDU, the way a master would. Only used by tests, to build input.
#[cfg(test)]
pub(crate) fn encode_request(out: &mut Vec<u8>, request: &Request) {
    let function = request.function_code();
    out.push(function);
    let push_word = |out: &mut Vec<u8>, w: u16| out.extend_from_slice(&w.to_be_bytes());
    match request {
        Request::ReadCoils { addr, count }
        | Request::ReadDiscreteInputs { addr, count }
        | Request::ReadHoldingRegisters { addr, count }
        | Request::ReadInputRegisters { addr, count } => {
            push_word(out, *addr);
            push_word(out, *count);
        }
        Request::WriteSingleCoil { addr, value } => {
            push_word(out, *addr);
            push_word(out, if *value { COIL_ON } else { COIL_OFF });
        }
        Request::WriteSingleRegister { addr, value } => {
            push_word(out, *addr);
            push_word(out, *value);
        }
        Request::WriteMultipleCoils { addr, values } => {
            push_word(out, *addr);
            push_word(out, values.len() as u16);
            out.push(values.len().div_ceil(8) as u8);
            for chunk in values.chunks(8) {
                out.push(
                    chunk
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, &v)| b | u8::from(v) << i),
                );
            }
        }
        Request::WriteMultipleRegisters { addr, values } => {
            push_word(out, *addr);
            push_word(out, values.len() as u16);
            out.push((2 * values.len()) as u8);
            for v in values {
                push_word(out, *v);
            }
        }
        Request::ReadWriteMultipleRegisters {
            read_addr,
            read_count,
            write_addr,
            values,
        } => {
            push_word(out, *read_addr);
            push_word(out, *read_count);
            push_word(out, *write_addr);
            push_word(out, values.len() as u16);
            out.push((2 * values.len()) as u8);
            for v in values {
                push_word(out, *v);
            }
        }
        Request::ReadDeviceIdentification {
            read_code,
            object_id,
        } => {
            out.extend_from_slice(&[MEI_READ_DEVICE_ID, *read_code, *object_id]);
        }
    }
}

/// A proptest strategy for valid requests. Only used by tests.
#[cfg(test)]
pub(crate) fn arb_request() -> impl proptest::strategy::Strategy<Value = Request> {
    use proptest::prelude::*;

    // A start address such that `count` items fit below 0x10000.
    fn addr_for(count: u16) -> impl Strategy<Value = u16> {
        0..=(u16::MAX - (count - 1))
    }
    let read = |max: u16| (1..=max).prop_flat_map(|count| (addr_for(count), Just(count)));
    prop_oneof![
        read(MAX_READ_BITS).prop_map(|(addr, count)| Request::ReadCoils { addr, count }),
        read(MAX_READ_BITS).prop_map(|(addr, count)| Request::ReadDiscreteInputs { addr, count }),
        read(MAX_READ_REGISTERS)
            .prop_map(|(addr, count)| Request::ReadHoldingRegisters { addr, count }),
        read(MAX_READ_REGISTERS)
            .prop_map(|(addr, count)| Request::ReadInputRegisters { addr, count }),
        (any::<u16>(), any::<bool>())
            .prop_map(|(addr, value)| Request::WriteSingleCoil { addr, value }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(addr, value)| Request::WriteSingleRegister { addr, value }),
        proptest::collection::vec(any::<bool>(), 1..=usize::from(MAX_WRITE_BITS))
            .prop_flat_map(|values| (addr_for(values.len() as u16), Just(values)))
            .prop_map(|(addr, values)| Request::WriteMultipleCoils { addr, values }),
        proptest::collection::vec(any::<u16>(), 1..=usize::from(MAX_WRITE_REGISTERS))
            .prop_flat_map(|values| (addr_for(values.len() as u16), Just(values)))
            .prop_map(|(addr, values)| Request::WriteMultipleRegisters { addr, values }),
        (
            1..=MAX_READ_REGISTERS,
            proptest::collection::vec(any::<u16>(), 1..=usize::from(MAX_READ_WRITE_REGISTERS)),
        )
            .prop_flat_map(|(read_count, values)| (
                addr_for(read_count),
                Just(read_count),
                addr_for(values.len() as u16),
                Just(values),
            ))
            .prop_map(|(read_addr, read_count, write_addr, values)| {
                Request::ReadWriteMultipleRegisters {
                    read_addr,
                    read_count,
                    write_addr,
                    values,
                }
            }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_err(function: u8) -> Result<Request, PduError> {
        Err(PduError::IllegalDataValue { function })
    }
    fn addr_err(function: u8) -> Result<Request, PduError> {
        Err(PduError::IllegalDataAddress { function })
    }
    fn func_err(function: u8) -> Result<Request, PduError> {
        Err(PduError::IllegalFunction { function })
    }

    #[test]
    fn parse_valid_requests() {
        let cases: Vec<(&str, Vec<u8>, Request)> = vec![
            // Examples from the Modbus application protocol spec v1.1b3, section 6.
            (
                "read coils 20-38",
                vec![0x01, 0x00, 0x13, 0x00, 0x13],
                Request::ReadCoils {
                    addr: 0x13,
                    count: 19,
                },
            ),
            (
                "read discrete inputs 197-218",
                vec![0x02, 0x00, 0xC4, 0x00, 0x16],
                Request::ReadDiscreteInputs {
                    addr: 0xC4,
                    count: 22,
                },
            ),
            (
                "read holding 108-110",
                vec![0x03, 0x00, 0x6B, 0x00, 0x03],
                Request::ReadHoldingRegisters {
                    addr: 0x6B,
                    count: 3,
                },
            ),
            (
                "read input 9",
                vec![0x04, 0x00, 0x08, 0x00, 0x01],
                Request::ReadInputRegisters { addr: 8, count: 1 },
            ),
            (
                "write coil 173 on",
                vec![0x05, 0x00, 0xAC, 0xFF, 0x00],
                Request::WriteSingleCoil {
                    addr: 0xAC,
                    value: true,
                },
            ),
            (
                "write coil off",
                vec![0x05, 0x00, 0xAC, 0x00, 0x00],
                Request::WriteSingleCoil {
                    addr: 0xAC,
                    value: false,
                },
            ),
            (
                "write register 2",
                vec![0x06, 0x00, 0x01, 0x00, 0x03],
                Request::WriteSingleRegister { addr: 1, value: 3 },
            ),
            (
                "write 10 coils from 20",
                vec![0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01],
                Request::WriteMultipleCoils {
                    addr: 0x13,
                    values: vec![
                        true, false, true, true, false, false, true, true, true, false,
                    ],
                },
            ),
            (
                "write registers 2-3",
                vec![0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02],
                Request::WriteMultipleRegisters {
                    addr: 1,
                    values: vec![0x000A, 0x0102],
                },
            ),
            (
                "read 6 from 4, write 3 at 15",
                vec![
                    0x17, 0x00, 0x03, 0x00, 0x06, 0x00, 0x0E, 0x00, 0x03, 0x06, 0x00, 0xFF, 0x00,
                    0xFF, 0x00, 0xFF,
                ],
                Request::ReadWriteMultipleRegisters {
                    read_addr: 3,
                    read_count: 6,
                    write_addr: 0x0E,
                    values: vec![0xFF, 0xFF, 0xFF],
                },
            ),
            // Limits.
            (
                "2000 coils ending at 0xFFFF",
                vec![0x01, 0xF8, 0x30, 0x07, 0xD0],
                Request::ReadCoils {
                    addr: 0xF830,
                    count: 2000,
                },
            ),
            (
                "125 registers",
                vec![0x03, 0x00, 0x00, 0x00, 0x7D],
                Request::ReadHoldingRegisters {
                    addr: 0,
                    count: 125,
                },
            ),
            (
                "last register",
                vec![0x04, 0xFF, 0xFF, 0x00, 0x01],
                Request::ReadInputRegisters {
                    addr: 0xFFFF,
                    count: 1,
                },
            ),
            (
                "one coil, padding bits set are ignored",
                vec![0x0F, 0x00, 0x00, 0x00, 0x01, 0x01, 0xFF],
                Request::WriteMultipleCoils {
                    addr: 0,
                    values: vec![true],
                },
            ),
        ];
        for (name, pdu, want) in cases {
            assert_eq!(parse_request(&pdu), Ok(want.clone()), "{name}");
            assert_eq!(want.function_code(), pdu[0], "{name}");
            let mut again = Vec::new();
            encode_request(&mut again, &want);
            if name.starts_with("one coil") {
                continue; // the padding is not kept
            }
            assert_eq!(again, pdu, "{name}: encode_request");
        }
    }

    #[test]
    fn parse_limits() {
        let mut pdu = vec![0x0F, 0x00, 0x00, 0x07, 0xB0, 246];
        pdu.extend([0xAA; 246]);
        let Ok(Request::WriteMultipleCoils { values, .. }) = parse_request(&pdu) else {
            panic!("1968 coils");
        };
        assert_eq!(values.len(), 1968);
        pdu[4] = 0xB1;
        assert_eq!(parse_request(&pdu), value_err(0x0F), "1969 coils");

        let mut pdu = vec![0x10, 0x00, 0x00, 0x00, 123, 246];
        pdu.extend([0x12; 246]);
        assert!(parse_request(&pdu).is_ok(), "123 registers");
        pdu[4] = 124;
        assert_eq!(parse_request(&pdu), value_err(0x10), "124 registers");

        let mut pdu = vec![0x17, 0, 0, 0, 125, 0, 0, 0, 121, 242];
        pdu.extend([0x34; 242]);
        assert!(parse_request(&pdu).is_ok(), "read 125, write 121");
        pdu[4] = 126;
        assert_eq!(parse_request(&pdu), value_err(0x17), "read 126");
        pdu[4] = 125;
        pdu[8] = 122;
        assert_eq!(parse_request(&pdu), value_err(0x17), "write 122");
    }

    #[test]
    fn parse_errors() {
        let cases: Vec<(&str, Vec<u8>, Result<Request, PduError>)> = vec![
            ("empty", vec![], Err(PduError::Empty)),
            ("unknown fc", vec![0x07], func_err(0x07)),
            (
                "mask write not implemented",
                vec![0x16, 0, 0, 0, 0, 0, 0],
                func_err(0x16),
            ),
            ("fc zero", vec![0x00, 0, 0, 0, 1], func_err(0x00)),
            ("exception fc", vec![0x83, 0x02], func_err(0x83)),
            ("high bit on a read", vec![0x81, 0, 0, 0, 1], func_err(0x81)),
            (
                "read too short",
                vec![0x03, 0x00, 0x6B, 0x00],
                value_err(0x03),
            ),
            ("read fc only", vec![0x01], value_err(0x01)),
            (
                "read trailing byte",
                vec![0x03, 0x00, 0x6B, 0x00, 0x03, 0x00],
                value_err(0x03),
            ),
            ("read 0 coils", vec![0x01, 0, 0, 0, 0], value_err(0x01)),
            (
                "read 2001 inputs",
                vec![0x02, 0, 0, 0x07, 0xD1],
                value_err(0x02),
            ),
            ("read 0 registers", vec![0x04, 0, 0, 0, 0], value_err(0x04)),
            (
                "read 126 registers",
                vec![0x03, 0, 0, 0, 126],
                value_err(0x03),
            ),
            (
                "read past 0xFFFF",
                vec![0x03, 0xFF, 0xFF, 0, 2],
                addr_err(0x03),
            ),
            (
                "coils past 0xFFFF",
                vec![0x01, 0xF8, 0x31, 0x07, 0xD0],
                addr_err(0x01),
            ),
            // Quantity is checked before the address.
            (
                "bad count and address",
                vec![0x03, 0xFF, 0xFF, 0, 200],
                value_err(0x03),
            ),
            (
                "coil value 0x0001",
                vec![0x05, 0, 0, 0x00, 0x01],
                value_err(0x05),
            ),
            (
                "coil value 0xFFFF",
                vec![0x05, 0, 0, 0xFF, 0xFF],
                value_err(0x05),
            ),
            ("coil short", vec![0x05, 0, 0, 0xFF], value_err(0x05)),
            ("register long", vec![0x06, 0, 0, 0, 0, 0], value_err(0x06)),
            ("coils no data", vec![0x0F, 0, 0, 0, 1, 1], value_err(0x0F)),
            (
                "coils header short",
                vec![0x0F, 0, 0, 0, 1],
                value_err(0x0F),
            ),
            ("coils 0", vec![0x0F, 0, 0, 0, 0, 0], value_err(0x0F)),
            (
                "coils byte count",
                vec![0x0F, 0, 0, 0, 9, 1, 0xFF],
                value_err(0x0F),
            ),
            (
                "coils trailing",
                vec![0x0F, 0, 0, 0, 1, 1, 1, 0],
                value_err(0x0F),
            ),
            (
                "coils past end",
                vec![0x0F, 0xFF, 0xFF, 0, 2, 1, 3],
                addr_err(0x0F),
            ),
            (
                "registers short",
                vec![0x10, 0, 1, 0, 2, 4, 0, 0x0A, 1],
                value_err(0x10),
            ),
            (
                "registers byte count",
                vec![0x10, 0, 1, 0, 2, 3, 0, 0x0A, 1],
                value_err(0x10),
            ),
            (
                "registers trailing",
                vec![0x10, 0, 1, 0, 1, 2, 0, 1, 0],
                value_err(0x10),
            ),
            ("registers 0", vec![0x10, 0, 1, 0, 0, 0], value_err(0x10)),
            (
                "registers past end",
                vec![0x10, 0xFF, 0xFF, 0, 2, 4, 0, 0, 0, 0],
                addr_err(0x10),
            ),
            (
                "rw header short",
                vec![0x17, 0, 0, 0, 1, 0, 0, 0, 1],
                value_err(0x17),
            ),
            (
                "rw read 0",
                vec![0x17, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0],
                value_err(0x17),
            ),
            (
                "rw write 0",
                vec![0x17, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                value_err(0x17),
            ),
            (
                "rw byte count",
                vec![0x17, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0],
                value_err(0x17),
            ),
            (
                "rw data short",
                vec![0x17, 0, 0, 0, 1, 0, 0, 0, 1, 2, 0],
                value_err(0x17),
            ),
            (
                "rw read past end",
                vec![0x17, 0xFF, 0xFF, 0, 2, 0, 0, 0, 1, 2, 0, 0],
                addr_err(0x17),
            ),
            (
                "rw write past end",
                vec![0x17, 0, 0, 0, 1, 0xFF, 0xFF, 0, 2, 4, 0, 0, 0, 0],
                addr_err(0x17),
            ),
        ];
        for (name, pdu, want) in cases {
            assert_eq!(parse_request(&pdu), want, "{name}");
        }
    }

    #[test]
    fn exception_codes() {
        assert_eq!(PduError::Empty.exception(), None);
        assert_eq!(
            PduError::IllegalFunction { function: 0x2B }.exception(),
            Some((0x2B, 0x01))
        );
        assert_eq!(
            PduError::IllegalDataAddress { function: 0x03 }.exception(),
            Some((0x03, 0x02))
        );
        assert_eq!(
            PduError::IllegalDataValue { function: 0x10 }.exception(),
            Some((0x10, 0x03))
        );
        let mut out = Vec::new();
        let (function, code) = PduError::IllegalFunction { function: 0x07 }
            .exception()
            .unwrap();
        encode_exception(&mut out, function, code);
        assert_eq!(out, [0x87, 0x01]);
        // Spec example: read coils with an illegal address.
        out.clear();
        encode_exception(&mut out, 0x01, exception::ILLEGAL_DATA_ADDRESS);
        assert_eq!(out, [0x81, 0x02]);
        // An exception to an exception code keeps the high bit.
        out.clear();
        encode_exception(&mut out, 0x83, exception::ILLEGAL_FUNCTION);
        assert_eq!(out, [0x83, 0x01]);
    }

    #[test]
    fn response_encodings() {
        let encode = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = vec![0xEE]; // appends, keeps what is there
            f(&mut out);
            assert_eq!(out[0], 0xEE);
            out.split_off(1)
        };
        // Spec example: coils 20-38 = CD 6B 05 (19 bits, high bits of the last byte zero).
        let coils = [
            true, false, true, true, false, false, true, true, // 0xCD
            true, true, false, true, false, true, true, false, // 0x6B
            true, false, true, // 0x05
        ];
        assert_eq!(
            encode(&|o| encode_bits(o, 0x01, coils.iter().copied())),
            [0x01, 0x03, 0xCD, 0x6B, 0x05]
        );
        assert_eq!(
            encode(&|o| encode_bits(o, 0x02, [true; 8].into_iter())),
            [0x02, 0x01, 0xFF]
        );
        assert_eq!(
            encode(&|o| encode_bits(o, 0x02, [].into_iter())),
            [0x02, 0x00]
        );
        let many = encode(&|o| encode_bits(o, 0x01, std::iter::repeat_n(true, 3000)));
        assert_eq!(many.len(), 2 + 250, "clamped to 2000 bits");
        assert_eq!(many[1], 250);
        // Spec example: registers 108-110 = 0x022B, 0x0000, 0x0064.
        assert_eq!(
            encode(&|o| encode_registers(o, 0x03, &[0x022B, 0x0000, 0x0064])),
            [0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64]
        );
        let many = encode(&|o| encode_registers(o, 0x04, &[7; 200]));
        assert_eq!(many.len(), 2 + 250, "clamped to 125 registers");
        assert_eq!(many[1], 250);
        assert_eq!(
            encode(&|o| encode_write_single(o, 0x05, 0x00AC, COIL_ON)),
            [0x05, 0x00, 0xAC, 0xFF, 0x00]
        );
        assert_eq!(
            encode(&|o| encode_write_single(o, 0x06, 0x0001, 0x0003)),
            [0x06, 0x00, 0x01, 0x00, 0x03]
        );
        assert_eq!(
            encode(&|o| encode_write_multiple(o, 0x0F, 0x0013, 0x000A)),
            [0x0F, 0x00, 0x13, 0x00, 0x0A]
        );
        assert_eq!(
            encode(&|o| encode_write_multiple(o, 0x10, 0x0001, 0x0002)),
            [0x10, 0x00, 0x01, 0x00, 0x02]
        );
        assert_eq!(
            encode(&|o| encode_exception(o, 0x03, exception::SERVER_DEVICE_BUSY)),
            [0x83, 0x06]
        );
    }

    #[test]
    fn bits_round_trip_through_request_parsing() {
        // encode_bits packs the way write multiple coils unpacks.
        for n in [1usize, 7, 8, 9, 16, 17, 1968] {
            let bits: Vec<bool> = (0..n).map(|i| i % 3 == 0 || i % 7 == 1).collect();
            let mut resp = Vec::new();
            encode_bits(&mut resp, 0x01, bits.iter().copied());
            let mut req = vec![0x0F, 0, 0];
            req.extend_from_slice(&(n as u16).to_be_bytes());
            req.extend_from_slice(&resp[1..]);
            assert_eq!(
                parse_request(&req),
                Ok(Request::WriteMultipleCoils {
                    addr: 0,
                    values: bits
                }),
                "{n} bits"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(pdu in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&pdu);
        }

        #[test]
        fn parse_never_panics_on_known_functions(
            function in prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 0x0F, 0x10, 0x17]),
            body in proptest::collection::vec(any::<u8>(), 0..260),
        ) {
            let mut pdu = vec![function];
            pdu.extend(body);
            match parse_request(&pdu) {
                Ok(req) => prop_assert_eq!(req.function_code(), function),
                Err(e) => {
                    let (f, code) = e.exception().unwrap();
                    prop_assert_eq!(f, function);
                    prop_assert!(code == 0x02 || code == 0x03);
                }
            }
        }

        #[test]
        fn encode_then_parse_round_trips(req in arb_request()) {
            let mut pdu = Vec::new();
            encode_request(&mut pdu, &req);
            prop_assert!(pdu.len() <= 253);
            prop_assert_eq!(parse_request(&pdu), Ok(req));
        }

        #[test]
        fn encode_bits_layout(bits in proptest::collection::vec(any::<bool>(), 0..2100)) {
            let mut out = Vec::new();
            encode_bits(&mut out, 0x02, bits.iter().copied());
            let n = bits.len().min(2000);
            prop_assert_eq!(out.len(), 2 + n.div_ceil(8));
            prop_assert_eq!(usize::from(out[1]), n.div_ceil(8));
            for (i, &bit) in bits.iter().take(n).enumerate() {
                prop_assert_eq!(out[2 + i / 8] >> (i % 8) & 1 == 1, bit);
            }
            if n % 8 != 0 {
                prop_assert_eq!(out[out.len() - 1] >> (n % 8), 0, "unused high bits are zero");
            }
        }
    }
}
