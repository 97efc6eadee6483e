//! One request to one simulated slave: the PDU goes to the shard that owns the device, which
//! decides the faults, reads or writes the device's registers and encodes the answer, all on
//! the shard's thread (the device is never shared). The server gets back what to send.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_core::modbus::{FaultDecision, Table};
use fleet_core::{Device, DeviceCtx, DeviceId, Effects, SimTime};
use fleet_engine::{QueryCx, QueryError, QueryRouter};
use fleet_metrics::ModbusCounters;
use tokio::sync::oneshot;

use crate::pdu::{self, PduError, Request};

/// Which transport a request came over: decides which faults apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Rtu,
}

/// What to send back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The response PDU; empty = stay silent.
    pub pdu: Vec<u8>,
    /// Wait this long before sending.
    pub delay: Duration,
    /// TCP: close the connection instead of answering.
    pub drop_connection: bool,
    /// RTU: corrupt the CRC / cut the frame short.
    pub bad_crc: bool,
    pub truncated: bool,
}

/// Asks device `id` to serve `request_pdu`. `broadcast`: carry out writes, never answer.
pub async fn serve(
    router: &QueryRouter,
    id: DeviceId,
    request_pdu: Bytes,
    transport: Transport,
    broadcast: bool,
) -> Result<Outcome, QueryError> {
    let received = Instant::now();
    let (tx, rx) = oneshot::channel();
    router
        .device(
            id,
            Box::new(move |cx: QueryCx<'_, '_>| {
                let out = execute(
                    cx.device,
                    cx.ctx,
                    cx.now,
                    cx.fx,
                    &mut cx.metrics.modbus,
                    &request_pdu,
                    transport,
                    broadcast,
                );
                if out.pdu.is_empty() && !out.drop_connection {
                    // Silent: no service time to record.
                } else {
                    let us = (received.elapsed() + out.delay).as_micros() as u64;
                    cx.metrics.modbus_service_us.record(us.max(1));
                }
                let _ = tx.send(out);
            }),
        )
        .await?;
    rx.await.map_err(|_| QueryError::Closed)
}

/// Counts something that belongs to no device on the shard of `id`.
pub async fn count(
    router: &QueryRouter,
    id: DeviceId,
    f: impl FnOnce(&mut ModbusCounters) + Send + 'static,
) {
    let _ = router
        .metrics(id, Box::new(move |m| f(&mut m.modbus)))
        .await;
}

/// The device side of one request (runs on the device's shard). Every request ends in exactly
/// one of: a response, an exception, silence, a dropped connection, or (broadcast) no answer,
/// so `requests = responses + exceptions + silent + dropped_connections + broadcasts`.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    device: &mut Device,
    ctx: &DeviceCtx,
    now: SimTime,
    fx: &mut Effects,
    m: &mut ModbusCounters,
    request_pdu: &[u8],
    transport: Transport,
    broadcast: bool,
) -> Outcome {
    let function = request_pdu.first().copied().unwrap_or(0);
    m.count_request(function);
    if broadcast {
        m.broadcasts += 1;
    }
    let mut out = Outcome::default();
    if !device.modbus_serving(now) {
        m.not_serving += 1;
        if !broadcast {
            m.silent += 1;
        }
        return out;
    }
    let faults: FaultDecision = device.modbus_faults(now, ctx);
    if faults.silence && !broadcast {
        m.silent += 1;
        return out;
    }
    if faults.drop_connection && transport == Transport::Tcp && !broadcast {
        m.dropped_connections += 1;
        out.drop_connection = true;
        return out;
    }
    let request = match pdu::parse_request(request_pdu) {
        Ok(r) => r,
        Err(e) => {
            if let (Some((f, code)), false) = (e.exception(), broadcast) {
                pdu::encode_exception(&mut out.pdu, f, code);
                m.count_exception(code);
            } else if e == PduError::Empty && !broadcast {
                // Nothing to answer: a frame without a function code.
                m.malformed_frames += 1;
                m.silent += 1;
            }
            return finish(out, &faults, transport, m);
        }
    };
    if let (Some(code), false) = (faults.exception, broadcast) {
        pdu::encode_exception(&mut out.pdu, function, code);
        m.count_exception(code);
        m.injected_exceptions += 1;
        return finish(out, &faults, transport, m);
    }
    if faults.swapped_words && !broadcast {
        m.swapped_words += 1;
    }
    let result = run(
        device,
        ctx,
        now,
        fx,
        &request,
        faults.swapped_words,
        broadcast,
        &mut out.pdu,
    );
    match result {
        Ok(wrote) => {
            if wrote {
                m.writes += 1;
            }
            if broadcast {
                out.pdu.clear();
                return out;
            }
            m.responses += 1;
        }
        Err(code) => {
            out.pdu.clear();
            if broadcast {
                return out;
            }
            pdu::encode_exception(&mut out.pdu, function, code);
            m.count_exception(code);
        }
    }
    finish(out, &faults, transport, m)
}

/// Applies the delay and the transport's corruption faults to an answer.
fn finish(
    mut out: Outcome,
    faults: &FaultDecision,
    transport: Transport,
    m: &mut ModbusCounters,
) -> Outcome {
    if out.pdu.is_empty() {
        return out; // nothing is sent: nothing to delay or corrupt
    }
    out.delay = faults.delay.to_std();
    if !out.delay.is_zero() {
        m.delayed += 1;
    }
    if transport == Transport::Rtu {
        out.bad_crc = faults.bad_crc;
        out.truncated = faults.truncated;
        m.bad_crc += u64::from(faults.bad_crc);
        m.truncated += u64::from(faults.truncated);
    }
    out
}

/// Carries out a parsed request; Ok(true) when it wrote something.
#[allow(clippy::too_many_arguments)]
fn run(
    device: &mut Device,
    ctx: &DeviceCtx,
    now: SimTime,
    fx: &mut Effects,
    request: &Request,
    swap: bool,
    broadcast: bool,
    out: &mut Vec<u8>,
) -> Result<bool, u8> {
    let mut regs = Vec::new();
    let function = request.function_code();
    match request {
        Request::ReadCoils { addr, count } | Request::ReadDiscreteInputs { addr, count } => {
            if broadcast {
                return Ok(false);
            }
            let table = if matches!(request, Request::ReadCoils { .. }) {
                Table::Coil
            } else {
                Table::DiscreteInput
            };
            device.modbus_read(table, *addr, *count, now, ctx, swap, &mut regs)?;
            pdu::encode_bits(out, function, regs.iter().map(|r| *r != 0));
            Ok(false)
        }
        Request::ReadHoldingRegisters { addr, count }
        | Request::ReadInputRegisters { addr, count } => {
            if broadcast {
                return Ok(false);
            }
            let table = if matches!(request, Request::ReadHoldingRegisters { .. }) {
                Table::Holding
            } else {
                Table::Input
            };
            device.modbus_read(table, *addr, *count, now, ctx, swap, &mut regs)?;
            pdu::encode_registers(out, function, &regs);
            Ok(false)
        }
        Request::WriteSingleCoil { addr, value } => {
            device.modbus_write(Table::Coil, *addr, &[u16::from(*value)], now, ctx, fx)?;
            let wire = if *value { pdu::COIL_ON } else { pdu::COIL_OFF };
            pdu::encode_write_single(out, function, *addr, wire);
            Ok(true)
        }
        Request::WriteSingleRegister { addr, value } => {
            device.modbus_write(Table::Holding, *addr, &[*value], now, ctx, fx)?;
            pdu::encode_write_single(out, function, *addr, *value);
            Ok(true)
        }
        Request::WriteMultipleCoils { addr, values } => {
            let words: Vec<u16> = values.iter().map(|b| u16::from(*b)).collect();
            device.modbus_write(Table::Coil, *addr, &words, now, ctx, fx)?;
            pdu::encode_write_multiple(out, function, *addr, values.len() as u16);
            Ok(true)
        }
        Request::WriteMultipleRegisters { addr, values } => {
            device.modbus_write(Table::Holding, *addr, values, now, ctx, fx)?;
            pdu::encode_write_multiple(out, function, *addr, values.len() as u16);
            Ok(true)
        }
        Request::ReadDeviceIdentification {
            read_code,
            object_id,
        } => {
            if broadcast {
                return Ok(false);
            }
            let profile = &ctx.cohort.profile;
            // The version the device runs now (an update changes it).
            let fw = &ctx.cohort.firmware.versions[usize::from(device.running_version())];
            let vendor = profile
                .modbus
                .as_ref()
                .map(|m| m.vendor.as_str())
                .unwrap_or("fleetsim");
            let all: [(u8, &[u8]); 6] = [
                (0x00, vendor.as_bytes()),
                (0x01, profile.name.as_bytes()),
                (0x02, fw.version.as_bytes()),
                (0x03, b"https://example.invalid/fleetsim"),
                (0x04, profile.description.as_bytes()),
                (0x05, profile.name.as_bytes()),
            ];
            let objects: Vec<(u8, &[u8])> = match read_code {
                1 => all[..3].to_vec(),
                2 | 3 => all.iter().copied().filter(|(_, v)| !v.is_empty()).collect(),
                _ => match all.iter().find(|(id, _)| id == object_id) {
                    Some(o) => vec![*o],
                    None => return Err(fleet_core::modbus::exception::ILLEGAL_DATA_ADDRESS),
                },
            };
            pdu::encode_device_identification(out, *read_code, &objects);
            Ok(false)
        }
        Request::ReadWriteMultipleRegisters {
            read_addr,
            read_count,
            write_addr,
            values,
        } => {
            // The write happens before the read (application protocol, 6.17).
            device.modbus_write(Table::Holding, *write_addr, values, now, ctx, fx)?;
            if broadcast {
                return Ok(true);
            }
            device.modbus_read(
                Table::Holding,
                *read_addr,
                *read_count,
                now,
                ctx,
                swap,
                &mut regs,
            )?;
            pdu::encode_registers(out, function, &regs);
            Ok(true)
        }
    }
}
