//! What ADDR_FILTER must hold (docs/architecture.md, "Address filter"), decided without
//! I/O: the bit of every address a packet can be the balancer's by. A set bit that is
//! not needed only costs a packet the lookups; a needed bit that is clear would pass a
//! balanced packet to the kernel, so bits are added before the entries that need them
//! and removed only once no flow entry can use them.
//!
//! Needed: the VIPs and SNAT addresses (destinations of forward and full-NAT reverse
//! keys, and every `LOCAL_ADDRS` entry), the backends (sources of every reverse key;
//! DNAT replies go to the client's own address), and, after a reload dropped any of
//! them, the addresses the live flows are still keyed by.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

pub use lb_common::addr_filter::AddrFilter;
use lb_common::wire::addr_to_wire;
use lb_common::{FLOW_DIR_CLIENT_TO_SERVER, FLOW_DIR_SERVER_TO_CLIENT, FlowEntry, FlowKey};

/// Collector passes to begin after an address left the config before its bit may go:
/// the first may have begun while a packet that read the old maps was still making a
/// flow with it; the second begins after every such packet is done, so its snapshot
/// holds all flows that can use the address.
const PASSES_BEFORE_RETIRED: u64 = 2;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrFilterState {
    /// VIPs, SNAT addresses and backend addresses of the installed services.
    config: BTreeSet<Ipv4Addr>,
    /// Addresses the config dropped → passes begun when it did.
    retiring: BTreeMap<Ipv4Addr, u64>,
    /// Bits of the addresses the flows were keyed by at the last pass.
    flows: AddrFilter,
    /// Collector passes begun so far.
    passes_begun: u64,
    /// What ADDR_FILTER holds, when known.
    written: Option<AddrFilter>,
}

/// The bits of the addresses `entries` are keyed by that let their packets through:
/// a forward key's destination (VIP), a reverse key's source (backend).
pub fn flow_bits(entries: &[(FlowKey, FlowEntry)]) -> AddrFilter {
    let mut bits = AddrFilter::EMPTY;
    for (key, entry) in entries {
        match entry.direction {
            FLOW_DIR_CLIENT_TO_SERVER => bits.insert(key.dst_ip),
            FLOW_DIR_SERVER_TO_CLIENT => bits.insert(key.src_ip),
            _ => {
                bits.insert(key.dst_ip);
                bits.insert(key.src_ip);
            }
        }
    }
    bits
}

fn bits_of<'a>(addrs: impl IntoIterator<Item = &'a Ipv4Addr>) -> AddrFilter {
    let mut bits = AddrFilter::EMPTY;
    for &addr in addrs {
        bits.insert(addr_to_wire(addr));
    }
    bits
}

impl AddrFilterState {
    /// For maps an earlier daemon left: the addresses installed there and the flows it
    /// left, whose addresses keep their bits until the collector has seen them go.
    pub fn adopted(
        installed: impl IntoIterator<Item = Ipv4Addr>,
        entries: &[(FlowKey, FlowEntry)],
    ) -> AddrFilterState {
        AddrFilterState {
            config: installed.into_iter().collect(),
            flows: flow_bits(entries),
            ..AddrFilterState::default()
        }
    }

    /// The state once `config` (its VIPs, SNAT addresses and backends) is installed:
    /// the addresses it dropped retire, those it brings back stop retiring.
    pub fn with_config(&self, config: BTreeSet<Ipv4Addr>) -> AddrFilterState {
        let mut next = self.clone();
        for &addr in self.config.difference(&config) {
            next.retiring.entry(addr).or_insert(self.passes_begun);
        }
        next.retiring.retain(|addr, _| !config.contains(addr));
        next.config = config;
        next
    }

    /// The bitmap the data path needs now.
    pub fn wanted(&self) -> AddrFilter {
        bits_of(self.config.iter().chain(self.retiring.keys())).union(&self.flows)
    }

    /// The bitmap to write, if ADDR_FILTER does not hold it already.
    pub fn write_needed(&self) -> Option<AddrFilter> {
        let wanted = self.wanted();
        (self.written != Some(wanted)).then_some(wanted)
    }

    pub fn mark_written(&mut self, filter: AddrFilter) {
        self.written = Some(filter);
    }

    /// After a failed write: the map's contents are unknown, the next apply writes.
    pub fn forget_written(&mut self) {
        self.written = None;
    }

    /// A collector pass begins (before it reads the flow table); its number.
    pub fn begin_pass(&mut self) -> u64 {
        self.passes_begun += 1;
        self.passes_begun
    }

    /// Pass `pass` read `entries`: their addresses replace the previous pass's, and the
    /// retired addresses no flow can use any more leave.
    pub fn end_pass(&mut self, pass: u64, entries: &[(FlowKey, FlowEntry)]) {
        self.flows = flow_bits(entries);
        self.retiring
            .retain(|_, dropped_at| pass < *dropped_at + PASSES_BEFORE_RETIRED);
    }

    /// Addresses whose bit stays only for flows made before a reload dropped them.
    pub fn retiring(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.retiring.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::IPPROTO_TCP;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);

    fn contains(filter: &AddrFilter, addr: Ipv4Addr) -> bool {
        filter.contains(addr_to_wire(addr))
    }

    fn set(addrs: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
        addrs.iter().copied().collect()
    }

    fn entry(src: Ipv4Addr, dst: Ipv4Addr, direction: u8) -> (FlowKey, FlowEntry) {
        (
            FlowKey {
                src_ip: addr_to_wire(src),
                dst_ip: addr_to_wire(dst),
                src_port: 1,
                dst_port: 2,
                proto: IPPROTO_TCP,
                _pad: [0; 3],
            },
            FlowEntry {
                direction,
                ..FlowEntry::default()
            },
        )
    }

    /// A DNAT connection: client → VIP forward, backend → client reverse.
    fn dnat_pair(vip: Ipv4Addr) -> Vec<(FlowKey, FlowEntry)> {
        vec![
            entry(CLIENT, vip, FLOW_DIR_CLIENT_TO_SERVER),
            entry(BACKEND, CLIENT, FLOW_DIR_SERVER_TO_CLIENT),
        ]
    }

    #[test]
    fn every_configured_address_is_in_the_first_write() {
        let state = AddrFilterState::default().with_config(set(&[VIP, SNAT, BACKEND]));
        let filter = state.write_needed().expect("a first write");
        for addr in [VIP, SNAT, BACKEND] {
            assert!(contains(&filter, addr), "{addr}");
        }
        assert_eq!(filter.bits_set(), 3);
        assert!(!contains(&filter, CLIENT));
    }

    #[test]
    fn an_unchanged_filter_is_not_written_again() {
        let mut state = AddrFilterState::default().with_config(set(&[VIP, BACKEND]));
        let filter = state.write_needed().unwrap();
        state.mark_written(filter);
        assert_eq!(state.with_config(set(&[VIP, BACKEND])).write_needed(), None);
        state.forget_written();
        assert_eq!(state.write_needed(), Some(filter));
    }

    #[test]
    fn flows_keep_a_dropped_vip_and_backend_until_two_passes_after_they_end() {
        let mut state = AddrFilterState::default().with_config(set(&[VIP, BACKEND]));
        let pass = state.begin_pass();
        state.end_pass(pass, &dnat_pair(VIP));
        // The reload drops both: their flows live on, so the bits stay.
        let mut state = state.with_config(set(&[VIP2]));
        let filter = state.wanted();
        assert!(contains(&filter, VIP) && contains(&filter, BACKEND) && contains(&filter, VIP2));
        // A reload adds bits only, in one write before anything else (old ∪ new).
        assert!(
            filter.covers(
                &AddrFilterState::default()
                    .with_config(set(&[VIP, BACKEND]))
                    .wanted()
            )
        );
        // The first pass after it may have raced a packet that made a flow: both stay.
        let pass = state.begin_pass();
        state.end_pass(pass, &[]);
        assert!(contains(&state.wanted(), VIP) && contains(&state.wanted(), BACKEND));
        // The second still sees the connection: its flows hold the bits.
        let pass = state.begin_pass();
        state.end_pass(pass, &dnat_pair(VIP));
        assert_eq!(state.retiring().count(), 0);
        assert!(contains(&state.wanted(), VIP) && contains(&state.wanted(), BACKEND));
        // Once the flows are gone, only the config's address is left.
        let pass = state.begin_pass();
        state.end_pass(pass, &[]);
        let filter = state.wanted();
        assert!(!contains(&filter, VIP) && !contains(&filter, BACKEND));
        assert!(contains(&filter, VIP2));
    }

    #[test]
    fn an_address_back_in_the_config_stops_retiring() {
        let state = AddrFilterState::default().with_config(set(&[VIP, BACKEND]));
        let state = state
            .with_config(set(&[VIP]))
            .with_config(set(&[VIP, BACKEND]));
        assert_eq!(state.retiring().count(), 0);
        let mut state = state;
        for _ in 0..3 {
            let pass = state.begin_pass();
            state.end_pass(pass, &[]);
        }
        assert!(contains(&state.wanted(), BACKEND));
    }

    #[test]
    fn a_flow_lets_through_its_forward_destination_and_reverse_source_only() {
        let bits = flow_bits(&dnat_pair(VIP));
        assert!(contains(&bits, VIP) && contains(&bits, BACKEND));
        // DNAT reverse keys go to the client: its address needs no bit.
        assert!(!contains(&bits, CLIENT));
    }

    #[test]
    fn an_adopted_table_keeps_the_flows_it_found() {
        let mut state = AddrFilterState::adopted([VIP, BACKEND], &dnat_pair(VIP2));
        assert!(
            state.write_needed().is_some(),
            "the map's contents are unknown"
        );
        let state2 = state.with_config(set(&[VIP]));
        assert!(contains(&state2.wanted(), VIP2), "an adopted flow's VIP");
        assert!(contains(&state2.wanted(), BACKEND), "retiring");
        let pass = state.begin_pass();
        state.end_pass(pass, &[]);
        assert!(!contains(&state.wanted(), VIP2));
    }
}
