//! MQTT packets. Outbound packets are written by hand straight into the session's buffer (a
//! PUBLISH costs no allocation); inbound packets are decoded with rumqttc's codecs
//! (`rumqttc::mqttbytes::v4`, `rumqttc::v5::mqttbytes::v5`), and the tests check every packet we
//! write by decoding it with them.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::v5::mqttbytes as m5;

/// The protocol level of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// Largest inbound packet accepted (commands are small); bigger ones close the session.
pub const MAX_INBOUND_PACKET: usize = 256 * 1024;

fn put_varint(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// A will (last testament) for CONNECT.
#[derive(Clone, Debug)]
pub struct Will<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

#[derive(Clone, Debug)]
pub struct ConnectOptions<'a> {
    pub version: Version,
    pub client_id: &'a [u8],
    pub keep_alive_s: u16,
    pub clean: bool,
    /// v5 only: session expiry interval in seconds.
    pub session_expiry_s: Option<u32>,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
}

/// Longest string MQTT can carry.
pub const MAX_STRING: usize = 65_535;

pub fn write_connect(out: &mut BytesMut, o: &ConnectOptions) {
    let v5 = o.version == Version::V5;
    let props_len = if v5 && o.session_expiry_s.is_some() {
        5
    } else {
        0
    };
    let mut len = 2 + 4 + 1 + 1 + 2; // "MQTT", level, flags, keep-alive
    if v5 {
        len += 1 + props_len;
    }
    len += 2 + o.client_id.len();
    if let Some(w) = &o.will {
        if v5 {
            len += 1;
        }
        len += 2 + w.topic.len() + 2 + w.payload.len();
    }
    if let Some(u) = o.username {
        len += 2 + u.len();
    }
    if let Some(p) = o.password {
        len += 2 + p.len();
    }
    out.reserve(len + 5);
    out.put_u8(0x10);
    put_varint(out, len);
    put_str(out, b"MQTT");
    out.put_u8(if v5 { 5 } else { 4 });
    let mut flags = 0u8;
    if o.clean {
        flags |= 0x02;
    }
    if let Some(w) = &o.will {
        flags |= 0x04 | (w.qos.min(2) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if o.username.is_some() {
        flags |= 0x80;
    }
    if o.password.is_some() {
        flags |= 0x40;
    }
    out.put_u8(flags);
    out.put_u16(o.keep_alive_s);
    if v5 {
        put_varint(out, props_len);
        if let Some(e) = o.session_expiry_s {
            out.put_u8(0x11);
            out.put_u32(e);
        }
    }
    put_str(out, o.client_id);
    if let Some(w) = &o.will {
        if v5 {
            out.put_u8(0); // will properties
        }
        put_str(out, w.topic);
        put_str(out, w.payload);
    }
    if let Some(u) = o.username {
        put_str(out, u);
    }
    if let Some(p) = o.password {
        put_str(out, p);
    }
}

pub fn write_subscribe(out: &mut BytesMut, version: Version, pkid: u16, filter: &[u8], qos: u8) {
    write_subscribe_many(out, version, pkid, &[filter], qos);
}

/// Appends a SUBSCRIBE of several filters at one QoS.
pub fn write_subscribe_many(
    out: &mut BytesMut,
    version: Version,
    pkid: u16,
    filters: &[&[u8]],
    qos: u8,
) {
    let v5 = version == Version::V5;
    let len = 2 + usize::from(v5) + filters.iter().map(|f| 2 + f.len() + 1).sum::<usize>();
    out.put_u8(0x82);
    put_varint(out, len);
    out.put_u16(pkid);
    if v5 {
        out.put_u8(0);
    }
    for f in filters {
        put_str(out, f);
        out.put_u8(qos.min(2));
    }
}

/// Appends a PUBLISH. `pkid` is ignored for QoS 0.
pub fn write_publish(
    out: &mut BytesMut,
    version: Version,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    payload: &[u8],
) {
    let v5 = version == Version::V5;
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + usize::from(v5) + payload.len();
    out.reserve(len + 5);
    out.put_u8(0x30 | (qos.min(2) << 1) | u8::from(retain));
    put_varint(out, len);
    put_str(out, topic);
    if qos > 0 {
        out.put_u16(pkid);
    }
    if v5 {
        out.put_u8(0);
    }
    out.put_slice(payload);
}

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70).
pub fn write_ack(out: &mut BytesMut, kind: u8, pkid: u16) {
    out.put_u8(kind);
    out.put_u8(2);
    out.put_u16(pkid);
}
pub const PUBACK: u8 = 0x40;
/// The DUP flag of a PUBLISH's first byte (a message sent again).
pub const DUP: u8 = 0x08;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;

pub fn write_pingreq(out: &mut BytesMut) {
    out.put_slice(&[0xC0, 0x00]);
}

/// DISCONNECT; in v5 with reason code 0 and empty properties spelled out (some decoders,
/// rumqttc's among them, do not accept the short form).
pub fn write_disconnect(out: &mut BytesMut, version: Version) {
    match version {
        Version::V311 => out.put_slice(&[0xE0, 0x00]),
        Version::V5 => out.put_slice(&[0xE0, 0x02, 0x00, 0x00]),
    }
}

/// An inbound packet, reduced to what a device session needs.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    ConnAck {
        accepted: bool,
        code: u8,
        session_present: bool,
    },
    PubAck(u16),
    PubRec(u16),
    /// MQTT 5: the broker refused a QoS 1/2 publish (PUBACK or PUBREC with a reason code of
    /// 0x80 or more); the flow ends there.
    PubRefused {
        pkid: u16,
        reason: u8,
    },
    PubRel(u16),
    PubComp(u16),
    Publish {
        qos: u8,
        pkid: u16,
        topic: Bytes,
        payload: Bytes,
    },
    SubAck {
        granted: bool,
    },
    PingResp,
    Disconnect,
    /// Packets a client does not expect (CONNECT, SUBSCRIBE, …): a protocol error.
    Unexpected(&'static str),
}

/// Why a packet could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed.
    Incomplete,
    Malformed(String),
}

/// Decodes one packet from the front of `buf` (consuming it).
///
/// `Incomplete` leaves `buf` as it was (the reader appends and tries again). rumqttc also says
/// "insufficient bytes" for a whole packet whose contents run past its own length, after taking
/// it off the buffer: that packet is malformed, not incomplete (found by the `mqtt_packet` fuzz
/// target; `fuzz/regressions/mqtt_packet/`).
pub fn read_packet(buf: &mut BytesMut, version: Version) -> Result<Inbound, DecodeError> {
    let before = buf.len();
    let short = |buf: &BytesMut, e: &dyn std::fmt::Display| {
        if buf.len() == before {
            DecodeError::Incomplete
        } else {
            DecodeError::Malformed(format!("a packet shorter than its contents ({e})"))
        }
    };
    match version {
        Version::V311 => match m4::v4::Packet::read(buf, MAX_INBOUND_PACKET) {
            Ok(p) => Ok(map_v4(p)),
            Err(e @ m4::Error::InsufficientBytes(_)) => Err(short(buf, &e)),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
        // MQTT 5 allows DISCONNECT without a reason code (remaining length 0, "normal
        // disconnection"); rumqttc's decoder refuses that short form.
        Version::V5 if buf.starts_with(&[0xE0, 0x00]) => {
            let _ = buf.split_to(2);
            Ok(Inbound::Disconnect)
        }
        Version::V5 => match m5::v5::Packet::read(buf, Some(MAX_INBOUND_PACKET as u32)) {
            Ok(p) => Ok(map_v5(p)),
            Err(e @ m5::Error::InsufficientBytes(_)) => Err(short(buf, &e)),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
    }
}

fn map_v4(p: m4::v4::Packet) -> Inbound {
    use m4::v4::{ConnectReturnCode, Packet, SubscribeReasonCode};
    match p {
        Packet::ConnAck(c) => Inbound::ConnAck {
            accepted: c.code == ConnectReturnCode::Success,
            code: c.code as u8,
            session_present: c.session_present,
        },
        Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        Packet::Publish(p) => Inbound::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            topic: p.topic.into(),
            payload: p.payload,
        },
        Packet::SubAck(s) => Inbound::SubAck {
            granted: s
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
        },
        Packet::PingResp => Inbound::PingResp,
        Packet::Disconnect => Inbound::Disconnect,
        Packet::Connect(_) => Inbound::Unexpected("CONNECT"),
        Packet::Subscribe(_) => Inbound::Unexpected("SUBSCRIBE"),
        Packet::Unsubscribe(_) => Inbound::Unexpected("UNSUBSCRIBE"),
        Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        Packet::PingReq => Inbound::Unexpected("PINGREQ"),
    }
}

/// The reason code of a refusing PUBACK or PUBREC (MQTT 5 sections 3.4.2.1, 3.5.2.1), None
/// when it accepts. rumqttc has an enum for each, with the same variants.
macro_rules! refusal {
    ($reason:expr, $ty:ty) => {{
        type R = $ty;
        match $reason {
            R::Success | R::NoMatchingSubscribers => None,
            R::UnspecifiedError => Some(0x80),
            R::ImplementationSpecificError => Some(0x83),
            R::NotAuthorized => Some(0x87),
            R::TopicNameInvalid => Some(0x90),
            R::PacketIdentifierInUse => Some(0x91),
            R::QuotaExceeded => Some(0x97),
            R::PayloadFormatInvalid => Some(0x99),
        }
    }};
}

/// The reason code on the wire of an MQTT 5 CONNACK (section 3.2.2.2).
fn v5_connack_code(c: m5::v5::ConnectReturnCode) -> u8 {
    use m5::v5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid | C::BadClientId => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable | C::ServiceUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

fn map_v5(p: m5::v5::Packet) -> Inbound {
    use m5::v5::{ConnectReturnCode, Packet, SubscribeReasonCode};
    match p {
        Packet::ConnAck(c) => Inbound::ConnAck {
            accepted: c.code == ConnectReturnCode::Success,
            code: v5_connack_code(c.code),
            session_present: c.session_present,
        },
        Packet::PubAck(a) => match refusal!(a.reason, m5::v5::PubAckReason) {
            Some(reason) => Inbound::PubRefused {
                pkid: a.pkid,
                reason,
            },
            None => Inbound::PubAck(a.pkid),
        },
        Packet::PubRec(a) => match refusal!(a.reason, m5::v5::PubRecReason) {
            Some(reason) => Inbound::PubRefused {
                pkid: a.pkid,
                reason,
            },
            None => Inbound::PubRec(a.pkid),
        },
        Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        Packet::Publish(p) => Inbound::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            topic: p.topic,
            payload: p.payload,
        },
        Packet::SubAck(s) => Inbound::SubAck {
            granted: s
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
        },
        Packet::PingResp(_) => Inbound::PingResp,
        Packet::Disconnect(_) => Inbound::Disconnect,
        Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        Packet::Connect(..) => Inbound::Unexpected("CONNECT"),
        Packet::Subscribe(_) => Inbound::Unexpected("SUBSCRIBE"),
        Packet::Unsubscribe(_) => Inbound::Unexpected("UNSUBSCRIBE"),
        Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        Packet::PingReq(_) => Inbound::Unexpected("PINGREQ"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::Packet as P4;
    use rumqttc::v5::mqttbytes::v5::Packet as P5;

    fn connect(version: Version) -> BytesMut {
        let mut out = BytesMut::new();
        write_connect(
            &mut out,
            &ConnectOptions {
                version,
                client_id: b"dev-1",
                keep_alive_s: 30,
                clean: false,
                session_expiry_s: Some(3600),
                will: Some(Will {
                    topic: b"s/dev-1",
                    payload: b"{\"online\":false}",
                    qos: 1,
                    retain: true,
                }),
                username: Some(b"user"),
                password: Some(b"secret"),
            },
        );
        out
    }

    #[test]
    fn connect_decodes_with_rumqttc_in_v311() {
        let mut buf = connect(Version::V311);
        match P4::read(&mut buf, 1 << 20).unwrap() {
            P4::Connect(c) => {
                assert_eq!(c.client_id, "dev-1");
                assert_eq!(c.keep_alive, 30);
                assert!(!c.clean_session);
                let w = c.last_will.unwrap();
                assert_eq!(w.topic, "s/dev-1");
                assert!(w.retain);
                assert_eq!(c.login.unwrap().password, "secret");
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn connect_decodes_with_rumqttc_in_v5() {
        let mut buf = connect(Version::V5);
        match P5::read(&mut buf, None).unwrap() {
            P5::Connect(c, will, login) => {
                assert_eq!(c.client_id, "dev-1");
                assert_eq!(c.properties.unwrap().session_expiry_interval, Some(3600));
                assert_eq!(&will.unwrap().topic[..], b"s/dev-1");
                assert_eq!(login.unwrap().username, "user");
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn publish_and_subscribe_decode_in_both_versions() {
        let payload = vec![b'x'; 300]; // a two-byte remaining length
        for version in [Version::V311, Version::V5] {
            let mut buf = BytesMut::new();
            write_publish(&mut buf, version, b"t/dev-1", 1, true, 7, &payload);
            write_publish(&mut buf, version, b"t/dev-1", 0, false, 0, b"{}");
            write_subscribe(&mut buf, version, 1, b"c/dev-1", 1);
            write_ack(&mut buf, PUBREL, 9);
            write_pingreq(&mut buf);
            write_disconnect(&mut buf, version);
            match version {
                Version::V311 => {
                    let P4::Publish(p) = P4::read(&mut buf, 1 << 20).unwrap() else {
                        panic!()
                    };
                    assert_eq!(
                        (p.topic.as_str(), p.pkid, p.retain, p.payload.len()),
                        ("t/dev-1", 7, true, 300)
                    );
                    let P4::Publish(p) = P4::read(&mut buf, 1 << 20).unwrap() else {
                        panic!()
                    };
                    assert_eq!(&p.payload[..], b"{}");
                    let P4::Subscribe(s) = P4::read(&mut buf, 1 << 20).unwrap() else {
                        panic!()
                    };
                    assert_eq!(s.filters[0].path, "c/dev-1");
                    assert!(
                        matches!(P4::read(&mut buf, 1 << 20).unwrap(), P4::PubRel(r) if r.pkid == 9)
                    );
                    assert_eq!(P4::read(&mut buf, 1 << 20).unwrap(), P4::PingReq);
                    assert_eq!(P4::read(&mut buf, 1 << 20).unwrap(), P4::Disconnect);
                }
                Version::V5 => {
                    let P5::Publish(p) = P5::read(&mut buf, None).unwrap() else {
                        panic!()
                    };
                    assert_eq!(
                        (&p.topic[..], p.pkid, p.payload.len()),
                        (&b"t/dev-1"[..], 7, 300)
                    );
                    let P5::Publish(p) = P5::read(&mut buf, None).unwrap() else {
                        panic!()
                    };
                    assert_eq!(&p.payload[..], b"{}");
                    let P5::Subscribe(s) = P5::read(&mut buf, None).unwrap() else {
                        panic!()
                    };
                    assert_eq!(s.filters[0].path, "c/dev-1");
                    assert!(
                        matches!(P5::read(&mut buf, None).unwrap(), P5::PubRel(r) if r.pkid == 9)
                    );
                    assert!(matches!(P5::read(&mut buf, None).unwrap(), P5::PingReq(_)));
                    assert!(matches!(
                        P5::read(&mut buf, None).unwrap(),
                        P5::Disconnect(_)
                    ));
                }
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_frames_ask_for_more_and_garbage_is_malformed() {
        let mut whole = BytesMut::new();
        write_ack(&mut whole, PUBACK, 5);
        let mut part = BytesMut::from(&whole[..2]);
        assert_eq!(
            read_packet(&mut part, Version::V311),
            Err(DecodeError::Incomplete)
        );
        let mut all = whole.clone();
        assert_eq!(read_packet(&mut all, Version::V311), Ok(Inbound::PubAck(5)));
        let mut short_disconnect = BytesMut::from(&[0xE0u8, 0x00, 0xD0, 0x00][..]);
        assert_eq!(
            read_packet(&mut short_disconnect, Version::V5),
            Ok(Inbound::Disconnect),
            "MQTT 5's DISCONNECT without a reason code"
        );
        assert_eq!(
            read_packet(&mut short_disconnect, Version::V5),
            Ok(Inbound::PingResp),
            "and what follows it is read on"
        );
        let mut garbage = BytesMut::from(&[0x00u8, 0x00][..]);
        assert!(matches!(
            read_packet(&mut garbage, Version::V311),
            Err(DecodeError::Malformed(_))
        ));
    }
}
