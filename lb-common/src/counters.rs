//! Global per-CPU counters (array indexed by these constants). Every verdict the data
//! path takes that is not a plain forward has its own counter, so `lb stats` can say
//! why a packet was dropped or handed to the kernel.

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident = $idx:literal, $label:literal;)*) => {
        $($(#[doc = $doc])* pub const $name: u32 = $idx;)*
        /// Number of global counters.
        pub const COUNT: u32 = [$($idx),*].len() as u32;
        /// Stable names, indexed by counter, for stats output and metrics.
        pub const NAMES: [&str; COUNT as usize] = [$($label),*];
    };
}

counters! {
    /// Not IPv4 (ARP, IPv6...): passed untouched (VLAN-tagged frames: `PASS_VLAN`).
    PASS_NOT_IPV4 = 0, "pass_not_ipv4";
    /// IPv4 not addressed to a VIP service or a live flow: passed untouched.
    PASS_NOT_OURS = 1, "pass_not_ours";
    /// Frame shorter than an Ethernet header: dropped.
    DROP_SHORT_FRAME = 2, "drop_short_frame";
    /// IPv4 header cut short by the end of the frame: dropped.
    DROP_IP_TRUNCATED = 3, "drop_ip_truncated";
    /// IHL below 5: dropped.
    DROP_IP_BAD_IHL = 4, "drop_ip_bad_ihl";
    /// Total length beyond the frame or shorter than the header: dropped.
    DROP_IP_BAD_LENGTH = 5, "drop_ip_bad_length";
    /// IPv4 options on a packet to a balancer address: dropped.
    DROP_IP_OPTIONS = 6, "drop_ip_options";
    /// IPv4 fragment of a protocol other than TCP and UDP to a balancer address:
    /// dropped (TCP and UDP fragments are followed, docs/architecture.md "Fragments").
    DROP_IP_FRAGMENT = 7, "drop_ip_fragment";
    /// TCP header cut short, to a balancer address: dropped.
    DROP_TCP_TRUNCATED = 8, "drop_tcp_truncated";
    /// TCP data offset below 5 (or beyond the packet), to a balancer address: dropped.
    DROP_TCP_BAD_DOFF = 9, "drop_tcp_bad_doff";
    /// UDP header cut short, to a balancer address: dropped.
    DROP_UDP_TRUNCATED = 10, "drop_udp_truncated";
    /// TCP without SYN to a service, with no flow entry: dropped (with
    /// `unknown_segment = "reset"`, only RST segments are; the others are answered).
    DROP_NO_FLOW = 11, "drop_no_flow";
    /// New flow to a service that has no usable backend: dropped.
    DROP_NO_BACKEND = 12, "drop_no_backend";
    /// No free full-NAT source port after the bounded probes: dropped.
    DROP_SNAT_EXHAUSTED = 13, "drop_snat_exhausted";
    /// The reverse entry of a new flow collided (DNAT) or could not be inserted: dropped.
    DROP_FLOW_INSERT = 14, "drop_flow_insert";
    /// TTL would reach zero on a forwarded packet: dropped.
    DROP_TTL_EXPIRED = 15, "drop_ttl_expired";
    /// Packets that matched a flow entry.
    FLOW_HITS = 16, "flow_hits";
    /// New flows created by the classifier.
    NEW_FLOWS = 17, "new_flows";
    /// Rewritten, next hop not resolved yet: passed to the kernel to resolve and forward.
    PASS_NO_NEIGH = 18, "pass_no_neigh";
    /// Rewritten, no usable route from XDP (unreachable, forwarding off...): passed to the kernel.
    PASS_FIB_FAILED = 19, "pass_fib_failed";
    /// Sent back out of the ingress interface.
    TX = 20, "tx";
    /// Redirected to another interface.
    REDIRECT = 21, "redirect";
    /// To a balancer address but no service port: passed to the kernel's stack.
    PASS_LOCAL = 22, "pass_local";
    /// Flow entries of a closed or reused connection replaced by a new SYN.
    FLOW_REPLACED = 23, "flow_replaced";
    /// New flow from a client outside the service's allow-list: dropped.
    DROP_NOT_ELIGIBLE = 24, "drop_not_eligible";
    /// TCP SYN from a client outside the allow-list of a `deny = "reset"` service: answered with a RST.
    TX_RST_NOT_ELIGIBLE = 25, "tx_rst_not_eligible";
    /// New flow sent to the backend its client's session names.
    SESSION_HITS = 26, "session_hits";
    /// Session whose backend is no longer active (drained, down, removed): re-pinned.
    SESSION_REPINNED = 27, "session_repinned";
    /// Client packet of a flow whose backend failed (`on_backend_down = "reset"`): answered with a RST.
    TX_RST_BACKEND_DOWN = 28, "tx_rst_backend_down";
    /// Server packet, client RST (the pair is then removed) or UDP datagram of a flow
    /// whose backend failed and is being reset: dropped.
    DROP_BACKEND_DOWN = 29, "drop_backend_down";
    /// SYN proxy: SYN-ACKs with a cookie sent back to clients.
    SYNPROXY_SYNACK_SENT = 30, "synproxy_synack_sent";
    /// SYN proxy: ACKs with a valid cookie (the server side is then opened).
    SYNPROXY_COOKIE_VALID = 31, "synproxy_cookie_valid";
    /// SYN proxy: ACKs without a flow whose cookie is invalid or expired: dropped.
    SYNPROXY_COOKIE_INVALID = 32, "synproxy_cookie_invalid";
    /// SYN proxy: server SYN-ACKs answered, connection spliced.
    SYNPROXY_SERVER_DONE = 33, "synproxy_server_done";
    /// SYN proxy: server side refused (RST) or timed out; the client got an RST.
    SYNPROXY_SERVER_FAILED = 34, "synproxy_server_failed";
    /// SYN proxy: client packets before the server side was up: dropped for retransmission.
    SYNPROXY_CLIENT_EARLY = 35, "synproxy_client_early";
    /// SYN proxy: SYNs that could not be answered (no room to build the SYN-ACK): dropped.
    SYNPROXY_SYN_DROPPED = 36, "synproxy_syn_dropped";
    /// TCP SYN that also carries FIN or RST, to a service, with no flow entry: dropped
    /// (it cannot open a connection).
    DROP_TCP_BAD_FLAGS = 37, "drop_tcp_bad_flags";
    /// UDP length field other than the IP payload length, to a balancer address: dropped.
    DROP_UDP_BAD_LENGTH = 38, "drop_udp_bad_length";
    /// SYN or UDP datagram that would open a flow, with TTL <= 1: answered with an ICMP
    /// time exceeded from the VIP (no flow entry).
    TX_ICMP_TIME_EXCEEDED = 39, "tx_icmp_time_exceeded";
    /// TCP segment without SYN to a `unknown_segment = "reset"` service, with no flow
    /// entry: answered with a RST (a RST segment is dropped, `drop_no_flow`).
    TX_RST_NO_FLOW = 40, "tx_rst_no_flow";
    /// SYN proxy: SYNs to the server sent again (a client segment more than 1 s after
    /// the last one, while the server side opens): the SYN or its SYN-ACK was lost.
    SYNPROXY_SYN_RETRANSMITTED = 41, "synproxy_syn_retransmitted";
    /// ICMP error (destination unreachable, time exceeded, parameter problem) quoting a
    /// packet of a balanced connection: translated to the other side of the connection
    /// and forwarded (docs/architecture.md, "ICMP errors").
    ICMP_RELAYED = 42, "icmp_relayed";
    /// ICMP error to a balancer address quoting a TCP/UDP packet of no flow entry: passed
    /// to the kernel (the host's own connections get their errors).
    PASS_ICMP_NO_FLOW = 43, "pass_icmp_no_flow";
    /// ICMP error to a balancer address quoting neither TCP nor UDP, or a fragment's
    /// tail: passed to the kernel (the balancer sends no such packets; the host may).
    PASS_ICMP_OTHER_QUOTE = 44, "pass_icmp_other_quote";
    /// ICMP error to a balancer address too short for its header, a quoted IPv4 header
    /// and 8 bytes of the quoted payload: dropped.
    DROP_ICMP_TRUNCATED = 45, "drop_icmp_truncated";
    /// ICMP error to a balancer address whose quoted IPv4 header is not version 4 or has
    /// options (the balancer never sends them): dropped.
    DROP_ICMP_BAD_QUOTE = 46, "drop_icmp_bad_quote";
    /// Later IPv4 fragment (offset > 0) of TCP/UDP to a balancer address with no live
    /// record of its datagram's first fragment (it came first, was dropped, is older
    /// than 30 s, or its flow is gone): dropped, nothing recorded.
    DROP_FRAGMENT_NO_FIRST = 47, "drop_fragment_no_first";
    /// Later IPv4 fragment starting below the data already forwarded for its datagram
    /// (overlap, RFC 1858): dropped.
    DROP_FRAGMENT_OVERLAP = 48, "drop_fragment_overlap";
    /// First IPv4 fragment too short for the whole TCP header (options included) or
    /// the UDP header, or a TCP fragment at offset 8 (RFC 1858), to a balancer
    /// address: dropped, no flow entry, nothing recorded.
    DROP_FRAGMENT_TINY = 49, "drop_fragment_tiny";
    /// Later IPv4 fragments forwarded along their first fragment's flow (also counted
    /// in `flow_hits`).
    FRAGMENTS_FOLLOWED = 50, "fragments_followed";
    /// SYN, SYN-proxy cookie ACK or UDP datagram that would open a flow, with a wrong
    /// IPv4 header checksum: dropped (no flow entry).
    DROP_IP_BAD_CHECKSUM = 51, "drop_ip_bad_checksum";
    /// SYN or SYN-proxy cookie ACK that would open a flow, with a wrong TCP checksum:
    /// dropped (no flow entry).
    DROP_TCP_BAD_CHECKSUM = 52, "drop_tcp_bad_checksum";
    /// UDP datagram that would open a flow, with a wrong (non-zero) UDP checksum:
    /// dropped (no flow entry).
    DROP_UDP_BAD_CHECKSUM = 53, "drop_udp_bad_checksum";
    /// VLAN-tagged frame (802.1Q 0x8100 or 802.1ad 0x88a8 in the frame): passed untouched,
    /// never balanced.
    PASS_VLAN = 54, "pass_vlan";
    /// A packet for a stage program (the SYN proxy's handshake) while the stage is not
    /// installed, which only happens while a daemon loads: dropped.
    DROP_STAGE_MISSING = 55, "drop_stage_missing";
    /// Flow events (docs/scale-out.md, "Flow records") that found `FLOW_EVENTS` full:
    /// the event is lost, the packet forwarded as usual; peers learn the flow from a
    /// later change or the next sync.
    FLOW_EVENTS_LOST = 56, "flow_events_lost";
    /// Packet for a VIP in transition (`VIP_TRANSITIONS`) that finds no flow entry and
    /// would be refused (a TCP segment that cannot open a flow, a SYN-proxy ACK whose
    /// cookie is not ours, a UDP datagram, a later fragment without its first):
    /// encapsulated in IPIP and sent to the VIP's previous owner (docs/scale-out.md,
    /// "Forwarding to the previous owner"). No flow entry.
    TUNNEL_FORWARDED = 57, "tunnel_forwarded";
    /// IPIP packet from a tunnel peer (`TUNNEL_PEERS`) to the tunnel source or a
    /// balancer address: decapsulated, and the inner packet processed as if it had come
    /// directly (it is never forwarded through the tunnel again).
    TUNNEL_RECEIVED = 58, "tunnel_received";
    /// IPIP packet to the tunnel source or a balancer address from a source that is
    /// not a tunnel peer: dropped.
    DROP_TUNNEL_UNKNOWN_PEER = 59, "drop_tunnel_unknown_peer";
    /// IPIP packet from a tunnel peer whose inner packet is IPIP again, or that cannot
    /// carry the mark that keeps it from being forwarded again: dropped, never
    /// decapsulated twice.
    DROP_TUNNEL_NESTED = 60, "drop_tunnel_nested";
    /// Packet to forward to a previous owner that would exceed the egress MTU once
    /// encapsulated (20 bytes more): dropped. The back network needs an MTU of at least
    /// 1520 for full-size segments.
    DROP_TUNNEL_TOO_BIG = 61, "drop_tunnel_too_big";
    /// Packet to forward to a previous owner with no tunnel source set, no headroom, or
    /// no route or resolved neighbour toward the previous owner: dropped.
    DROP_TUNNEL_NO_ROUTE = 62, "drop_tunnel_no_route";
}
