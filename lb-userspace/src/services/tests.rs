use super::{
    plan::{FreeIds, wire_key},
    *,
};

#[test]
fn session_stays_only_while_fresh_and_its_backend_is_in_the_ring() {
    let policy = SessionPolicy {
        timeout_ns: 10,
        live_backends: [1, 3].into(),
    };
    assert!(policy.keeps(1, 100, 110));
    assert!(!policy.keeps(1, 100, 111), "idle beyond the timeout");
    assert!(!policy.keeps(2, 100, 105), "backend left the ring");
}

#[test]
fn ids_freed_in_this_apply_are_handed_out_last() {
    let mut ids = FreeIds::new([0, 1].into_iter(), 3, "service");
    ids.last_resort.push(1);
    assert_eq!(ids.take().unwrap(), 2);
    assert_eq!(ids.take().unwrap(), 1, "only when nothing else is free");
    assert!(ids.take().is_err());
}

// Plans, checked without a kernel: each plan's ops run against a model of the maps
// that checks, after every single op, what a packet could see.

use std::{net::Ipv4Addr, path::Path};

use lb_common::{
    Backend, SERVICE_FLAG_AUTH_REQUIRED, SERVICE_FLAG_NO_FLOW_RST, Service, ServiceKey,
};

use crate::domain::Limits;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
const SERVER1: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const SERVER2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
/// Ring size of a service whose lightest backend has at least 1% of the weight.
const SMALL_RING: u32 = 1_021;

fn capacity() -> Limits {
    Limits {
        max_services: 8,
        max_backends: 64,
        max_flows: 1024,
        max_ring_slots: 16 * 2 * 16_381,
    }
}

/// One `[[service]]` table: backends as (address, weight), port 8080.
fn service(name: &str, vip: Ipv4Addr, backends: &[(Ipv4Addr, u32)], extra: &str) -> String {
    let mut text = format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\nsnat_ip = \"{SNAT}\"\n{extra}\n"
    );
    for (addr, weight) in backends {
        text +=
            &format!("[[service.backend]]\naddress = \"{addr}\"\nport = 8080\nweight = {weight}\n");
    }
    text
}

fn config(services: &[String]) -> Config {
    let text = format!(
        "name = \"plantest\"\n[interfaces]\nattach = [\"ext0\"]\n{}",
        services.concat()
    );
    Config::parse(&text, Path::new("plan-test.toml")).expect("config")
}

fn web(backends: &[(Ipv4Addr, u32)]) -> Config {
    config(&[service("web", VIP, backends, "")])
}

/// The maps as a packet sees them, changed one op at a time.
struct Model {
    capacity: Limits,
    services: HashMap<ServiceKey, Service>,
    backends: HashMap<u32, Backend>,
    rings: Vec<u64>,
    eligibility: BTreeSet<(u32, Prefix)>,
    local_addrs: BTreeMap<Ipv4Addr, u32>,
    snat_pools: HashMap<u32, lb_common::SnatPool>,
    addr_filter: lb_common::addr_filter::AddrFilter,
    /// Ids whose counters and sessions were cleared by the last run.
    cleared_services: BTreeSet<u32>,
    cleared_backends: BTreeSet<u32>,
    /// Ops the last run executed.
    ops: Vec<Op>,
}

impl Model {
    fn new(capacity: Limits) -> Model {
        Model {
            capacity,
            services: HashMap::new(),
            backends: HashMap::new(),
            rings: vec![0; capacity.max_ring_slots as usize],
            eligibility: BTreeSet::new(),
            local_addrs: BTreeMap::new(),
            snat_pools: HashMap::new(),
            addr_filter: lb_common::addr_filter::AddrFilter::EMPTY,
            cleared_services: BTreeSet::new(),
            cleared_backends: BTreeSet::new(),
            ops: Vec::new(),
        }
    }

    fn plan(&self, table: &ServiceTable, config: &Config, overrides: &Overrides) -> Result<Plan> {
        plan(
            table,
            config,
            overrides,
            KernelView {
                capacity: self.capacity,
                ring_slots: &self.rings,
            },
        )
    }

    /// Plans and executes against the model; returns the summary.
    fn apply(
        &mut self,
        table: &mut ServiceTable,
        config: &Config,
        overrides: &Overrides,
    ) -> ApplySummary {
        let plan = self.plan(table, config, overrides).expect("plan");
        self.run(&plan.ops, config);
        *table = plan.installed;
        plan.summary
    }

    fn run(&mut self, ops: &[Op], config: &Config) {
        self.cleared_services.clear();
        self.cleared_backends.clear();
        self.ops = ops.to_vec();
        for op in ops {
            self.step(op, config);
            self.check_consistent();
        }
    }

    fn live_ring(&self, entry: &Service) -> std::ops::Range<usize> {
        entry.ring_offset as usize..(entry.ring_offset + entry.ring_size) as usize
    }

    fn step(&mut self, op: &Op, config: &Config) {
        match op {
            Op::WriteSettings(_) => {}
            Op::WriteBackend { id, backend } => {
                assert!(*id < self.capacity.max_backends);
                self.backends.insert(*id, *backend);
            }
            Op::RemoveService(key) => {
                assert!(self.services.remove(key).is_some(), "{op:?}");
            }
            Op::ClearServiceStats(id) => {
                self.cleared_services.insert(*id);
            }
            Op::ClearBackendStats(id) => {
                self.cleared_backends.insert(*id);
            }
            Op::RemoveSessionsOfServices(ids) => {
                assert!(
                    ids.is_subset(&self.cleared_services),
                    "counters cleared too"
                );
            }
            Op::RemoveSessionsOfBackends(ids) => {
                assert!(
                    ids.is_subset(&self.cleared_backends),
                    "counters cleared too"
                );
            }
            Op::WriteRing { first_slot, ring } => {
                let target = *first_slot as usize..*first_slot as usize + ring.len();
                for entry in self.services.values() {
                    let live = self.live_ring(entry);
                    assert!(
                        target.end <= live.start || live.end <= target.start,
                        "{op:?} writes into the live ring of service {}",
                        entry.id
                    );
                }
                for (slot, &id) in self.rings[target].iter_mut().zip(ring) {
                    *slot = u64::from(id);
                }
            }
            Op::AddEligibility { service_id, prefix } => {
                assert!(self.eligibility.insert((*service_id, *prefix)), "{op:?}");
                assert!(self.eligibility.len() <= lb_common::MAX_ELIGIBILITY_PREFIXES as usize);
            }
            Op::RemoveEligibility { service_id, prefix } => {
                self.eligibility.remove(&(*service_id, *prefix));
            }
            Op::WriteService { key, entry } => {
                // Its allow-list is complete before the entry refers to it.
                let service = config
                    .services
                    .iter()
                    .find(|s| wire_key(service_addr(s)) == *key)
                    .expect("a configured service");
                for prefix in service.allow.iter().flatten() {
                    assert!(self.eligibility.contains(&(entry.id, *prefix)), "{op:?}");
                }
                self.services.insert(*key, *entry);
            }
            Op::WriteLocalAddr { addr, kind } => {
                self.local_addrs.insert(*addr, *kind);
            }
            Op::RemoveLocalAddr(addr) => {
                assert!(self.local_addrs.remove(addr).is_some(), "{op:?}");
            }
            Op::WriteSnatPool { service_id, pool } => {
                self.snat_pools.insert(*service_id, *pool);
            }
            Op::WriteAddrFilter(filter) => {
                // An apply only adds bits: flows of dropped addresses live on.
                assert!(filter.covers(&self.addr_filter), "{op:?} clears bits");
                self.addr_filter = **filter;
            }
        }
    }

    /// What every packet relies on: a service's VIP is a local address (the data path
    /// looks there first), a service's live ring names only backends that exist, and two
    /// services' regions never overlap.
    fn check_consistent(&self) {
        // The address filter lets through every address an entry names.
        let wire = lb_common::wire::addr_to_wire;
        for addr in self.local_addrs.keys() {
            assert!(
                self.addr_filter.contains(wire(*addr)),
                "local address {addr} filtered out: {:?}",
                self.ops
            );
        }
        for backend in self.backends.values() {
            if let Some(addr) = backend.address() {
                assert!(
                    self.addr_filter.contains(wire(*addr.ip())),
                    "backend {addr} filtered out: {:?}",
                    self.ops
                );
            }
        }
        let mut regions: Vec<(u32, u32)> = Vec::new();
        for (key, entry) in &self.services {
            assert_eq!(
                self.local_addrs.get(&Ipv4Addr::from(u32::from_be(key.vip))),
                Some(&lb_common::ADDR_KIND_VIP),
                "service {} installed while its VIP is not a local address: {:?}",
                entry.id,
                self.ops
            );
            if entry.backend_count > 0 {
                for &slot in &self.rings[self.live_ring(entry)] {
                    let backend = self.backends.get(&(slot as u32));
                    assert!(
                        backend.is_some_and(|b| b.address().is_some()),
                        "service {} rings backend id {slot}, which has no entry",
                        entry.id
                    );
                }
            }
            let base = entry.ring_offset.min(entry.ring_idle_offset);
            regions.push((base, base + 2 * entry.ring_size));
        }
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "regions overlap: {regions:?}");
        }
    }

    /// Index of the first op `matches` picks.
    fn position(&self, matches: impl Fn(&Op) -> bool) -> usize {
        self.ops
            .iter()
            .position(matches)
            .unwrap_or_else(|| panic!("no such op in {:?}", self.ops))
    }

    fn entry(&self, vip: Ipv4Addr) -> Service {
        self.services[&ServiceKey::new(vip, 80, lb_common::IPPROTO_TCP)]
    }

    /// Backend ids in a service's live ring, with their slot counts.
    fn ring_counts(&self, vip: Ipv4Addr) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &slot in &self.rings[self.live_ring(&self.entry(vip))] {
            *counts.entry(slot as u32).or_default() += 1;
        }
        counts
    }
}

fn is_ring(op: &Op) -> bool {
    matches!(op, Op::WriteRing { .. })
}

fn is_service(op: &Op) -> bool {
    matches!(op, Op::WriteService { .. })
}

#[test]
fn a_new_service_gets_backends_and_its_ring_before_its_entry() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let summary = model.apply(
        &mut table,
        &web(&[(SERVER1, 1), (SERVER2, 1)]),
        &Overrides::default(),
    );
    assert_eq!(summary.services_added, 1);
    assert_eq!(summary.backends_added, 2);
    assert_eq!(summary.rings_swapped, 1);

    let backends = model.position(|op| matches!(op, Op::WriteBackend { .. }));
    let ring = model.position(is_ring);
    let entry = model.position(is_service);
    assert!(backends < ring && ring < entry, "{:?}", model.ops);
    assert_eq!(model.local_addrs[&VIP], lb_common::ADDR_KIND_VIP);
    assert_eq!(model.local_addrs[&SNAT], lb_common::ADDR_KIND_SNAT);
    assert_eq!(model.entry(VIP).backend_count, 2);
    let counts = model.ring_counts(VIP);
    assert_eq!(counts.values().sum::<usize>(), SMALL_RING as usize);
    // Counted are the slots that changed: the pool starts zeroed, backend id 0's were 0.
    let first = table.backend_id((SERVER1, 8080)).unwrap();
    assert_eq!(first, 0);
    assert_eq!(
        summary.ring_slots_written,
        SMALL_RING as usize - counts[&first]
    );

    // Nothing changed: nothing to do.
    let plan = model
        .plan(
            &table,
            &web(&[(SERVER1, 1), (SERVER2, 1)]),
            &Overrides::default(),
        )
        .unwrap();
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    assert_eq!(plan.summary, ApplySummary::default());
}

#[test]
fn a_removed_backend_leaves_the_ring_first_and_its_id_is_freed_after() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    model.apply(
        &mut table,
        &web(&[(SERVER1, 1), (SERVER2, 1)]),
        &Overrides::default(),
    );
    let before = model.entry(VIP);
    let gone = table.backend_id((SERVER2, 8080)).unwrap();

    let summary = model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    assert_eq!(summary.backends_removed, 1);
    assert_eq!(summary.services_changed, 1);
    // Written into the idle half, then flipped by the entry.
    let after = model.entry(VIP);
    assert_eq!(after.ring_offset, before.ring_idle_offset);
    assert_eq!(after.ring_idle_offset, before.ring_offset);
    let flip = model.position(is_service);
    let freed = model.position(|op| {
        matches!(op, Op::WriteBackend { id, backend } if *id == gone && backend.address().is_none())
    });
    assert!(
        model.position(is_ring) < flip && flip < freed,
        "{:?}",
        model.ops
    );
    assert!(model.cleared_backends.contains(&gone));
    assert_eq!(
        model.ops.last(),
        Some(&Op::RemoveSessionsOfBackends([gone].into()))
    );
    assert_eq!(table.backend_id((SERVER2, 8080)), None);
}

#[test]
fn a_changed_weight_swaps_the_ring_and_writes_no_backend() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let config = web(&[(SERVER1, 100), (SERVER2, 100)]);
    model.apply(&mut table, &config, &Overrides::default());
    let region = table.services().next().unwrap().rings;

    let mut heavier = Overrides::default();
    heavier.weights.insert(("web".into(), (SERVER1, 8080)), 300);
    let summary = model.apply(&mut table, &config, &heavier);
    assert_eq!(summary.rings_swapped, 1);
    assert!(
        model.ops.iter().all(|op| is_ring(op) || is_service(op)),
        "{:?}",
        model.ops
    );
    let installed = table.services().next().unwrap();
    assert_eq!(installed.rings, region, "same size: same region");
    assert_eq!(installed.effective_weights, vec![300, 100]);
    let counts = model.ring_counts(VIP);
    let heavy = counts[&table.backend_id((SERVER1, 8080)).unwrap()];
    assert!((740..790).contains(&heavy), "{counts:?}");
}

#[test]
fn a_new_ring_size_moves_the_service_to_a_new_region_and_frees_the_old() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    let old = table.services().next().unwrap().rings;
    assert_eq!(old.size, SMALL_RING);

    // The lightest backend needs 100 slots out of 101 × 100: a larger ring.
    model.apply(
        &mut table,
        &web(&[(SERVER1, 1), (SERVER2, 100)]),
        &Overrides::default(),
    );
    let new = table.services().next().unwrap().rings;
    assert_eq!(new.size, 16_381);
    assert_ne!(new.base, old.base);
    let entry = model.entry(VIP);
    assert_eq!(
        (entry.ring_offset, entry.ring_size),
        (new.offset(0), new.size)
    );
    assert_eq!(
        model.ops.iter().find(|op| is_ring(op)),
        Some(&Op::WriteRing {
            first_slot: new.offset(0),
            ring: model.rings[new.slots(0)]
                .iter()
                .map(|&s| s as u32)
                .collect()
        })
    );

    // The old region was freed after the flip: another service fits in it.
    let two = config(&[
        service("web", VIP, &[(SERVER1, 1), (SERVER2, 100)], ""),
        service("api", VIP2, &[(SERVER1, 1)], ""),
    ]);
    model.apply(&mut table, &two, &Overrides::default());
    let api = table.services().find(|s| s.config.name == "api").unwrap();
    assert_eq!(api.rings.base, old.base);
}

#[test]
fn a_changed_allow_list_adds_before_the_entry_and_removes_after() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let allow = |prefix: &str| {
        config(&[service(
            "web",
            VIP,
            &[(SERVER1, 1)],
            &format!("allow = [\"{prefix}\"]"),
        )])
    };
    model.apply(&mut table, &allow("198.18.0.0/24"), &Overrides::default());
    assert_ne!(model.entry(VIP).flags & SERVICE_FLAG_AUTH_REQUIRED, 0);
    let id = model.entry(VIP).id;
    let old: Prefix = "198.18.0.0/24".parse().unwrap();
    let new: Prefix = "198.18.2.0/24".parse().unwrap();
    assert_eq!(model.eligibility, [(id, old)].into());

    model.apply(&mut table, &allow("198.18.2.0/24"), &Overrides::default());
    let added =
        model.position(|op| matches!(op, Op::AddEligibility { prefix, .. } if *prefix == new));
    let removed =
        model.position(|op| matches!(op, Op::RemoveEligibility { prefix, .. } if *prefix == old));
    let entry = model.position(is_service);
    assert!(added < entry && entry < removed, "{:?}", model.ops);
    assert!(!model.ops.iter().any(is_ring), "same backends: same ring");
    assert_eq!(model.eligibility, [(id, new)].into());
}

#[test]
fn a_drain_marks_the_backend_before_the_ring_leaves_it_out() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let config = web(&[(SERVER1, 1), (SERVER2, 1)]);
    model.apply(&mut table, &config, &Overrides::default());
    let drained_id = table.backend_id((SERVER2, 8080)).unwrap();

    let mut drained = Overrides::default();
    drained.drained.insert((SERVER2, 8080));
    model.apply(&mut table, &config, &drained);
    let marked = model.position(|op| {
        matches!(op, Op::WriteBackend { id, backend }
            if *id == drained_id && backend.state == lb_common::BACKEND_STATE_DRAINING)
    });
    assert!(marked < model.position(is_ring), "{:?}", model.ops);
    assert_eq!(model.entry(VIP).backend_count, 1);
    assert!(!model.ring_counts(VIP).contains_key(&drained_id));
    assert_eq!(table.draining(), [(SERVER2, 8080)].into());
    assert!(
        model.cleared_backends.is_empty(),
        "a drained backend keeps its id"
    );
}

#[test]
fn a_removed_service_stops_new_flows_and_its_id_takes_nothing_along() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let two = config(&[
        service("web", VIP, &[(SERVER1, 1)], ""),
        service("api", VIP2, &[(SERVER2, 1)], ""),
    ]);
    model.apply(&mut table, &two, &Overrides::default());
    let api_id = table
        .services()
        .find(|s| s.config.name == "api")
        .unwrap()
        .id;

    let summary = model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    assert_eq!((summary.services_removed, summary.backends_removed), (1, 1));
    assert_eq!(
        model.ops[0],
        Op::RemoveService(ServiceKey::new(VIP2, 80, 6))
    );
    assert!(model.cleared_services.contains(&api_id));
    assert!(
        model
            .ops
            .contains(&Op::RemoveSessionsOfServices([api_id].into()))
    );
    assert!(model.ops.contains(&Op::RemoveLocalAddr(VIP2)));
    assert_eq!(model.services.len(), 1);
}

#[test]
fn the_address_filter_opens_before_a_new_service_and_closes_only_after_its_flows() {
    let wire = lb_common::wire::addr_to_wire;
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    let two = config(&[
        service("web", VIP, &[(SERVER1, 1)], ""),
        service("api", VIP2, &[(SERVER2, 1)], ""),
    ]);
    model.apply(&mut table, &two, &Overrides::default());
    // First, before the local address, backend or service that needs it.
    assert!(
        matches!(model.ops[0], Op::WriteAddrFilter(_)),
        "{:?}",
        model.ops
    );
    for addr in [VIP, VIP2, SNAT, SERVER1, SERVER2] {
        assert!(model.addr_filter.contains(wire(addr)), "{addr}");
    }

    // Removed: its flows live on, so its bits stay (no write at all).
    model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    assert!(
        !model
            .ops
            .iter()
            .any(|op| matches!(op, Op::WriteAddrFilter(_)))
    );
    assert!(model.addr_filter.contains(wire(VIP2)));
    let retiring: BTreeSet<Ipv4Addr> = table.addr_filter.retiring().collect();
    assert_eq!(retiring, [VIP2, SERVER2].into());
    // Two collector passes later, with no flow left, the bits go.
    for _ in 0..2 {
        let pass = table.addr_filter.begin_pass();
        table.addr_filter.end_pass(pass, &[]);
    }
    let filter = table.addr_filter.write_needed().expect("bits to clear");
    assert!(!filter.contains(wire(VIP2)) && !filter.contains(wire(SERVER2)));
    assert!(filter.contains(wire(VIP)) && filter.contains(wire(SERVER1)));
}

/// A refused plan leaves the installed state as it was and has no op to execute.
fn assert_refused(model: &Model, table: &ServiceTable, config: &Config, wanted: &str) {
    let before = format!("{table:?}");
    let error = model
        .plan(table, config, &Overrides::default())
        .expect_err("refused");
    assert!(format!("{error:#}").contains(wanted), "{error:#}");
    assert_eq!(format!("{table:?}"), before);
}

#[test]
fn a_plan_beyond_a_capacity_is_refused_whole() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());

    let two = config(&[
        service("web", VIP, &[(SERVER1, 1)], ""),
        service("api", VIP2, &[(SERVER2, 1)], ""),
    ]);
    let tighter = |limit: fn(&mut Limits)| {
        let mut small = capacity();
        limit(&mut small);
        Model::new(small)
    };
    let refused = |limit: fn(&mut Limits), config: &Config, wanted: &str| {
        assert_refused(&tighter(limit), &table, config, wanted);
    };
    refused(|c| c.max_services = 1, &two, "2 services configured");
    refused(
        |c| c.max_backends = 1,
        &web(&[(SERVER1, 1), (SERVER2, 1)]),
        "no free backend id",
    );
    // Room for one small service's two rings, not a larger ring.
    refused(
        |c| c.max_ring_slots = 2 * 2_039,
        &web(&[(SERVER1, 1), (SERVER2, 100)]),
        "the Maglev ring pool is full",
    );
}

#[test]
fn an_allow_list_change_that_cannot_fit_old_and_new_side_by_side_is_refused() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let half = lb_common::MAX_ELIGIBILITY_PREFIXES;
    let allow = |from: u32| {
        let list: Vec<String> = (from..from + half)
            .map(|i| {
                format!(
                    "\"{}\"",
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)
                )
            })
            .collect();
        config(&[service(
            "web",
            VIP,
            &[(SERVER1, 1)],
            &format!("allow = [{}]", list.join(", ")),
        )])
    };
    model.apply(&mut table, &allow(0), &Overrides::default());
    assert_eq!(model.eligibility.len(), half as usize);
    assert_refused(&model, &table, &allow(half), "make the change in two steps");
}

/// The table as `ServiceTable::adopt` reads it back from the model's maps: ids, rings
/// and live halves, but no backend lists.
fn read_back(table: &ServiceTable) -> ServiceTable {
    let mut adopted = table.clone();
    for service in adopted.services.values_mut() {
        service.backend_ids.clear();
        service.effective_weights.clear();
    }
    adopted
}

#[test]
fn after_a_failed_entry_write_the_next_apply_writes_the_entry_again() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    // Only the entry changes (affinity on): same backends, same ring.
    let sticky = config(&[service(
        "web",
        VIP,
        &[(SERVER1, 1)],
        "affinity_timeout = 30",
    )]);
    let planned = model
        .plan(&table, &sticky, &Overrides::default())
        .expect("plan");
    assert!(planned.ops.iter().any(is_service), "{:?}", planned.ops);

    // The entry write failed: the kernel still holds the old entry, so the service
    // keeps no backend list and the next plan writes its entry again.
    let mut after_failure = read_back(&table);
    keep_planned(&mut after_failure, &model.services, &planned);
    let retry = model
        .plan(&after_failure, &sticky, &Overrides::default())
        .expect("plan");
    assert!(retry.ops.iter().any(is_service), "{:?}", retry.ops);

    // The entry write succeeded (a later op failed): the planned state is kept, and
    // the next plan has nothing left to do for the service.
    model.run(&planned.ops, &sticky);
    let mut after_later_failure = read_back(&table);
    keep_planned(&mut after_later_failure, &model.services, &planned);
    let retry = model
        .plan(&after_later_failure, &sticky, &Overrides::default())
        .expect("plan");
    assert!(!retry.ops.iter().any(is_service), "{:?}", retry.ops);
}

#[test]
fn unknown_segment_reset_sets_the_service_flag_and_a_reload_clears_it() {
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let with = |keys: &str| config(&[service("web", VIP, &[(SERVER1, 1)], keys)]);
    model.apply(&mut table, &with(""), &Overrides::default());
    assert_eq!(
        model.entry(VIP).flags & SERVICE_FLAG_NO_FLOW_RST,
        0,
        "default: drop"
    );
    model.apply(
        &mut table,
        &with("unknown_segment = \"reset\""),
        &Overrides::default(),
    );
    assert_ne!(model.entry(VIP).flags & SERVICE_FLAG_NO_FLOW_RST, 0);
    model.apply(
        &mut table,
        &with("unknown_segment = \"drop\""),
        &Overrides::default(),
    );
    assert_eq!(model.entry(VIP).flags & SERVICE_FLAG_NO_FLOW_RST, 0);
}

#[test]
fn automatic_syn_cookies_are_an_override_that_a_reload_keeps() {
    use lb_common::{SERVICE_FLAG_COOKIE_ACKS, SERVICE_FLAG_SYN_COOKIES};
    let on = SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS;
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let plain = web(&[(SERVER1, 1)]);
    model.apply(&mut table, &plain, &Overrides::default());
    assert_eq!(model.entry(VIP).flags & on, 0, "off until a flood");

    // Switching on writes the service entry, and nothing else.
    let flooded = Overrides {
        syn_cookies: [("web".to_string(), on)].into(),
        ..Overrides::default()
    };
    model.apply(&mut table, &plain, &flooded);
    assert_eq!(model.entry(VIP).flags & on, on);
    assert!(model.ops.iter().all(is_service), "{:?}", model.ops);
    assert_eq!(table.syn_cookie_flags(), flooded.syn_cookies);

    // A reload with the same overrides, even one that changes the service, keeps it.
    let summary = model.apply(&mut table, &plain, &flooded);
    assert_eq!(summary, ApplySummary::default(), "nothing to write");
    let changed = web(&[(SERVER1, 1), (SERVER2, 1)]);
    model.apply(&mut table, &changed, &flooded);
    assert_eq!(model.entry(VIP).flags & on, on);

    // Draining: only cookie ACKs.
    let draining = Overrides {
        syn_cookies: [("web".to_string(), SERVICE_FLAG_COOKIE_ACKS)].into(),
        ..Overrides::default()
    };
    model.apply(&mut table, &changed, &draining);
    assert_eq!(model.entry(VIP).flags & on, SERVICE_FLAG_COOKIE_ACKS);

    // A service that turned automatic cookies off never gets the flags.
    let off = config(&[service(
        "web",
        VIP,
        &[(SERVER1, 1), (SERVER2, 1)],
        "syn_cookies = \"off\"",
    )]);
    model.apply(&mut table, &off, &flooded);
    assert_eq!(model.entry(VIP).flags & on, 0);
    assert!(table.syn_cookie_flags().is_empty());
}

#[test]
fn several_snat_addresses_get_a_pool_before_the_entry_and_each_a_local_address() {
    use lb_common::ADDR_KIND_SNAT;
    let snat = |last| Ipv4Addr::new(198, 19, 1, last);
    let with_snat = |list: &str| {
        config(&[service("web", VIP, &[(SERVER1, 1)], "").replacen(
            &format!("snat_ip = \"{SNAT}\"\n"),
            &format!("snat_ips = {list}\n"),
            1,
        )])
    };
    let mut model = Model::new(capacity());
    let mut table = ServiceTable::default();
    let three = with_snat(r#"["198.19.1.1", "198.19.1.2", "198.19.1.3"]"#);
    model.apply(&mut table, &three, &Overrides::default());
    let pool_at = model
        .ops
        .iter()
        .position(|op| matches!(op, Op::WriteSnatPool { .. }))
        .expect("a pool write");
    assert!(pool_at < model.ops.iter().position(is_service).unwrap());
    let entry = model.entry(VIP);
    assert_eq!(
        (entry.snat_ip, entry.snat_count),
        (lb_common::wire::addr_to_wire(snat(1)), 3)
    );
    // The list repeated over every slot.
    let pool = model.snat_pools[&entry.id];
    for (i, &addr) in pool.addrs.iter().enumerate() {
        assert_eq!(
            addr,
            lb_common::wire::addr_to_wire(snat(1 + (i % 3) as u8)),
            "slot {i}"
        );
    }
    for last in 1..=3 {
        assert_eq!(model.local_addrs.get(&snat(last)), Some(&ADDR_KIND_SNAT));
    }

    // Down to two: the pool is rewritten, the third address leaves LOCAL_ADDRS.
    model.apply(
        &mut table,
        &with_snat(r#"["198.19.1.1", "198.19.1.2"]"#),
        &Overrides::default(),
    );
    assert_eq!(model.entry(VIP).snat_count, 2);
    assert!(!model.local_addrs.contains_key(&snat(3)));
    assert!(
        model.snat_pools[&entry.id]
            .addrs
            .iter()
            .all(|&a| a != lb_common::wire::addr_to_wire(snat(3)))
    );
    // One address: no pool needed any more.
    model.apply(&mut table, &web(&[(SERVER1, 1)]), &Overrides::default());
    assert_eq!(model.entry(VIP).snat_count, 1);
    assert!(
        !model
            .ops
            .iter()
            .any(|op| matches!(op, Op::WriteSnatPool { .. }))
    );
}

#[test]
fn more_local_addresses_than_the_map_holds_are_refused_before_any_write() {
    let mut model = Model::new(Limits {
        max_services: 64,
        ..capacity()
    });
    let table = ServiceTable::default();
    // 64 services with 16 SNAT addresses each, and 64 VIPs: 1,088 local addresses.
    let services: Vec<String> = (0..64u32)
        .map(|i| {
            let vip = Ipv4Addr::from(u32::from(VIP) + 256 + i);
            let ips: Vec<String> = (0..16u32)
                .map(|j| format!("\"{}\"", Ipv4Addr::from(u32::from(SNAT) + 256 + i * 16 + j)))
                .collect();
            service(&format!("s{i}"), vip, &[(SERVER1, 1)], "").replacen(
                &format!("snat_ip = \"{SNAT}\"\n"),
                &format!("snat_ips = [{}]\n", ips.join(", ")),
                1,
            )
        })
        .collect();
    assert_refused(
        &model,
        &table,
        &config(&services),
        "need 1088 local addresses",
    );
    model.ops.clear();
}

#[test]
fn peers_set_the_node_id_and_the_announce_switch() {
    let model = Model::new(capacity());
    let settings = |config: &Config| {
        let plan = model
            .plan(&ServiceTable::default(), config, &Overrides::default())
            .unwrap();
        plan.ops
            .iter()
            .find_map(|op| match op {
                Op::WriteSettings(settings) => Some(*settings),
                _ => None,
            })
            .unwrap()
    };
    let mut config = web(&[(SERVER1, 1)]);
    let alone = settings(&config);
    assert_eq!((alone.node_id, alone.announce), (0, 0));
    let peers = crate::config::PeersConfig {
        node_id: 7,
        cluster_id: 1,
        key_file: "/etc/lb/peers.key".into(),
        listen: "198.18.9.1:7400".parse().unwrap(),
        members: Vec::new(),
        announce: true,
        join_timeout: std::time::Duration::from_secs(5),
        dead_after: std::time::Duration::from_secs(3),
    };
    config.peers = Some(peers.clone());
    let shared = settings(&config);
    assert_eq!((shared.node_id, shared.announce), (7, 1));
    assert_eq!(shared.snat_port_min, alone.snat_port_min);
    config.peers = Some(crate::config::PeersConfig {
        announce: false,
        ..peers
    });
    assert_eq!(settings(&config).announce, 0);
}
