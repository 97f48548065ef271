//! The decisions of ICMP error translation (docs/architecture.md, "ICMP errors"), pure
//! so they are unit-tested here; the XDP program (`lb-ebpf/src/icmp_relay.rs`) applies
//! them to the packet and its checksums.

use crate::{FlowEntry, FlowKey};

/// ICMP types whose quote names a packet the balancer may have sent, and so are
/// translated: destination unreachable, time exceeded, parameter problem.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;

/// Whether an ICMP message of `kind` is an error the balancer translates.
pub const fn is_relayed_error(kind: u8) -> bool {
    matches!(
        kind,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB
    )
}

/// The flow key to look up for a quoted packet (fields as in the packet): the quoted
/// tuple reversed. The quote is a packet the balancer sent, i.e. one some entry's
/// rewrite produced; the entry keyed by its reverse is the opposite direction's, whose
/// rewrite the error must follow to reach the quoted packet's real sender.
pub const fn quote_key(
    src_ip: u32,
    dst_ip: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> FlowKey {
    FlowKey {
        src_ip: dst_ip,
        dst_ip: src_ip,
        src_port: dst_port,
        dst_port: src_port,
        proto,
        _pad: [0; 3],
    }
}

/// The rewrite of one error, all fields in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relay {
    /// The quote's new addresses and ports: the packet as its sender sent it.
    pub quote_src_ip: u32,
    pub quote_dst_ip: u32,
    pub quote_src_port: u16,
    pub quote_dst_port: u16,
    /// The error's new outer addresses.
    pub outer_src_ip: u32,
    pub outer_dst_ip: u32,
}

/// How an error from `outer_src` whose quote was looked up as `key` (see
/// [`quote_key`]) and found `entry` is rewritten. The quote becomes the reverse of the
/// entry's rewritten tuple and the error goes to the entry's destination. In full NAT
/// it comes from the entry's source (a balancer address, the only one the far side
/// knows); in DNAT, where the entry leaves the client's address as it is, it keeps the
/// reporting router's.
pub const fn relay(key: &FlowKey, entry: &FlowEntry, outer_src: u32) -> Relay {
    let dnat = entry.new_src_ip == key.src_ip || entry.new_dst_ip == key.dst_ip;
    Relay {
        quote_src_ip: entry.new_dst_ip,
        quote_dst_ip: entry.new_src_ip,
        quote_src_port: entry.new_dst_port,
        quote_dst_port: entry.new_src_port,
        outer_src_ip: if dnat { outer_src } else { entry.new_src_ip },
        outer_dst_ip: entry.new_dst_ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FLOW_DIR_CLIENT_TO_SERVER, FLOW_DIR_SERVER_TO_CLIENT, IPPROTO_TCP};

    const CLIENT: u32 = ip(198, 18, 0, 2);
    const VIP: u32 = ip(198, 18, 1, 10);
    const SNAT: u32 = ip(198, 19, 1, 1);
    const BACKEND: u32 = ip(198, 19, 0, 11);
    const ROUTER: u32 = ip(198, 18, 0, 254);

    const fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_ne_bytes([a, b, c, d])
    }
    const fn port(p: u16) -> u16 {
        p.to_be()
    }

    /// An entry rewriting to `src:sport → dst:dport`.
    fn entry(src: u32, sport: u16, dst: u32, dport: u16, direction: u8) -> FlowEntry {
        FlowEntry {
            new_src_ip: src,
            new_src_port: port(sport),
            new_dst_ip: dst,
            new_dst_port: port(dport),
            direction,
            ..FlowEntry::default()
        }
    }

    fn key(src: u32, sport: u16, dst: u32, dport: u16) -> FlowKey {
        quote_key(dst, src, port(dport), port(sport), IPPROTO_TCP)
    }

    #[test]
    fn only_errors_are_relayed() {
        for kind in [3, 11, 12] {
            assert!(is_relayed_error(kind));
        }
        for kind in [0, 4, 5, 8, 13, 14, 255] {
            assert!(!is_relayed_error(kind), "type {kind}");
        }
    }

    #[test]
    fn the_lookup_key_is_the_quote_reversed() {
        let k = quote_key(VIP, CLIENT, port(80), port(40000), IPPROTO_TCP);
        assert_eq!(
            (k.src_ip, k.src_port, k.dst_ip, k.dst_port, k.proto),
            (CLIENT, port(40000), VIP, port(80), IPPROTO_TCP)
        );
    }

    #[test]
    fn full_nat_errors_go_to_the_real_sender_from_the_balancer() {
        // Quote VIP:80 → client (a server packet): the client → VIP entry.
        let forward = entry(SNAT, 20001, BACKEND, 8080, FLOW_DIR_CLIENT_TO_SERVER);
        let r = relay(&key(CLIENT, 40000, VIP, 80), &forward, ROUTER);
        assert_eq!(
            r,
            Relay {
                quote_src_ip: BACKEND,
                quote_dst_ip: SNAT,
                quote_src_port: port(8080),
                quote_dst_port: port(20001),
                outer_src_ip: SNAT,
                outer_dst_ip: BACKEND,
            }
        );
        // Quote SNAT:20001 → backend (a client packet): the backend → SNAT entry.
        let reverse = entry(VIP, 80, CLIENT, 40000, FLOW_DIR_SERVER_TO_CLIENT);
        let r = relay(&key(BACKEND, 8080, SNAT, 20001), &reverse, ROUTER);
        assert_eq!(
            r,
            Relay {
                quote_src_ip: CLIENT,
                quote_dst_ip: VIP,
                quote_src_port: port(40000),
                quote_dst_port: port(80),
                outer_src_ip: VIP,
                outer_dst_ip: CLIENT,
            }
        );
    }

    #[test]
    fn dnat_errors_keep_the_router_as_source() {
        let forward = entry(CLIENT, 40000, BACKEND, 80, FLOW_DIR_CLIENT_TO_SERVER);
        let r = relay(&key(CLIENT, 40000, VIP, 80), &forward, ROUTER);
        assert_eq!((r.outer_src_ip, r.outer_dst_ip), (ROUTER, BACKEND));
        assert_eq!((r.quote_src_ip, r.quote_dst_ip), (BACKEND, CLIENT));
        let reverse = entry(VIP, 80, CLIENT, 40000, FLOW_DIR_SERVER_TO_CLIENT);
        let r = relay(&key(BACKEND, 80, CLIENT, 40000), &reverse, ROUTER);
        assert_eq!((r.outer_src_ip, r.outer_dst_ip), (ROUTER, CLIENT));
        assert_eq!(
            (
                r.quote_src_ip,
                r.quote_src_port,
                r.quote_dst_ip,
                r.quote_dst_port
            ),
            (CLIENT, port(40000), VIP, port(80))
        );
    }
}
