//! The message frame the node protocol (`wire.rs`, docs/cluster-protocol.md) and the
//! balancers' peer protocol (`peers/wire.rs`, docs/scale-out.md "Peer protocol") share:
//! seven 32-bit header words, typed fields, and an HMAC-SHA256 tag over everything
//! before it. Each protocol gives the words and fields their meaning; this module only
//! lays them out, signs and checks.

use std::{fmt, net::Ipv4Addr, path::Path};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Seven 32-bit words.
pub const HEADER_LEN: usize = 28;
/// HMAC-SHA256 output.
pub const TAG_LEN: usize = 32;
/// A header and a tag with no fields: nothing shorter can be a message.
pub const MIN_MESSAGE: usize = HEADER_LEN + TAG_LEN;
/// Field type + field length.
pub const FIELD_HEADER_LEN: usize = 4;
/// Shortest accepted key.
pub const MIN_KEY_LEN: usize = 16;

/// The seven header words, with packet type and function as numbers (each protocol
/// checks them against its own types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Words {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub priority: u16,
    pub cluster_id: u16,
    pub packet_type: u16,
    pub function: u16,
    pub router: Ipv4Addr,
    pub management: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
}

impl Words {
    pub fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.source.octets());
        out.extend_from_slice(&self.destination.octets());
        out.extend_from_slice(&self.priority.to_be_bytes());
        out.extend_from_slice(&self.cluster_id.to_be_bytes());
        out.extend_from_slice(&self.packet_type.to_be_bytes());
        out.extend_from_slice(&self.function.to_be_bytes());
        out.extend_from_slice(&self.router.octets());
        out.extend_from_slice(&self.management.octets());
        out.extend_from_slice(&self.source_port.to_be_bytes());
        out.extend_from_slice(&self.destination_port.to_be_bytes());
    }

    /// The words at the start of `body`, which holds at least [`HEADER_LEN`] bytes.
    pub fn read(body: &[u8]) -> Words {
        let word = |i: usize| Ipv4Addr::new(body[i], body[i + 1], body[i + 2], body[i + 3]);
        let half = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
        Words {
            source: word(0),
            destination: word(4),
            priority: half(8),
            cluster_id: half(10),
            packet_type: half(12),
            function: half(14),
            router: word(16),
            management: word(20),
            source_port: half(24),
            destination_port: half(26),
        }
    }
}

/// Appends one field. `value` is at most `u16::MAX` bytes (every field of both
/// protocols is far smaller).
pub fn put_field(out: &mut Vec<u8>, field_type: u16, value: &[u8]) {
    out.extend_from_slice(&field_type.to_be_bytes());
    out.extend_from_slice(&(value.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The fields after the header, in order: `(type, value)`, or what is wrong with the
/// bytes (then nothing more follows).
pub fn fields(mut rest: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < FIELD_HEADER_LEN {
            let error = format!("{} trailing bytes", rest.len());
            rest = &[];
            return Some(Err(error));
        }
        let field_type = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(value) = rest.get(FIELD_HEADER_LEN..FIELD_HEADER_LEN + len) else {
            rest = &[];
            return Some(Err(format!(
                "field {field_type:#06x} of {len} bytes runs past the end"
            )));
        };
        rest = &rest[FIELD_HEADER_LEN + len..];
        Some(Ok((field_type, value)))
    })
}

/// A field's value as a big-endian u32.
pub fn u32_value(field_type: u16, value: &[u8]) -> Result<u32, String> {
    <[u8; 4]>::try_from(value)
        .map(u32::from_be_bytes)
        .map_err(|_| {
            format!(
                "field {field_type:#06x} must be 4 bytes, is {}",
                value.len()
            )
        })
}

/// A field's value as a big-endian u64.
pub fn u64_value(field_type: u16, value: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| {
            format!(
                "field {field_type:#06x} must be 8 bytes, is {}",
                value.len()
            )
        })
}

/// Why bytes are not an acceptable message, in either protocol. Each has its own counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header and a tag.
    Truncated(usize),
    /// Longer than the protocol's bound (`max`).
    Oversized { len: usize, max: usize },
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
                "truncated message ({len} bytes, need at least {MIN_MESSAGE})"
            ),
            Self::Oversized { len, max } => {
                write!(f, "oversized message ({len} bytes, at most {max})")
            }
            Self::WrongCluster(id) => write!(f, "message for cluster {id}"),
            Self::BadTag => f.write_str("authentication tag does not match (wrong key?)"),
            Self::Malformed(why) => write!(f, "malformed message: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Cluster ID of a message long enough to hold a header, before any authentication.
pub fn peek_cluster_id(message: &[u8]) -> Option<u16> {
    message
        .get(10..12)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Checks size, cluster ID and tag (in that order, cheapest first) and returns the
/// authenticated bytes before the tag (header and fields).
pub fn open<'a>(
    message: &'a [u8],
    max_len: usize,
    key: &ClusterKey,
    cluster_id: u16,
) -> Result<&'a [u8], DecodeError> {
    if message.len() < MIN_MESSAGE {
        return Err(DecodeError::Truncated(message.len()));
    }
    if message.len() > max_len {
        return Err(DecodeError::Oversized {
            len: message.len(),
            max: max_len,
        });
    }
    let got = peek_cluster_id(message).unwrap_or_default();
    if got != cluster_id {
        return Err(DecodeError::WrongCluster(got));
    }
    let (body, tag) = message.split_at(message.len() - TAG_LEN);
    let mut mac = key.mac();
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(tag).map_err(|_| DecodeError::BadTag)?;
    Ok(body)
}

/// Appends the tag over everything in `out`.
pub fn sign(out: &mut Vec<u8>, key: &ClusterKey) {
    let mut mac = key.mac();
    mac.update(out);
    out.extend_from_slice(&mac.finalize().into_bytes());
}

/// The shared secret of one cluster.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// A key file's bytes without trailing whitespace (so `echo secret > F` works), refused
/// if shorter than [`MIN_KEY_LEN`].
pub fn key_bytes(file: &[u8]) -> Result<&[u8], String> {
    let end = file
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let key = &file[..end];
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "cluster key is {} bytes, need at least {MIN_KEY_LEN}",
            key.len()
        ));
    }
    Ok(key)
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

    /// The key in the file at `path` ([`key_bytes`]).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?;
        key_bytes(&bytes)
            .and_then(Self::new)
            .map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))
    }

    #[expect(
        clippy::expect_used,
        reason = "HMAC accepts keys of any length; new_from_slice cannot fail for it"
    )]
    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}
