//! Flow records: a connection as the cluster knows it, independent of any instance's
//! table ids, built from and into the two `FLOWS` entries (docs/scale-out.md, "Flow
//! records").

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{FLOW_DIR_CLIENT_TO_SERVER, FlowEntry, FlowKey};

/// One connection, by addresses. The forward key (client → VIP) identifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Node id of the instance that created the flow.
    pub owner: u16,
    pub proto: u8,
    /// `FLOW_STATE_*`.
    pub state: u8,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// Full-NAT: the source the server sees. DNAT: `None` (the server sees the client).
    pub snat: Option<SocketAddrV4>,
    /// SYN-proxy fields, as in `FlowEntry`.
    pub synproxy: u8,
    pub wscales: u8,
    pub seq_delta: u32,
    pub ts_delta: u32,
    pub proxy_isn: u32,
    /// Milliseconds since the flow was created, when the record was made.
    pub age_ms: u32,
}

/// What an announcement asks the receiver to do with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOp {
    /// Install the flow, or update the receiver's copy (docs/scale-out.md, "Who may
    /// change what").
    Upsert,
    /// The owner ended the flow.
    Remove,
    /// The flow saw packets at the sender since its last collector pass.
    Touch,
}

impl RecordOp {
    const fn to_wire(self) -> u8 {
        match self {
            RecordOp::Upsert => 1,
            RecordOp::Remove => 2,
            RecordOp::Touch => 3,
        }
    }

    const fn from_wire(raw: u8) -> Option<RecordOp> {
        match raw {
            1 => Some(RecordOp::Upsert),
            2 => Some(RecordOp::Remove),
            3 => Some(RecordOp::Touch),
            _ => None,
        }
    }
}

/// A record with what to do with it: the unit peers exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub op: RecordOp,
    pub record: FlowRecord,
}

/// Encoded size of an announcement: op (1), owner (2), protocol (1), state (1), SYN-proxy
/// flags (1), window scales (1), zero (1), client, VIP, backend, SNAT (6 each: address,
/// port; SNAT all zero for none), sequence delta, timestamp delta, proxy ISN, age (4
/// each). All big-endian.
pub const ANNOUNCEMENT_BYTES: usize = 8 + 4 * 6 + 4 * 4;

/// Why bytes are not an announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    Length,
    Op,
    Reserved,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordError::Length => "announcement of the wrong length",
            RecordError::Op => "unknown announcement op",
            RecordError::Reserved => "reserved announcement byte not zero",
        })
    }
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: SocketAddrV4) {
    out.extend_from_slice(&endpoint.ip().octets());
    out.extend_from_slice(&endpoint.port().to_be_bytes());
}

fn endpoint_at(bytes: &[u8], at: usize) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
    SocketAddrV4::new(ip, u16::from_be_bytes([bytes[at + 4], bytes[at + 5]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Announcement {
    /// Appends the encoding (`ANNOUNCEMENT_BYTES`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let r = &self.record;
        out.push(self.op.to_wire());
        out.extend_from_slice(&r.owner.to_be_bytes());
        out.extend_from_slice(&[r.proto, r.state, r.synproxy, r.wscales, 0]);
        put_endpoint(out, r.client);
        put_endpoint(out, r.vip);
        put_endpoint(out, r.backend);
        put_endpoint(
            out,
            r.snat
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        );
        for word in [r.seq_delta, r.ts_delta, r.proxy_isn, r.age_ms] {
            out.extend_from_slice(&word.to_be_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Announcement, RecordError> {
        if bytes.len() != ANNOUNCEMENT_BYTES {
            return Err(RecordError::Length);
        }
        let op = RecordOp::from_wire(bytes[0]).ok_or(RecordError::Op)?;
        if bytes[7] != 0 {
            return Err(RecordError::Reserved);
        }
        let snat = endpoint_at(bytes, 26);
        let record = FlowRecord {
            owner: u16::from_be_bytes([bytes[1], bytes[2]]),
            proto: bytes[3],
            state: bytes[4],
            synproxy: bytes[5],
            wscales: bytes[6],
            client: endpoint_at(bytes, 8),
            vip: endpoint_at(bytes, 14),
            backend: endpoint_at(bytes, 20),
            snat: (!snat.ip().is_unspecified()).then_some(snat),
            seq_delta: u32_at(bytes, 32),
            ts_delta: u32_at(bytes, 36),
            proxy_isn: u32_at(bytes, 40),
            age_ms: u32_at(bytes, 44),
        };
        Ok(Announcement { op, record })
    }
}

impl FlowRecord {
    /// The record of the connection that `entry` (under `key`, either direction)
    /// belongs to. `now_ns` is CLOCK_MONOTONIC, as the data path's timestamps.
    pub fn from_entry(key: &FlowKey, entry: &FlowEntry, now_ns: u64) -> FlowRecord {
        let (client, vip, backend, snat) = if entry.direction == FLOW_DIR_CLIENT_TO_SERVER {
            let client = key.source();
            let source = entry.new_source();
            (
                client,
                key.destination(),
                entry.new_destination(),
                (source != client).then_some(source),
            )
        } else {
            let client = entry.new_destination();
            let destination = key.destination();
            (
                client,
                entry.new_source(),
                key.source(),
                (destination != client).then_some(destination),
            )
        };
        let age_ns = now_ns.saturating_sub(entry.created_ns);
        FlowRecord {
            owner: entry.owner,
            proto: key.proto,
            state: entry.state,
            client,
            vip,
            backend,
            snat,
            synproxy: entry.synproxy,
            wscales: entry.wscales,
            seq_delta: entry.seq_delta,
            ts_delta: entry.ts_delta,
            proxy_isn: entry.proxy_isn,
            age_ms: u32::try_from(age_ns / 1_000_000).unwrap_or(u32::MAX),
        }
    }

    /// Key of the client → VIP entry, which identifies the connection.
    pub fn forward_key(&self) -> FlowKey {
        FlowKey::new(
            *self.client.ip(),
            self.client.port(),
            *self.vip.ip(),
            self.vip.port(),
            self.proto,
        )
    }

    /// Key of the server → balancer entry.
    pub fn reverse_key(&self) -> FlowKey {
        let to = self.snat.unwrap_or(self.client);
        FlowKey::new(
            *self.backend.ip(),
            self.backend.port(),
            *to.ip(),
            to.port(),
            self.proto,
        )
    }

    /// Both `FLOWS` entries, forward first, as the owner's data path wrote them, with
    /// this instance's ids for the service and backend, the next-hop cache empty and
    /// `now_ns` as last seen.
    pub fn entries(
        &self,
        service_id: u32,
        backend_id: u32,
        now_ns: u64,
    ) -> [(FlowKey, FlowEntry); 2] {
        let created_ns = now_ns.saturating_sub(u64::from(self.age_ms) * 1_000_000);
        let mut reverse = FlowEntry {
            service_id,
            backend_id,
            seq_delta: self.seq_delta,
            ts_delta: self.ts_delta,
            state: self.state,
            direction: lb_common::FLOW_DIR_SERVER_TO_CLIENT,
            synproxy: self.synproxy,
            wscales: self.wscales,
            proxy_isn: self.proxy_isn,
            created_ns,
            last_seen_ns: now_ns,
            owner: self.owner,
            ..FlowEntry::default()
        };
        reverse.set_rewrite(self.vip, self.client);
        let mut forward = FlowEntry {
            direction: FLOW_DIR_CLIENT_TO_SERVER,
            ..reverse
        };
        forward.set_rewrite(self.snat.unwrap_or(self.client), self.backend);
        [(self.forward_key(), forward), (self.reverse_key(), reverse)]
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FLOW_STATE_ESTABLISHED, IPPROTO_TCP, IPPROTO_UDP, SYNPROXY_ACTIVE};

    use super::*;

    fn endpoint(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    fn full_nat() -> FlowRecord {
        FlowRecord {
            owner: 2,
            proto: IPPROTO_TCP,
            state: FLOW_STATE_ESTABLISHED,
            client: endpoint("198.18.0.10:40000"),
            vip: endpoint("198.18.1.1:80"),
            backend: endpoint("198.18.2.11:8080"),
            snat: Some(endpoint("198.18.3.1:51000")),
            synproxy: SYNPROXY_ACTIVE,
            wscales: 0x75,
            seq_delta: 0xdead_beef,
            ts_delta: 7,
            proxy_isn: 0x0102_0304,
            age_ms: 1500,
        }
    }

    #[test]
    fn an_announcement_reads_back_as_written() {
        let dnat = FlowRecord {
            snat: None,
            proto: IPPROTO_UDP,
            ..full_nat()
        };
        for record in [full_nat(), dnat] {
            for op in [RecordOp::Upsert, RecordOp::Remove, RecordOp::Touch] {
                let announcement = Announcement { op, record };
                let mut bytes = Vec::new();
                announcement.encode(&mut bytes);
                assert_eq!(bytes.len(), ANNOUNCEMENT_BYTES);
                assert_eq!(Announcement::decode(&bytes), Ok(announcement));
            }
        }
    }

    #[test]
    fn bad_announcement_bytes_are_refused() {
        let mut bytes = Vec::new();
        Announcement {
            op: RecordOp::Upsert,
            record: full_nat(),
        }
        .encode(&mut bytes);
        assert_eq!(Announcement::decode(&bytes[1..]), Err(RecordError::Length));
        let mut bad_op = bytes.clone();
        bad_op[0] = 9;
        assert_eq!(Announcement::decode(&bad_op), Err(RecordError::Op));
        let mut reserved = bytes;
        reserved[7] = 1;
        assert_eq!(Announcement::decode(&reserved), Err(RecordError::Reserved));
    }

    #[test]
    fn entries_are_the_full_nat_pair_and_read_back_from_either() {
        let record = full_nat();
        let now = 10_000_000_000;
        let [(fkey, forward), (rkey, reverse)] = record.entries(5, 9, now);
        assert_eq!(
            fkey,
            FlowKey::new(
                "198.18.0.10".parse().unwrap(),
                40000,
                "198.18.1.1".parse().unwrap(),
                80,
                IPPROTO_TCP
            )
        );
        assert_eq!(forward.new_source(), endpoint("198.18.3.1:51000"));
        assert_eq!(forward.new_destination(), endpoint("198.18.2.11:8080"));
        assert_eq!(rkey.source(), endpoint("198.18.2.11:8080"));
        assert_eq!(rkey.destination(), endpoint("198.18.3.1:51000"));
        assert_eq!(reverse.new_source(), endpoint("198.18.1.1:80"));
        assert_eq!(reverse.new_destination(), endpoint("198.18.0.10:40000"));
        // Each entry's peer key is the other entry's key, as the data path relies on.
        assert_eq!(forward.peer_key(IPPROTO_TCP), rkey);
        assert_eq!(reverse.peer_key(IPPROTO_TCP), fkey);
        assert_eq!(
            (forward.service_id, forward.backend_id, forward.owner),
            (5, 9, 2)
        );
        assert_eq!(forward.created_ns, now - 1_500_000_000);
        assert_eq!(forward.tx_ifindex, 0);
        assert_eq!(FlowRecord::from_entry(&fkey, &forward, now), record);
        assert_eq!(FlowRecord::from_entry(&rkey, &reverse, now), record);
    }

    #[test]
    fn a_dnat_record_keeps_the_client_as_the_servers_peer() {
        let record = FlowRecord {
            snat: None,
            ..full_nat()
        };
        let [(fkey, forward), (rkey, reverse)] = record.entries(1, 1, 5_000_000_000);
        assert_eq!(forward.new_source(), record.client);
        assert_eq!(rkey.destination(), record.client);
        assert_eq!(
            FlowRecord::from_entry(&fkey, &forward, 5_000_000_000),
            record
        );
        assert_eq!(
            FlowRecord::from_entry(&rkey, &reverse, 5_000_000_000),
            record
        );
    }
}
