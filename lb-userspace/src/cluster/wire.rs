//! Wire format of the cluster protocol, shared by the router side in
//! the daemon and the node agent (`lb node`). The tables in `docs/cluster-protocol.md`
//! describe the same layout for people.
//!
//! A message is one UDP datagram:
//!
//! ```text
//!  0        8        16       24      32 bits
//! +--------+--------+--------+--------+
//! |        source IP address          |  word 0
//! |      destination IP address       |  word 1
//! |    priority     |   cluster ID    |  word 2
//! |   packet type   |    function     |  word 3
//! |        router IP address          |  word 4
//! |   management node IP address      |  word 5
//! |   source port   |destination port |  word 6
//! +--------+--------+--------+--------+
//! | fields: type (16) | length (16) | value (length bytes), repeated
//! +-----------------------------------+
//! | HMAC-SHA256 tag (32 bytes) over everything before it
//! +-----------------------------------+
//! ```
//!
//! All integers are big-endian. Header words the protocol marks N/A are zero.

use std::{fmt, net::Ipv4Addr};

use super::frame::{self, Words};
pub use super::frame::{
    ClusterKey, DecodeError, FIELD_HEADER_LEN, HEADER_LEN, MIN_KEY_LEN, TAG_LEN, peek_cluster_id,
};
use crate::domain::Protocol;

/// A header and a tag with no fields: nothing shorter can be a message.
pub const MIN_DATAGRAM: usize = frame::MIN_MESSAGE;
/// Fits an Ethernet MTU with IP and UDP headers, so a message is never fragmented.
pub const MAX_DATAGRAM: usize = 1400;
/// Services one node may offer in one message.
pub const MAX_SERVICES: usize = 32;
/// Longest service name (`[A-Za-z0-9_.-]`).
pub const MAX_SERVICE_NAME: usize = 32;

/// Packet type (header word 3, high half).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PacketType {
    /// Fig 7: a node announces itself, broadcast until a router answers.
    Join = 1,
    /// Fig 8: the router answers a join with its address.
    RouterReply = 2,
    /// Fig 9: the router tells the nodes the router and management node addresses.
    RouterToNodes = 3,
    /// A joined node's periodic report: health, load, capacity.
    Heartbeat = 4,
    /// A node leaves (SIGTERM): it is drained.
    Leave = 5,
}

impl PacketType {
    pub const fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::Join,
            2 => Self::RouterReply,
            3 => Self::RouterToNodes,
            4 => Self::Heartbeat,
            5 => Self::Leave,
            _ => return None,
        })
    }

    /// Sent by cluster nodes (as opposed to the router).
    pub const fn from_node(self) -> bool {
        matches!(self, Self::Join | Self::Heartbeat | Self::Leave)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::RouterReply => "router-reply",
            Self::RouterToNodes => "router-to-nodes",
            Self::Heartbeat => "heartbeat",
            Self::Leave => "leave",
        }
    }
}

/// Function (header word 3, low half): the role the sender speaks in. It must match the
/// packet type, so a node's message can never pass for a router's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Function {
    ClusterNode = 1,
    Router = 2,
}

impl Function {
    pub const fn of(packet_type: PacketType) -> Self {
        if packet_type.from_node() {
            Self::ClusterNode
        } else {
            Self::Router
        }
    }
}

/// Field types.
pub mod field {
    /// u64: per-sender counter, strictly increasing across messages and restarts.
    pub const SEQUENCE: u16 = 0x0001;
    /// u64: sender's wall clock, milliseconds since the Unix epoch.
    pub const TIMESTAMP_MS: u16 = 0x0002;
    /// u64: random id of the sending process, new at every start.
    pub const INSTANCE: u16 = 0x0003;
    /// protocol (8) | health (8) | port (16) | name (1..=32 bytes); repeated.
    pub const SERVICE: u16 = 0x0010;
    /// u32: configured capacity, relative units (> 0).
    pub const CAPACITY: u16 = 0x0020;
    /// u32: load in per-mille of the node's capacity (1000 = fully loaded; may exceed).
    pub const LOAD_PERMILLE: u16 = 0x0021;
    /// u32: established connections to the offered services' ports.
    pub const CONNECTIONS: u16 = 0x0022;
    /// u64: the node instance a router reply answers.
    pub const ACK_INSTANCE: u16 = 0x0030;
    /// u32: heartbeat interval the router expects, milliseconds.
    pub const HEARTBEAT_MS: u16 = 0x0031;
}

/// A service's health as its node's own check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Health {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::Unknown,
            1 => Self::Up,
            2 => Self::Down,
            _ => return None,
        })
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        })
    }
}

/// One service a node offers: `name` matches a service name of the balancer's config.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceOffer {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub health: Health,
}

/// The seven header words, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub priority: u16,
    pub cluster_id: u16,
    pub packet_type: PacketType,
    pub function: Function,
    pub router: Ipv4Addr,
    pub management: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
}

/// The typed fields. Which ones a packet type requires is checked by [`decode`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub sequence: u64,
    pub timestamp_ms: u64,
    pub instance: u64,
    pub services: Vec<ServiceOffer>,
    pub capacity: Option<u32>,
    pub load_permille: Option<u32>,
    pub connections: Option<u32>,
    pub ack_instance: Option<u64>,
    pub heartbeat_ms: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub fields: Fields,
}

/// Packet type of a datagram, before any authentication (used to budget joins cheaply).
pub fn peek_packet_type(datagram: &[u8]) -> Option<PacketType> {
    datagram
        .get(12..14)
        .and_then(|b| PacketType::from_u16(u16::from_be_bytes([b[0], b[1]])))
}

/// Encodes `message` and appends its tag. Fails if the result would exceed
/// [`MAX_DATAGRAM`] or break a limit the decoder enforces.
pub fn encode(message: &Message, key: &ClusterKey) -> Result<Vec<u8>, String> {
    let h = &message.header;
    if h.function != Function::of(h.packet_type) {
        return Err(format!(
            "function {:?} does not match packet type {}",
            h.function,
            h.packet_type.name()
        ));
    }
    let f = &message.fields;
    if f.services.len() > MAX_SERVICES {
        return Err(format!(
            "{} services, at most {MAX_SERVICES}",
            f.services.len()
        ));
    }
    let mut out = Vec::with_capacity(256);
    Words {
        source: h.source,
        destination: h.destination,
        priority: h.priority,
        cluster_id: h.cluster_id,
        packet_type: h.packet_type as u16,
        function: h.function as u16,
        router: h.router,
        management: h.management,
        source_port: h.source_port,
        destination_port: h.destination_port,
    }
    .put(&mut out);

    put(&mut out, field::SEQUENCE, &f.sequence.to_be_bytes());
    put(&mut out, field::TIMESTAMP_MS, &f.timestamp_ms.to_be_bytes());
    put(&mut out, field::INSTANCE, &f.instance.to_be_bytes());
    for service in &f.services {
        check_service_name(&service.name)?;
        let mut value = Vec::with_capacity(4 + service.name.len());
        value.push(service.protocol.number());
        value.push(service.health as u8);
        value.extend_from_slice(&service.port.to_be_bytes());
        value.extend_from_slice(service.name.as_bytes());
        put(&mut out, field::SERVICE, &value);
    }
    if let Some(v) = f.capacity {
        put(&mut out, field::CAPACITY, &v.to_be_bytes());
    }
    if let Some(v) = f.load_permille {
        put(&mut out, field::LOAD_PERMILLE, &v.to_be_bytes());
    }
    if let Some(v) = f.connections {
        put(&mut out, field::CONNECTIONS, &v.to_be_bytes());
    }
    if let Some(v) = f.ack_instance {
        put(&mut out, field::ACK_INSTANCE, &v.to_be_bytes());
    }
    if let Some(v) = f.heartbeat_ms {
        put(&mut out, field::HEARTBEAT_MS, &v.to_be_bytes());
    }
    check_required(h.packet_type, f).map_err(|e| match e {
        DecodeError::Malformed(why) => why,
        other => other.to_string(),
    })?;

    frame::sign(&mut out, key);
    if out.len() > MAX_DATAGRAM {
        return Err(format!(
            "message is {} bytes, at most {MAX_DATAGRAM}",
            out.len()
        ));
    }
    Ok(out)
}

fn put(out: &mut Vec<u8>, field_type: u16, value: &[u8]) {
    frame::put_field(out, field_type, value);
}

/// Checks size, cluster ID and tag, then parses. Never panics, whatever the input.
pub fn decode(datagram: &[u8], key: &ClusterKey, cluster_id: u16) -> Result<Message, DecodeError> {
    let body = frame::open(datagram, MAX_DATAGRAM, key, cluster_id)?;
    let malformed = |why: String| DecodeError::Malformed(why);
    let words = Words::read(body);
    let packet_type = PacketType::from_u16(words.packet_type)
        .ok_or_else(|| malformed(format!("unknown packet type {}", words.packet_type)))?;
    let function = Function::of(packet_type);
    if words.function != function as u16 {
        return Err(malformed(format!(
            "function {} with packet type {}",
            words.function,
            packet_type.name()
        )));
    }
    let header = Header {
        source: words.source,
        destination: words.destination,
        priority: words.priority,
        cluster_id: words.cluster_id,
        packet_type,
        function,
        router: words.router,
        management: words.management,
        source_port: words.source_port,
        destination_port: words.destination_port,
    };

    let mut fields = Fields::default();
    let mut seen: Vec<u16> = Vec::new();
    for field in frame::fields(&body[HEADER_LEN..]) {
        let (field_type, value) = field.map_err(malformed)?;
        if field_type != field::SERVICE {
            if seen.contains(&field_type) {
                return Err(malformed(format!("field {field_type:#06x} appears twice")));
            }
            seen.push(field_type);
        }
        let u32_value = || frame::u32_value(field_type, value).map_err(malformed);
        let u64_value = || frame::u64_value(field_type, value).map_err(malformed);
        match field_type {
            field::SEQUENCE => fields.sequence = u64_value()?,
            field::TIMESTAMP_MS => fields.timestamp_ms = u64_value()?,
            field::INSTANCE => fields.instance = u64_value()?,
            field::SERVICE => {
                if fields.services.len() == MAX_SERVICES {
                    return Err(malformed(format!("more than {MAX_SERVICES} services")));
                }
                let service = decode_service(value).map_err(malformed)?;
                if fields.services.iter().any(|s| s.name == service.name) {
                    return Err(malformed(format!(
                        "service {:?} listed twice",
                        service.name
                    )));
                }
                fields.services.push(service);
            }
            field::CAPACITY => fields.capacity = Some(u32_value()?),
            field::LOAD_PERMILLE => fields.load_permille = Some(u32_value()?),
            field::CONNECTIONS => fields.connections = Some(u32_value()?),
            field::ACK_INSTANCE => fields.ack_instance = Some(u64_value()?),
            field::HEARTBEAT_MS => fields.heartbeat_ms = Some(u32_value()?),
            // Unknown fields are skipped, so a newer sender can add some.
            _ => {}
        }
    }
    for required in [field::SEQUENCE, field::TIMESTAMP_MS, field::INSTANCE] {
        if !seen.contains(&required) {
            return Err(malformed(format!("required field {required:#06x} missing")));
        }
    }
    check_required(packet_type, &fields)?;
    Ok(Message { header, fields })
}

fn decode_service(value: &[u8]) -> Result<ServiceOffer, String> {
    if value.len() < 5 {
        return Err(format!("service field of {} bytes", value.len()));
    }
    let protocol = match value[0] {
        lb_common::IPPROTO_TCP => Protocol::Tcp,
        lb_common::IPPROTO_UDP => Protocol::Udp,
        other => return Err(format!("service protocol {other}")),
    };
    let health = Health::from_u8(value[1]).ok_or_else(|| format!("service health {}", value[1]))?;
    let port = u16::from_be_bytes([value[2], value[3]]);
    let name = std::str::from_utf8(&value[4..])
        .map_err(|_| "service name is not UTF-8".to_string())?
        .to_string();
    check_service_name(&name)?;
    if port == 0 {
        return Err(format!("service {name:?} on port 0"));
    }
    Ok(ServiceOffer {
        name,
        protocol,
        port,
        health,
    })
}

/// Service names are what config service names may be; bounded so a field stays small.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(format!(
            "service name {name:?} must be 1 to {MAX_SERVICE_NAME} bytes"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(format!(
            "service name {name:?} may hold only letters, digits, '_', '.', '-'"
        ));
    }
    Ok(())
}

/// What each packet type must carry.
fn check_required(packet_type: PacketType, f: &Fields) -> Result<(), DecodeError> {
    let missing = |what: &str| {
        Err(DecodeError::Malformed(format!(
            "{} without {what}",
            packet_type.name()
        )))
    };
    match packet_type {
        PacketType::Join | PacketType::Heartbeat => {
            if f.services.is_empty() {
                return missing("services");
            }
            match f.capacity {
                None => return missing("capacity"),
                Some(0) => return missing("a capacity above 0"),
                Some(_) => {}
            }
            if f.load_permille.is_none() {
                return missing("load");
            }
        }
        PacketType::RouterReply => {
            if f.ack_instance.is_none() {
                return missing("the instance it answers");
            }
        }
        PacketType::RouterToNodes | PacketType::Leave => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
