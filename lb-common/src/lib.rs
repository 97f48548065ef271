//! Types shared by the XDP program (`lb-ebpf`) and the controller (`lb-userspace`).
//!
//! Every map key and value is `#[repr(C)]`, made only of plain integers, with every
//! padding byte spelled out as a field, so the kernel and userspace agree byte for byte
//! and hashed keys never contain garbage. Addresses and ports are stored exactly as they
//! appear on the wire (network byte order) so the data path never swaps bytes.
#![no_std]

pub mod addr_filter;
pub mod counters;
pub mod hash;
pub mod icmp_relay;
pub mod tcp_state;
#[cfg(feature = "user")]
pub mod wire;

/// Largest Maglev lookup ring (a prime, as Maglev requires), for services with many
/// backends; smaller services get a smaller prime (`Service::ring_size`). Each service
/// owns two rings (double buffer) in the shared MAGLEV_RINGS pool: the controller fills
/// the idle one, then flips the service entry.
pub const MAGLEV_RING_SIZE: u32 = 65_537;

/// Default size of the MAGLEV_RINGS pool (slots): two of the largest rings for each of
/// the default number of services.
pub const DEFAULT_MAX_RING_SLOTS: u32 = DEFAULT_MAX_SERVICES * 2 * MAGLEV_RING_SIZE;

/// IP protocol numbers used in keys.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Default capacity of the maps; the controller may resize them before loading.
pub const DEFAULT_MAX_SERVICES: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
pub const MAX_INTERFACES: u32 = 64;

/// Default full-NAT source port range (`Settings`, the config's `[snat]`): the
/// unprivileged ports, so translated flows never look like they come from a system
/// service.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;

/// Names of the maps in the object file, used for pinning and lookups by the controller.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV_RINGS: &str = "MAGLEV_RINGS";
    pub const FLOWS: &str = "FLOWS";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const GLOBAL_COUNTERS: &str = "GLOBAL_COUNTERS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const ELIGIBILITY: &str = "ELIGIBILITY";
    pub const SESSIONS: &str = "SESSIONS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const SNAT_POOLS: &str = "SNAT_POOLS";
    pub const STAGES: &str = "STAGES";
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const VIP_TRANSITIONS: &str = "VIP_TRANSITIONS";
    pub const TUNNEL_PEERS: &str = "TUNNEL_PEERS";
    pub const TUNNEL_SOURCE: &str = "TUNNEL_SOURCE";
    pub const REPROCESS: &str = "REPROCESS";
    pub const ADDR_FILTER: &str = "ADDR_FILTER";
    /// Not pinned (not in `ALL`): a cache that a new daemon starts empty.
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const ALL: [&str; 21] = [
        SERVICES,
        BACKENDS,
        MAGLEV_RINGS,
        FLOWS,
        LOCAL_ADDRS,
        SETTINGS,
        TX_PORTS,
        GLOBAL_COUNTERS,
        SERVICE_STATS,
        BACKEND_STATS,
        ELIGIBILITY,
        SESSIONS,
        FRAGMENTS,
        SNAT_POOLS,
        STAGES,
        FLOW_EVENTS,
        VIP_TRANSITIONS,
        TUNNEL_PEERS,
        TUNNEL_SOURCE,
        REPROCESS,
        ADDR_FILTER,
    ];
}

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM_NAME: &str = "lb_xdp";

/// Stage programs that `lb_xdp` enters by tail call, by index in `STAGES`, and their
/// names in the object file (docs/architecture.md, "Programs").
pub const STAGE_SYN_PROXY: u32 = 0;
pub const STAGE_COUNT: u32 = 1;
pub const STAGE_PROGRAM_NAMES: [&str; STAGE_COUNT as usize] = ["lb_xdp_syn_proxy"];

/// Services map key: the (VIP, port, protocol) a client addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey {
    /// VIP, network byte order.
    pub vip: u32,
    /// Service port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Forwarding mode of a service (`Service::mode`).
pub const MODE_FULL_NAT: u8 = 0;
pub const MODE_DNAT: u8 = 1;

/// `Service::flags`: only clients in the service's ELIGIBILITY prefixes may open flows.
pub const SERVICE_FLAG_AUTH_REQUIRED: u8 = 1;
/// `Service::flags`: an ineligible TCP SYN is answered with a RST instead of dropped.
pub const SERVICE_FLAG_AUTH_RST: u8 = 2;
/// `Service::flags`: new flows of a client follow its SESSIONS entry (client-IP affinity).
pub const SERVICE_FLAG_AFFINITY: u8 = 4;
/// `Service::flags`: the balancer answers SYNs itself with a SYN cookie and opens the
/// server side only for a client that completed the handshake (TCP only).
pub const SERVICE_FLAG_SYN_PROXY: u8 = 8;
/// `Service::flags`: a TCP segment without a flow entry that cannot open one (no SYN,
/// not a SYN proxy's cookie ACK) is answered with a RST instead of dropped
/// (`unknown_segment = "reset"`).
pub const SERVICE_FLAG_NO_FLOW_RST: u8 = 16;
/// `Service::flags`: automatic SYN cookies are on (set and cleared by the controller
/// under a SYN flood, `syn_cookies = "auto"`): SYNs are answered as with
/// `SERVICE_FLAG_SYN_PROXY`. Always set together with `SERVICE_FLAG_COOKIE_ACKS`.
pub const SERVICE_FLAG_SYN_COOKIES: u8 = 32;
/// `Service::flags`: an ACK without a flow entry is checked for a SYN cookie and, if it
/// carries a valid one, opens the connection as with `SERVICE_FLAG_SYN_PROXY`; any
/// other such ACK is treated as without the flag. Kept for the cookies' lifetime after
/// automatic SYN cookies switch off, so handshakes answered while on still complete.
pub const SERVICE_FLAG_COOKIE_ACKS: u8 = 64;

/// Services map value: the policy for new flows of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Service {
    /// Index into SERVICE_STATS and owner id of the service's two rings.
    pub id: u32,
    /// Index of slot 0 of the live ring in MAGLEV_RINGS.
    pub ring_offset: u32,
    /// Internal source address for full-NAT, network byte order (0 in DNAT mode).
    pub snat_ip: u32,
    /// Number of backends in the live ring; 0 means no backend can take a new flow.
    pub backend_count: u16,
    pub mode: u8,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u8,
    /// Session idle timeout in seconds when `SERVICE_FLAG_AFFINITY` is set.
    pub session_timeout_s: u32,
    /// Slots of each of the service's two rings (a prime; 0 = no ring).
    pub ring_size: u32,
    /// Index of slot 0 of the idle ring: the one the next change is written into.
    pub ring_idle_offset: u32,
    /// Full-NAT source addresses (`snat_ips`): above 1, new flows spread over the
    /// service's SNAT_POOLS slot; 0 or 1, `snat_ip` is the only one.
    pub snat_count: u32,
}

/// Most SNAT addresses of one service (`snat_ips`).
pub const MAX_SNAT_IPS: usize = 16;

/// SNAT_POOLS value (array indexed by service id): the SNAT addresses of a service with
/// several. Every slot holds one of them (the list repeated), so a packet that reads the
/// entry's old `snat_count` while the pool changes still finds a current address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SnatPool {
    /// Network byte order.
    pub addrs: [u32; MAX_SNAT_IPS],
}

/// Backends map value (array indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend {
    /// Network byte order.
    pub ip: u32,
    /// Network byte order.
    pub port: u16,
    /// `BACKEND_STATE_*`: sessions never pin new flows to a backend that is not active.
    pub state: u8,
    pub _pad: u8,
}

/// Next hop toward a backend (value of `NEXT_HOPS`, per CPU, indexed by backend id),
/// written by the data path from `bpf_fib_lookup` on a new flow's first packet, so that
/// the next new flows to that backend within `LAST_SEEN_GRANULARITY_NS` skip the FIB
/// lookup (docs/architecture.md, "Next hops"). Valid only for the lookup's own inputs:
/// the rewritten source and destination and the ingress interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NextHop {
    /// CLOCK_MONOTONIC (coarse) of the lookup; older than `LAST_SEEN_GRANULARITY_NS`
    /// means stale.
    pub refreshed_ns: u64,
    /// Network byte order: the source and destination the lookup was made for.
    pub src_ip: u32,
    pub dst_ip: u32,
    pub ingress_ifindex: u32,
    /// 0 = no lookup cached.
    pub tx_ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress interface's MTU as the lookup reported it: a longer packet takes a
    /// lookup of its own (which sends it to the kernel), as it would without the cache.
    pub mtu: u16,
    pub _pad: [u8; 2],
}

/// Backend states (`Backend::state`). Drained and down backends are also left out of
/// every Maglev ring by the controller; the state lets the data path re-pin sessions.
pub const BACKEND_STATE_ACTIVE: u8 = 0;
pub const BACKEND_STATE_DRAINING: u8 = 1;
pub const BACKEND_STATE_DOWN: u8 = 2;

/// ELIGIBILITY (LPM trie) key data, after the trie's `prefix_len`. The service id is
/// matched in full (prefix lengths are `32 + client prefix length`), so one trie holds
/// every service's allow-list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EligibilityKey {
    /// Service id, big-endian so that it forms the leading bits of the prefix.
    pub service_id_be: u32,
    /// Client address, network byte order.
    pub addr: u32,
}

/// Capacity of ELIGIBILITY (prefixes over all services).
pub const MAX_ELIGIBILITY_PREFIXES: u32 = 16_384;

/// SESSIONS (LRU hash) key: one client of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SessionKey {
    pub service_id: u32,
    /// Client address, network byte order.
    pub client_ip: u32,
}

/// SESSIONS value: the backend a client's new connections go to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SessionEntry {
    pub backend_id: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC when the session was made (or re-pinned).
    pub created_ns: u64,
    /// CLOCK_MONOTONIC of the last new connection that used it.
    pub last_seen_ns: u64,
}

/// Capacity of SESSIONS (least recently used sessions are evicted first).
pub const MAX_SESSIONS: u32 = 262_144;

/// Flow table key: a packet's 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub src_ip: u32,
    pub dst_ip: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Flow states (`FlowEntry::state`). The values are part of the pinned `FLOWS` map that
/// a restarted controller adopts: existing ones never change, new ones are appended.
///
/// TCP: `SYN_SEEN` (client SYN) → `SYN_ACK_SEEN` (server SYN+ACK, still half-open) →
/// `ESTABLISHED` (the client's ACK) → `HALF_CLOSED_CLIENT` or `HALF_CLOSED_SERVER` (that side's FIN: half
/// closed, the other side may still send) → `CLOSING` (the other side's FIN, or any RST).
pub const FLOW_STATE_SYN_SEEN: u8 = 1;
pub const FLOW_STATE_ESTABLISHED: u8 = 2;
/// Both sides sent a FIN, or either sent an RST. Final: only a new SYN replaces the flow.
pub const FLOW_STATE_CLOSING: u8 = 3;
pub const FLOW_STATE_UDP: u8 = 4;
/// Set by the controller when the backend failed and its service says
/// `on_backend_down = "reset"`: the client's next packet is answered with a RST.
pub const FLOW_STATE_RESET: u8 = 5;
/// SYN proxy: the client finished its handshake with the balancer, the server side is
/// being opened. `seq_delta`/`ts_delta` still hold the cookie and the timestamp the
/// balancer sent the client; they become deltas on the server's SYN-ACK.
pub const FLOW_STATE_SYNPROXY: u8 = 6;
/// The server answered the client's SYN with its SYN+ACK; the client has not ACKed yet.
pub const FLOW_STATE_SYN_ACK_SEEN: u8 = 7;
/// Half closed by the client: its FIN was seen, the server may still send.
pub const FLOW_STATE_HALF_CLOSED_CLIENT: u8 = 8;
/// Half closed by the server: its FIN was seen, the client may still send.
pub const FLOW_STATE_HALF_CLOSED_SERVER: u8 = 9;

/// `FlowEntry::synproxy` bits (0: not a proxied connection, nothing is translated).
pub const SYNPROXY_ACTIVE: u8 = 1;
/// Both sides use TCP timestamps: `ts_delta` applies.
pub const SYNPROXY_TIMESTAMPS: u8 = 2;
/// The client offered window scaling: the balancer announced `SYNPROXY_WSCALE`, and
/// server windows are rescaled from the server's shift (`wscales` high nibble) to it.
pub const SYNPROXY_WSCALE_OK: u8 = 4;
/// Window shift the balancer announces to clients that offer window scaling.
pub const SYNPROXY_WSCALE: u8 = 7;
/// MSS the balancer announces to clients in its SYN-ACK.
pub const SYNPROXY_MSS: u16 = 1460;

/// Flow directions (`FlowEntry::direction`).
pub const FLOW_DIR_CLIENT_TO_SERVER: u8 = 0;
pub const FLOW_DIR_SERVER_TO_CLIENT: u8 = 1;

/// Flow table value: the rewrite for packets matching the key (the access-correspondence
/// table, docs/architecture.md). The peer entry's key is this entry's rewritten tuple
/// reversed, so it needs no storage of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowEntry {
    /// Source address/port to write, network byte order.
    pub new_src_ip: u32,
    pub new_dst_ip: u32,
    pub new_src_port: u16,
    pub new_dst_port: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// SYN proxy: cookie − server ISN, the same in both entries. Added to SEQ
    /// server→client, subtracted from ACK and SACK blocks client→server. 0 without it.
    pub seq_delta: u32,
    /// SYN proxy: balancer's timestamp − server's, the same in both entries. Added to
    /// TSval server→client, subtracted from TSecr client→server. 0 without it.
    pub ts_delta: u32,
    pub state: u8,
    pub direction: u8,
    /// `SYNPROXY_*` bits; 0 for a connection the balancer did not proxy.
    pub synproxy: u8,
    /// SYN proxy window shifts: low nibble the client's, high nibble the server's.
    pub wscales: u8,
    /// SYN proxy: while the server side opens (`FLOW_STATE_SYNPROXY`), the client's
    /// initial sequence number, from which a lost SYN to the server is rebuilt; from
    /// then on the balancer's initial sequence number toward the client (its SYN
    /// cookie), kept for `lb flows`. 0 without it.
    pub proxy_isn: u32,
    /// Next-hop cache (set by the data path, 0 = none): the egress interface of the
    /// last `bpf_fib_lookup` for this entry's rewritten packets. A hit with a cache
    /// skips the FIB lookup; it is redone whenever `last_seen_ns` is refreshed, so
    /// route and neighbour changes are picked up within `LAST_SEEN_GRANULARITY_NS`.
    /// Whoever writes an entry from userspace leaves the cache zeroed.
    pub tx_ifindex: u32,
    /// CLOCK_MONOTONIC (the data path reads its coarse variant) when the flow was created.
    pub created_ns: u64,
    /// CLOCK_MONOTONIC of the last packet, refreshed at `LAST_SEEN_GRANULARITY_NS`.
    pub last_seen_ns: u64,
    /// Next-hop cache: destination and source MAC for `tx_ifindex`.
    pub tx_dmac: [u8; 6],
    pub tx_smac: [u8; 6],
    /// Node id of the instance that created the flow (`Settings::node_id`; 0 without
    /// peers). A flow announced by a peer keeps its owner's id (docs/scale-out.md).
    pub owner: u16,
    pub _pad: u16,
}

/// The data path writes `last_seen_ns` only when it is older than this, so the
/// established path rarely dirties a shared cache line.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

impl FlowEntry {
    /// Key of the entry for the opposite direction of the same connection.
    pub const fn peer_key(&self, proto: u8) -> FlowKey {
        FlowKey {
            src_ip: self.new_dst_ip,
            dst_ip: self.new_src_ip,
            src_port: self.new_dst_port,
            dst_port: self.new_src_port,
            proto,
            _pad: [0; 3],
        }
    }
}

/// FRAGMENTS (LRU hash) key: one IPv4 datagram being fragmented, as its fragments
/// arrive (before any rewrite). docs/architecture.md, "Fragments".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragmentKey {
    /// Network byte order, as in the IPv4 header.
    pub src_ip: u32,
    pub dst_ip: u32,
    /// IP identification, network byte order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// FRAGMENTS value: what the later fragments of a datagram need, recorded when its
/// first fragment was balanced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragmentEntry {
    /// The first fragment's flow key: later fragments are rewritten by this FLOWS entry.
    pub flow: FlowKey,
    /// Where the contiguous data forwarded so far ends, in bytes of the IP payload: a
    /// fragment starting below it overlaps and is dropped.
    pub end: u16,
    /// 1: the first fragment went to the local stack (`pass_local`, a balancer address
    /// without a service on that port), and so do the later ones; `flow` is unused.
    pub local: u8,
    pub _pad: [u8; 5],
    /// CLOCK_MONOTONIC (coarse) of the first fragment; older than
    /// `FRAGMENT_TIMEOUT_NS` counts as absent.
    pub created_ns: u64,
}

/// Capacity of FRAGMENTS (datagrams whose later fragments are awaited).
pub const MAX_FRAGMENTS: u32 = 32_768;

/// Lifetime of a FRAGMENTS record: Linux's default ipfrag_time (30 s), the longest a
/// receiver waits for the rest of a datagram.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// LOCAL_ADDRS values: which of the balancer's own roles an address plays.
pub const ADDR_KIND_VIP: u32 = 1;
pub const ADDR_KIND_SNAT: u32 = 2;
/// Capacity of LOCAL_ADDRS (VIPs and SNAT addresses over all services).
pub const MAX_LOCAL_ADDRS: u32 = 1024;

/// IP protocol number of IPv4-in-IPv4 (RFC 2003), the encapsulation of packets
/// forwarded to a VIP's previous owner (docs/scale-out.md, "Forwarding to the previous
/// owner").
pub const IPPROTO_IPIP: u8 = 4;

/// VIP_TRANSITIONS (hash) value, keyed by the VIP (network byte order): the VIP is
/// moving here, and packets for it that find no flow entry go to `previous_owner`
/// instead of being refused (docs/scale-out.md, "Forwarding to the previous owner").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct VipTransition {
    /// The instance that served the VIP until now (its tunnel source address), network
    /// byte order: the outer destination of forwarded packets.
    pub previous_owner: u32,
    /// Zero; room for the move protocol without changing the map's value size.
    pub _reserved: u32,
}

/// Capacity of VIP_TRANSITIONS (VIPs moving here at the same time).
pub const MAX_VIP_TRANSITIONS: u32 = 256;
/// Capacity of TUNNEL_PEERS (instances whose tunnelled packets are accepted).
pub const MAX_TUNNEL_PEERS: u32 = 256;
/// TUNNEL_PEERS value: packets from this peer are decapsulated.
pub const TUNNEL_PEER_ACCEPT: u32 = 1;

/// SETTINGS (array of one): knobs the controller sets for the data path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Settings {
    /// Inclusive range of full-NAT source ports, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// This instance's node id among its peers, written into every flow it creates
    /// (`FlowEntry::owner`); 0 without `[peers]`.
    pub node_id: u16,
    /// Nonzero: report created and changed flows in `FLOW_EVENTS` (docs/scale-out.md).
    pub announce: u8,
    pub _pad: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            snat_port_min: DEFAULT_SNAT_PORT_MIN,
            snat_port_max: DEFAULT_SNAT_PORT_MAX,
            node_id: 0,
            announce: 0,
            _pad: 0,
        }
    }
}

/// `FLOW_EVENTS` record kinds.
/// The data path created both entries of a new flow; `entry` is the forward one.
pub const FLOW_EVENT_CREATED: u8 = 1;
/// The data path changed what a flow's forwarding depends on (TCP state, SYN-proxy
/// deltas); `entry` is the changed one, either direction.
pub const FLOW_EVENT_CHANGED: u8 = 2;
/// The data path removed both entries of a flow (a SYN reusing a closed connection's
/// tuple, a SYN proxy's server side that failed, a RST to a reset flow); `entry` is
/// either one.
pub const FLOW_EVENT_REMOVED: u8 = 3;

/// `FLOW_EVENTS` ring buffer size in bytes (a power of two, a multiple of the page size):
/// about 40,000 events between two reads of the daemon.
pub const FLOW_EVENTS_BYTES: u32 = 4 << 20;

/// One `FLOW_EVENTS` record: a flow entry as the data path just wrote it, with its key.
/// The daemon turns it into a flow record for its peers (docs/scale-out.md, "Flow
/// records").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowEvent {
    /// `FLOW_EVENT_*`.
    pub kind: u8,
    pub _pad: [u8; 7],
    pub key: FlowKey,
    pub entry: FlowEntry,
}

/// How many random source ports the classifier tries before giving up on a flow.
pub const SNAT_PORT_PROBES: u32 = 8;

/// Per-service counters (per-CPU array indexed by service id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
    /// New flows refused because the client is not in the allow-list (also in `drops`).
    pub denied: u64,
    /// SYNs answered with a SYN cookie (SYN proxy or automatic SYN cookies).
    pub syn_cookies: u64,
}

/// Per-backend counters (per-CPU array indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub _reserved: u64,
}

/// Benchmark harness (`lb-bench` object, `cargo xtask bench`): names in that object.
pub mod bench_names {
    pub const WRAPPER: &str = "bench_wrapper";
    pub const FLOOR: &str = "bench_floor";
    pub const NULL: &str = "bench_null";
    /// Program array of one slot: the program under test.
    pub const TARGET: &str = "BENCH_TARGET";
    /// Array of one `BenchPacket`: the packet every repeat starts from.
    pub const PACKET: &str = "BENCH_PACKET";
    /// Array of one u32: repeats run so far (drives `BenchPacket::vary_count`).
    pub const SEQUENCE: &str = "BENCH_SEQUENCE";
}

/// Longest packet the benchmark wrapper can restore.
pub const BENCH_PACKET_MAX: usize = 256;

/// Source ports used per source address when `BenchPacket::vary_count` is set.
pub const BENCH_PORTS_PER_ADDR: u32 = 60_000;
pub const BENCH_PORT_BASE: u32 = 1024;

/// BENCH_PACKET value. With `BPF_PROG_TEST_RUN` and `repeat > 1` the kernel hands each
/// repeat the buffer the previous one rewrote; the wrapper copies these bytes back
/// first, so every repeat sees the same packet (or, with `vary_count`, a new flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BenchPacket {
    /// Bytes to restore, 1..=BENCH_PACKET_MAX; must equal the test_run packet length.
    pub len: u32,
    /// 0: restore as is. N > 0: with `j = i % N` for repeat i, source address
    /// `src_base + j / BENCH_PORTS_PER_ADDR` and source port
    /// `BENCH_PORT_BASE + j % BENCH_PORTS_PER_ADDR` are written into these bytes before the
    /// restore, so each
    /// repeat is its own flow (the IPv4 and TCP/UDP checksums are updated to match, as a
    /// balancer verifying them on its new-flow path requires).
    pub vary_count: u32,
    /// Source address base, host byte order.
    pub src_base: u32,
    pub _pad: u32,
    pub bytes: [u8; BENCH_PACKET_MAX],
}

impl Default for BenchPacket {
    fn default() -> Self {
        BenchPacket {
            len: 0,
            vary_count: 0,
            src_base: 0,
            _pad: 0,
            bytes: [0; BENCH_PACKET_MAX],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), made of plain integers, with explicit padding.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::VipTransition {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::BackendStats {}
    unsafe impl aya::Pod for super::EligibilityKey {}
    unsafe impl aya::Pod for super::SessionKey {}
    unsafe impl aya::Pod for super::SessionEntry {}
    unsafe impl aya::Pod for super::BenchPacket {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentEntry {}
    unsafe impl aya::Pod for super::SnatPool {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::addr_filter::AddrFilter {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<Service>(), 32);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<NextHop>(), 40);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<FlowEntry>(), 72);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<ServiceStats>(), 48);
        assert_eq!(size_of::<EligibilityKey>(), 8);
        assert_eq!(size_of::<SessionKey>(), 8);
        assert_eq!(size_of::<SessionEntry>(), 24);
        assert_eq!(size_of::<BackendStats>(), 32);
        assert_eq!(size_of::<BenchPacket>(), 16 + BENCH_PACKET_MAX);
        assert_eq!(size_of::<FragmentKey>(), 12);
        assert_eq!(size_of::<FragmentEntry>(), 32);
        assert_eq!(size_of::<SnatPool>(), 4 * MAX_SNAT_IPS);
        assert_eq!(size_of::<FlowEvent>(), 96);
        assert_eq!(size_of::<VipTransition>(), 8);
    }
}
