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

use std::{fmt, net::Ipv4Addr, path::Path};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::Protocol;

/// Seven 32-bit words.
pub const HEADER_LEN: usize = 28;
/// HMAC-SHA256 output.
pub const TAG_LEN: usize = 32;
/// A header and a tag with no fields: nothing shorter can be a message.
pub const MIN_DATAGRAM: usize = HEADER_LEN + TAG_LEN;
/// Fits an Ethernet MTU with IP and UDP headers, so a message is never fragmented.
pub const MAX_DATAGRAM: usize = 1400;
/// Field type + field length.
pub const FIELD_HEADER_LEN: usize = 4;
/// Services one node may offer in one message.
pub const MAX_SERVICES: usize = 32;
/// Longest service name (`[A-Za-z0-9_.-]`).
pub const MAX_SERVICE_NAME: usize = 32;
/// Shortest accepted cluster key.
pub const MIN_KEY_LEN: usize = 16;

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

/// Why a datagram was not accepted. Each has its own router counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header and a tag.
    Truncated(usize),
    /// Longer than [`MAX_DATAGRAM`].
    Oversized(usize),
    /// Cluster ID of another cluster (checked before the tag, so it costs no HMAC).
    WrongCluster(u16),
    /// The tag does not match: wrong key or altered bytes.
    BadTag,
    /// Authentic but not well-formed: the text says what is wrong.
    Malformed(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(len) => write!(
                f,
                "truncated datagram ({len} bytes, need at least {MIN_DATAGRAM})"
            ),
            Self::Oversized(len) => write!(
                f,
                "oversized datagram ({len} bytes, at most {MAX_DATAGRAM})"
            ),
            Self::WrongCluster(id) => write!(f, "message for cluster {id}"),
            Self::BadTag => f.write_str("authentication tag does not match (wrong key?)"),
            Self::Malformed(why) => write!(f, "malformed message: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The shared secret of one cluster.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "cluster key is {} bytes, need at least {MIN_KEY_LEN}",
                bytes.len()
            ));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The file's bytes without trailing whitespace (so `echo secret > F` works).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::new(&bytes[..end]).map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))
    }

    #[expect(
        clippy::expect_used,
        reason = "HMAC accepts keys of any length; new_from_slice cannot fail for it"
    )]
    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// Cluster ID of a datagram long enough to hold a header, before any authentication.
pub fn peek_cluster_id(datagram: &[u8]) -> Option<u16> {
    datagram
        .get(10..12)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
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
    out.extend_from_slice(&h.source.octets());
    out.extend_from_slice(&h.destination.octets());
    out.extend_from_slice(&h.priority.to_be_bytes());
    out.extend_from_slice(&h.cluster_id.to_be_bytes());
    out.extend_from_slice(&(h.packet_type as u16).to_be_bytes());
    out.extend_from_slice(&(h.function as u16).to_be_bytes());
    out.extend_from_slice(&h.router.octets());
    out.extend_from_slice(&h.management.octets());
    out.extend_from_slice(&h.source_port.to_be_bytes());
    out.extend_from_slice(&h.destination_port.to_be_bytes());

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

    let mut mac = key.mac();
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    if out.len() > MAX_DATAGRAM {
        return Err(format!(
            "message is {} bytes, at most {MAX_DATAGRAM}",
            out.len()
        ));
    }
    Ok(out)
}

fn put(out: &mut Vec<u8>, field_type: u16, value: &[u8]) {
    out.extend_from_slice(&field_type.to_be_bytes());
    // Values are at most a service entry (36 bytes): the length always fits.
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// Checks size, cluster ID and tag, then parses. Never panics, whatever the input.
pub fn decode(datagram: &[u8], key: &ClusterKey, cluster_id: u16) -> Result<Message, DecodeError> {
    if datagram.len() < MIN_DATAGRAM {
        return Err(DecodeError::Truncated(datagram.len()));
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized(datagram.len()));
    }
    let got_cluster = peek_cluster_id(datagram).unwrap_or_default();
    if got_cluster != cluster_id {
        return Err(DecodeError::WrongCluster(got_cluster));
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    let mut mac = key.mac();
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(tag).map_err(|_| DecodeError::BadTag)?;

    let malformed = |why: String| DecodeError::Malformed(why);
    let word = |i: usize| [body[i], body[i + 1], body[i + 2], body[i + 3]];
    let half = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    let type_value = half(12);
    let packet_type = PacketType::from_u16(type_value)
        .ok_or_else(|| malformed(format!("unknown packet type {type_value}")))?;
    let function_value = half(14);
    let function = Function::of(packet_type);
    if function_value != function as u16 {
        return Err(malformed(format!(
            "function {function_value} with packet type {}",
            packet_type.name()
        )));
    }
    let header = Header {
        source: Ipv4Addr::from(word(0)),
        destination: Ipv4Addr::from(word(4)),
        priority: half(8),
        cluster_id: half(10),
        packet_type,
        function,
        router: Ipv4Addr::from(word(16)),
        management: Ipv4Addr::from(word(20)),
        source_port: half(24),
        destination_port: half(26),
    };

    let mut fields = Fields::default();
    let mut seen: Vec<u16> = Vec::new();
    let mut rest = &body[HEADER_LEN..];
    while !rest.is_empty() {
        if rest.len() < FIELD_HEADER_LEN {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        let field_type = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(value) = rest.get(FIELD_HEADER_LEN..FIELD_HEADER_LEN + len) else {
            return Err(malformed(format!(
                "field {field_type:#06x} of {len} bytes runs past the end"
            )));
        };
        rest = &rest[FIELD_HEADER_LEN + len..];
        if field_type != field::SERVICE {
            if seen.contains(&field_type) {
                return Err(malformed(format!("field {field_type:#06x} appears twice")));
            }
            seen.push(field_type);
        }
        let u32_value = || -> Result<u32, DecodeError> {
            <[u8; 4]>::try_from(value)
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    malformed(format!("field {field_type:#06x} must be 4 bytes, is {len}"))
                })
        };
        let u64_value = || -> Result<u64, DecodeError> {
            <[u8; 8]>::try_from(value)
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    malformed(format!("field {field_type:#06x} must be 8 bytes, is {len}"))
                })
        };
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
