//! Wire format of the peer protocol between balancer instances (docs/scale-out.md,
//! "Peer protocol"): the node protocol's frame (`cluster::frame`: seven header words,
//! typed fields, HMAC-SHA256) with packet types and a function of its own, sent over
//! TCP, each message preceded by its length (u32, big-endian).

use std::net::Ipv4Addr;

pub use crate::cluster::frame::DecodeError;
use crate::cluster::frame::{self, ClusterKey, HEADER_LEN, Words};
use crate::cluster::wire::field as common_field;

use super::moves::{MoveMessage, Refusal};
use super::record::{ANNOUNCEMENT_BYTES, Announcement, RecordError};

/// Length prefix of every message on a peer connection.
pub const LENGTH_PREFIX: usize = 4;
/// Longest message (without its length prefix); a longer length closes the connection.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Shortest message: a header and a tag.
pub const MIN_MESSAGE: usize = frame::MIN_MESSAGE;
/// Announcements one message may carry: what fits [`MAX_MESSAGE`] with the other fields.
pub const MAX_ANNOUNCEMENTS: usize =
    (MAX_MESSAGE - MIN_MESSAGE - 3 * (frame::FIELD_HEADER_LEN + 8))
        / (frame::FIELD_HEADER_LEN + ANNOUNCEMENT_BYTES);
/// SNAT addresses one hello may list.
pub const MAX_SNAT: usize = 1024;
/// Function (header word 3, low half) of every peer message: a balancer peer. The node
/// protocol uses 1 (cluster node) and 2 (router).
pub const FUNCTION_PEER: u16 = 3;

/// Packet type (header word 3, high half); numbered after the node protocol's 1-5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PacketType {
    /// First on every connection: who the sender is, its state, its SNAT addresses.
    Hello = 16,
    /// A batch of flow announcements.
    Announcements = 17,
    /// The snapshot that follows the hello is complete.
    SyncDone = 18,
    /// Sent every `dead_after / 4`, with the sender's state and its owned-VIP claims.
    Heartbeat = 19,
    /// One step of a VIP move (docs/scale-out.md, "Moving a VIP").
    Move = 20,
}

impl PacketType {
    pub const fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            16 => Self::Hello,
            17 => Self::Announcements,
            18 => Self::SyncDone,
            19 => Self::Heartbeat,
            20 => Self::Move,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Announcements => "announcements",
            Self::SyncDone => "sync-done",
            Self::Heartbeat => "heartbeat",
            Self::Move => "move",
        }
    }
}

/// An instance's own state, as its peers hear it and `lb peers` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum NodeState {
    /// Starting: waiting for its peers' snapshots (docs/scale-out.md, "Joining").
    Transition = 1,
    Ready = 2,
    /// Withdrawing its routes before it stops.
    Draining = 3,
}

impl NodeState {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Transition,
            2 => Self::Ready,
            3 => Self::Draining,
            _ => return None,
        })
    }
}

/// Field types: sequence, timestamp and instance are the node protocol's.
pub mod field {
    pub use crate::cluster::wire::field::{INSTANCE, SEQUENCE, TIMESTAMP_MS};
    /// u8: the sender's [`super::NodeState`].
    pub const STATE: u16 = 0x0040;
    /// IPv4 address (4 bytes): one SNAT address the sender owns; repeated.
    pub const SNAT: u16 = 0x0041;
    /// One announcement (`ANNOUNCEMENT_BYTES`); repeated.
    pub const ANNOUNCEMENT: u16 = 0x0042;
    /// A move step: VIP (4 bytes), epoch (u64), step (u8), refusal reason (u8, 0: none).
    pub const MOVE: u16 = 0x0043;
    /// An owned VIP the sender announces as primary: VIP (4 bytes), epoch (u64); repeated.
    pub const CLAIM: u16 = 0x0044;
}

/// Claims one heartbeat may carry.
pub const MAX_CLAIMS: usize = 256;

/// A move step on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveStep {
    pub vip: Ipv4Addr,
    pub epoch: u64,
    pub message: MoveMessage,
}

impl MoveStep {
    const BYTES: usize = 4 + 8 + 2;

    fn encode(&self) -> [u8; Self::BYTES] {
        let (kind, reason) = match self.message {
            MoveMessage::Offer => (1, 0),
            MoveMessage::Accept => (2, 0),
            MoveMessage::Refuse(why) => (3, why.to_wire()),
            MoveMessage::StreamDone => (4, 0),
            MoveMessage::Installed => (5, 0),
            MoveMessage::Released => (6, 0),
            MoveMessage::Taken => (7, 0),
            MoveMessage::Abort => (8, 0),
        };
        let mut out = [0u8; Self::BYTES];
        out[..4].copy_from_slice(&self.vip.octets());
        out[4..12].copy_from_slice(&self.epoch.to_be_bytes());
        out[12] = kind;
        out[13] = reason;
        out
    }

    fn decode(value: &[u8]) -> Result<MoveStep, String> {
        let bytes = <[u8; Self::BYTES]>::try_from(value)
            .map_err(|_| format!("move field of {} bytes", value.len()))?;
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&bytes[4..12]);
        let message = match (bytes[12], bytes[13]) {
            (1, 0) => MoveMessage::Offer,
            (2, 0) => MoveMessage::Accept,
            (3, raw) => MoveMessage::Refuse(
                Refusal::from_wire(raw).ok_or_else(|| format!("refusal reason {raw}"))?,
            ),
            (4, 0) => MoveMessage::StreamDone,
            (5, 0) => MoveMessage::Installed,
            (6, 0) => MoveMessage::Released,
            (7, 0) => MoveMessage::Taken,
            (8, 0) => MoveMessage::Abort,
            (kind, reason) => return Err(format!("move step {kind} (reason {reason})")),
        };
        Ok(MoveStep {
            vip: Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]),
            epoch: u64::from_be_bytes(epoch),
            message,
        })
    }
}

/// The header of a peer message. Words the peer protocol does not use (priority,
/// router, management) are zero; the ports word carries node ids, since the TCP header
/// carries the ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's `peers.listen` address (word 0).
    pub source: Ipv4Addr,
    /// The receiver's configured address (word 1).
    pub destination: Ipv4Addr,
    pub cluster_id: u16,
    pub packet_type: PacketType,
    /// Sender's node id (word 6, high half).
    pub from_node: u16,
    /// Receiver's node id (word 6, low half).
    pub to_node: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub sequence: u64,
    pub timestamp_ms: u64,
    pub instance: u64,
    /// Hello and heartbeat.
    pub state: Option<NodeState>,
    /// Hello: the SNAT addresses the sender owns.
    pub snat: Vec<Ipv4Addr>,
    /// Announcements: at least one.
    pub announcements: Vec<Announcement>,
    /// Move: its step.
    pub move_step: Option<MoveStep>,
    /// Hello and heartbeat: the owned VIPs the sender announces as primary, with epochs.
    pub claims: Vec<(Ipv4Addr, u64)>,
}

/// Encodes `message` with its tag, without the length prefix ([`framed`] adds it).
pub fn encode(message: &Message, key: &ClusterKey) -> Result<Vec<u8>, String> {
    let h = &message.header;
    if message.announcements.len() > MAX_ANNOUNCEMENTS {
        return Err(format!(
            "{} announcements, at most {MAX_ANNOUNCEMENTS}",
            message.announcements.len()
        ));
    }
    if message.claims.len() > MAX_CLAIMS {
        return Err(format!(
            "{} claims, at most {MAX_CLAIMS}",
            message.claims.len()
        ));
    }
    if message.snat.len() > MAX_SNAT {
        return Err(format!(
            "{} SNAT addresses, at most {MAX_SNAT}",
            message.snat.len()
        ));
    }
    check_required(h.packet_type, message).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(
        MIN_MESSAGE + 64 + message.announcements.len() * (4 + ANNOUNCEMENT_BYTES),
    );
    Words {
        source: h.source,
        destination: h.destination,
        priority: 0,
        cluster_id: h.cluster_id,
        packet_type: h.packet_type as u16,
        function: FUNCTION_PEER,
        router: Ipv4Addr::UNSPECIFIED,
        management: Ipv4Addr::UNSPECIFIED,
        source_port: h.from_node,
        destination_port: h.to_node,
    }
    .put(&mut out);
    frame::put_field(&mut out, field::SEQUENCE, &message.sequence.to_be_bytes());
    frame::put_field(
        &mut out,
        field::TIMESTAMP_MS,
        &message.timestamp_ms.to_be_bytes(),
    );
    frame::put_field(&mut out, field::INSTANCE, &message.instance.to_be_bytes());
    if let Some(state) = message.state {
        frame::put_field(&mut out, field::STATE, &[state as u8]);
    }
    for ip in &message.snat {
        frame::put_field(&mut out, field::SNAT, &ip.octets());
    }
    if let Some(step) = &message.move_step {
        frame::put_field(&mut out, field::MOVE, &step.encode());
    }
    for (vip, epoch) in &message.claims {
        let mut claim = [0u8; 12];
        claim[..4].copy_from_slice(&vip.octets());
        claim[4..].copy_from_slice(&epoch.to_be_bytes());
        frame::put_field(&mut out, field::CLAIM, &claim);
    }
    let mut record = Vec::with_capacity(ANNOUNCEMENT_BYTES);
    for announcement in &message.announcements {
        record.clear();
        announcement.encode(&mut record);
        frame::put_field(&mut out, field::ANNOUNCEMENT, &record);
    }
    frame::sign(&mut out, key);
    if out.len() > MAX_MESSAGE {
        return Err(format!(
            "message is {} bytes, at most {MAX_MESSAGE}",
            out.len()
        ));
    }
    Ok(out)
}

/// `message` (as [`encode`] made it) behind its length prefix, as it goes on the wire.
pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LENGTH_PREFIX + message.len());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Checks a length prefix before the message is read: a length out of bounds closes
/// the connection (the stream cannot be resynchronised).
pub fn check_length(length: u32) -> Result<usize, DecodeError> {
    let length = length as usize;
    if length < MIN_MESSAGE {
        return Err(DecodeError::Truncated(length));
    }
    if length > MAX_MESSAGE {
        return Err(DecodeError::Oversized {
            len: length,
            max: MAX_MESSAGE,
        });
    }
    Ok(length)
}

/// Checks size, cluster ID and tag, then parses. Never panics, whatever the input.
pub fn decode(bytes: &[u8], key: &ClusterKey, cluster_id: u16) -> Result<Message, DecodeError> {
    let body = frame::open(bytes, MAX_MESSAGE, key, cluster_id)?;
    let malformed = DecodeError::Malformed;
    let words = Words::read(body);
    let packet_type = PacketType::from_u16(words.packet_type)
        .ok_or_else(|| malformed(format!("unknown packet type {}", words.packet_type)))?;
    if words.function != FUNCTION_PEER {
        return Err(malformed(format!(
            "function {} with packet type {}",
            words.function,
            packet_type.name()
        )));
    }
    // Node id 0 is no instance's (the config refuses it).
    if words.source_port == 0 {
        return Err(malformed("sender node id 0".into()));
    }
    let header = Header {
        source: words.source,
        destination: words.destination,
        cluster_id: words.cluster_id,
        packet_type,
        from_node: words.source_port,
        to_node: words.destination_port,
    };
    let mut message = Message {
        header,
        sequence: 0,
        timestamp_ms: 0,
        instance: 0,
        state: None,
        snat: Vec::new(),
        announcements: Vec::new(),
        move_step: None,
        claims: Vec::new(),
    };
    let mut seen: Vec<u16> = Vec::new();
    for item in frame::fields(&body[HEADER_LEN..]) {
        let (field_type, value) = item.map_err(malformed)?;
        let repeated = matches!(field_type, field::SNAT | field::ANNOUNCEMENT | field::CLAIM);
        if !repeated {
            if seen.contains(&field_type) {
                return Err(malformed(format!("field {field_type:#06x} appears twice")));
            }
            seen.push(field_type);
        }
        match field_type {
            common_field::SEQUENCE => {
                message.sequence = frame::u64_value(field_type, value).map_err(malformed)?;
            }
            common_field::TIMESTAMP_MS => {
                message.timestamp_ms = frame::u64_value(field_type, value).map_err(malformed)?;
            }
            common_field::INSTANCE => {
                message.instance = frame::u64_value(field_type, value).map_err(malformed)?;
            }
            field::STATE => {
                let &[raw] = value else {
                    return Err(malformed(format!("state field of {} bytes", value.len())));
                };
                message.state =
                    Some(NodeState::from_u8(raw).ok_or_else(|| malformed(format!("state {raw}")))?);
            }
            field::SNAT => {
                if message.snat.len() == MAX_SNAT {
                    return Err(malformed(format!("more than {MAX_SNAT} SNAT addresses")));
                }
                let octets = <[u8; 4]>::try_from(value)
                    .map_err(|_| malformed(format!("SNAT field of {} bytes", value.len())))?;
                message.snat.push(Ipv4Addr::from(octets));
            }
            field::ANNOUNCEMENT => {
                if message.announcements.len() == MAX_ANNOUNCEMENTS {
                    return Err(malformed(format!(
                        "more than {MAX_ANNOUNCEMENTS} announcements"
                    )));
                }
                let announcement = Announcement::decode(value)
                    .map_err(|e: RecordError| malformed(e.to_string()))?;
                message.announcements.push(announcement);
            }
            field::MOVE => {
                message.move_step = Some(MoveStep::decode(value).map_err(malformed)?);
            }
            field::CLAIM => {
                if message.claims.len() == MAX_CLAIMS {
                    return Err(malformed(format!("more than {MAX_CLAIMS} claims")));
                }
                let bytes = <[u8; 12]>::try_from(value)
                    .map_err(|_| malformed(format!("claim field of {} bytes", value.len())))?;
                let mut epoch = [0u8; 8];
                epoch.copy_from_slice(&bytes[4..]);
                message.claims.push((
                    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]),
                    u64::from_be_bytes(epoch),
                ));
            }
            // Unknown fields are skipped, so a newer sender can add some.
            _ => {}
        }
    }
    for required in [field::SEQUENCE, field::TIMESTAMP_MS, field::INSTANCE] {
        if !seen.contains(&required) {
            return Err(malformed(format!("required field {required:#06x} missing")));
        }
    }
    check_required(packet_type, &message)?;
    Ok(message)
}

/// What each packet type must carry, and may not.
fn check_required(packet_type: PacketType, m: &Message) -> Result<(), DecodeError> {
    let wrong = |what: &str| {
        Err(DecodeError::Malformed(format!(
            "{} {what}",
            packet_type.name()
        )))
    };
    let has_state = m.state.is_some();
    match packet_type {
        PacketType::Hello | PacketType::Heartbeat if !has_state => wrong("without a state"),
        PacketType::Announcements if m.announcements.is_empty() => wrong("without announcements"),
        PacketType::Heartbeat | PacketType::Announcements | PacketType::SyncDone
            if !m.snat.is_empty() =>
        {
            wrong("with SNAT addresses")
        }
        PacketType::Hello | PacketType::Heartbeat | PacketType::SyncDone
            if !m.announcements.is_empty() =>
        {
            wrong("with announcements")
        }
        PacketType::Move if m.move_step.is_none() => wrong("without its step"),
        PacketType::Hello
        | PacketType::Heartbeat
        | PacketType::Announcements
        | PacketType::SyncDone
            if m.move_step.is_some() =>
        {
            wrong("with a move step")
        }
        PacketType::Announcements | PacketType::SyncDone | PacketType::Move
            if !m.claims.is_empty() =>
        {
            wrong("with claims")
        }
        PacketType::Move if !m.snat.is_empty() || !m.announcements.is_empty() || has_state => {
            wrong("with other fields")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
