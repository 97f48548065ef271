//! Several SNAT addresses (`snat_ips`): new flows spread over them, and a flow whose
//! address has no free port takes the next one.

use std::collections::BTreeMap;

use lb_common::FlowEntry;

use super::*;

const SNAT2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);

/// `CONFIG` with service "web" (VIP:80 → SERVER1:8080) on SNAT and SNAT2.
fn two_snat_ips() -> String {
    CONFIG.replacen(
        "snat_ip = \"198.19.1.1\"\n",
        "snat_ips = [\"198.19.1.1\", \"198.19.1.2\"]\n",
        1,
    )
}

/// Opens client:`sport` → VIP:80 and returns the forward entry's SNAT address.
fn open(h: &mut Harness, sport: u16) -> Ipv4Addr {
    let (verdict, out) = h.run(&Tcp::syn(CLIENT, sport, VIP, 80).build(&[]));
    assert_eq!(verdict, XDP_REDIRECT);
    let forward = h
        .flow(&flow_key(CLIENT, sport, VIP, 80, IPPROTO_TCP))
        .unwrap();
    let snat = Ipv4Addr::from(u32::from_be(forward.new_src_ip));
    let sent = ParsedTcp::of(&out);
    assert_eq!(
        (sent.src, sent.dst),
        (snat, SERVER1),
        "the packet as the entry says"
    );
    // The server's answer comes back to that address and port.
    let reverse = flow_key(
        SERVER1,
        8080,
        snat,
        u16::from_be(forward.new_src_port),
        IPPROTO_TCP,
    );
    assert!(h.flow(&reverse).is_some(), "reverse entry under {snat}");
    snat
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn new_flows_spread_over_the_snat_addresses() {
    with_harness(|h| {
        h.apply_config(&two_snat_ips()).unwrap();
        let mut per_address: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        for sport in 30000..30100u16 {
            *per_address.entry(open(h, sport)).or_default() += 1;
        }
        assert_eq!(
            per_address.keys().copied().collect::<Vec<_>>(),
            [SNAT, SNAT2]
        );
        assert!(per_address.values().all(|&n| n >= 25), "{per_address:?}");
        assert_eq!(h.flows().len(), 200);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_full_snat_address_passes_new_flows_to_the_next() {
    with_harness(|h| {
        h.apply_config(&two_snat_ips()).unwrap();
        // Every port of SNAT towards SERVER1:8080 taken (the range is 20000-20999).
        let taken = FlowEntry::default();
        for port in 20000..=20999u16 {
            h.set_flow(flow_key(SERVER1, 8080, SNAT, port, IPPROTO_TCP), taken)
                .unwrap();
        }
        for sport in 30000..30020u16 {
            assert_eq!(open(h, sport), SNAT2, "client port {sport}");
        }
        assert_eq!(h.counter(counters::DROP_SNAT_EXHAUSTED), 0);
        // Both full: the flow is refused and leaves nothing behind.
        for port in 20000..=20999u16 {
            let key = flow_key(SERVER1, 8080, SNAT2, port, IPPROTO_TCP);
            if h.flow(&key).is_none() {
                h.set_flow(key, taken).unwrap();
            }
        }
        let before = h.flows().len();
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 31000, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_SNAT_EXHAUSTED), 1);
        assert_eq!(h.flows().len(), before, "no entry made");
        assert!(
            h.flow(&flow_key(CLIENT, 31000, VIP, 80, IPPROTO_TCP))
                .is_none()
        );
    });
}
