//! The BPF maps of the balancer. Sizes here are defaults: the controller sets the real
//! capacities (from its config) before loading.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    Backend, BackendStats, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_RING_SLOTS,
    DEFAULT_MAX_SERVICES, EligibilityKey, FLOW_EVENTS_BYTES, FlowEntry, FlowKey, FragmentEntry,
    FragmentKey, MAX_ELIGIBILITY_PREFIXES, MAX_FRAGMENTS, MAX_INTERFACES, MAX_LOCAL_ADDRS,
    MAX_SESSIONS, MAX_TUNNEL_PEERS, MAX_VIP_TRANSITIONS, NextHop, Service, ServiceKey,
    ServiceStats, SessionEntry, SessionKey, Settings, SnatPool, VipTransition,
    addr_filter::AddrFilter, counters,
};

/// (VIP, port, protocol) → policy for new flows.
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Backend id → address. Ids are stable for a backend's lifetime.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Pool of Maglev rings: two per service (double buffer), each `Service::ring_size`
/// backend ids. Mappable, so the controller writes rings with plain stores instead of
/// one syscall per slot.
#[map]
pub static MAGLEV_RINGS: Array<u32> =
    Array::with_max_entries(DEFAULT_MAX_RING_SLOTS, BPF_F_MMAPABLE);

/// Backend id → this CPU's cached next hop toward it, for new flows' first packets
/// (`fwd::forward_new`). Per CPU: no cache line shared between CPUs, no torn entry.
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The access-correspondence table: one entry per direction of every connection.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Datagrams whose first fragment was balanced → the flow their later fragments follow
/// (docs/architecture.md, "Fragments"). Short-lived: records older than
/// `FRAGMENT_TIMEOUT_NS` count as absent, and the least recently used go first.
#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentEntry> =
    LruHashMap::with_max_entries(MAX_FRAGMENTS, 0);

/// Addresses the balancer answers for (VIPs and SNAT addresses) → `ADDR_KIND_*`.
/// Consulted only off the fast path, to tell "ours but malformed" from "not ours".
#[map]
pub static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

/// Hashed bitmap of the addresses a packet can be the balancer's by (`addr_filter`),
/// looked up before `FLOWS`: most other hosts' packets leave on it.
#[map]
pub static ADDR_FILTER: Array<AddrFilter> = Array::with_max_entries(1, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Egress interfaces for XDP_REDIRECT, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static GLOBAL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Allow-lists of every service that requires authorization: (service id, client
/// prefix) → 1. Prefix lengths are 32 + the client prefix length.
#[map]
pub static ELIGIBILITY: LpmTrie<EligibilityKey, u32> =
    LpmTrie::with_max_entries(MAX_ELIGIBILITY_PREFIXES, BPF_F_NO_PREALLOC);

/// Client-IP affinity: (service id, client) → backend its new connections go to.
#[map]
pub static SESSIONS: LruHashMap<SessionKey, SessionEntry> =
    LruHashMap::with_max_entries(MAX_SESSIONS, 0);

/// Scratch space of the TCP option walk (see `tcpopt::parse`), one per CPU.
#[map]
pub static OPT_SCRATCH: PerCpuArray<crate::tcpopt::TcpOpts> = PerCpuArray::with_max_entries(1, 0);

/// Service id → its SNAT addresses, for services with several (`Service::snat_count`).
#[map]
pub static SNAT_POOLS: Array<SnatPool> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Created and changed flows for the daemon to announce to its peers
/// (docs/scale-out.md, "Flow records"); written only with `Settings::announce` set.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);

/// VIPs moving here from another instance → that instance (docs/scale-out.md,
/// "Forwarding to the previous owner"). Read only on the flow-miss path.
#[map]
pub static VIP_TRANSITIONS: HashMap<u32, VipTransition> =
    HashMap::with_max_entries(MAX_VIP_TRANSITIONS, 0);

/// Instances whose IPIP packets this one decapsulates: outer source → flags.
#[map]
pub static TUNNEL_PEERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TUNNEL_PEERS, 0);

/// The outer source address of packets this instance forwards through the tunnel
/// (network byte order; 0: none set, nothing is forwarded). Its own map, not a
/// `Settings` field, so that writing the config's settings never clears it.
#[map]
pub static TUNNEL_SOURCE: Array<u32> = Array::with_max_entries(1, 0);

/// Slot 0: `lb_xdp` itself, entered by tail call with a packet just decapsulated, so
/// that the inner packet takes the whole path from the start (`tunnel::receive`).
#[map]
pub static REPROCESS: ProgramArray = ProgramArray::with_max_entries(1, 0);
