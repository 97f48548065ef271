//! The `BPF_PROG_TEST_RUN` harness shared by the data-plane tests and the benchmark:
//! the production XDP program loaded and programmed from a config inside a namespace
//! whose static routes and permanent neighbours make `bpf_fib_lookup` deterministic.
//!
//! Every use of lb-userspace's data-plane API by the tests and the bench goes through
//! [`Harness`], so a change of that API is adapted here once.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};

use anyhow::{Context, Result, anyhow};
use aya::maps::MapData;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_common::{
    BackendStats, FlowEntry, FlowKey, FragmentEntry, FragmentKey, ServiceStats, SessionEntry,
    SessionKey,
};
use lb_userspace::config::Config;
use lb_userspace::dataplane::{Dataplane, PinnedState};
use lb_userspace::services::{ApplySummary, ServiceTable};
use lb_userspace::sys;

/// lb-userspace types the harness's callers name, re-exported so they need no other
/// path into lb-userspace.
pub use lb_userspace::dataplane::{has_pinned_state, possible_cpus};
pub use lb_userspace::domain::AttachedMode;
pub use lb_userspace::services::Overrides;
pub use lb_userspace::sys::ifindex;

use crate::netns::Netns;
use crate::topology::{LB_EXT_IP, LB_INT_IP};

/// XDP verdicts as the program returns them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Name of an XDP verdict, for messages.
pub fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// The harness namespace's client-side interface (198.18.0.1) and its veth peer.
pub const EXT_IF: &str = "ext0";
/// The harness namespace's server-side interface (198.19.0.1/24) and its veth peer.
pub const INT_IF: &str = "int0";
pub const LB_EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const LB_INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
/// The client's MAC (the client is 198.18.0.2, as on the testbed).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A permanent neighbour entry: `ip` is at `mac` behind interface `dev`.
#[derive(Clone, Copy, Debug)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub dev: &'static str,
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A namespace for [`Harness`]: `ext0` (`LB_EXT_IP`/`ext_prefix_len`) and `int0`
/// (`LB_INT_IP`/24) with fixed MACs, each the end of a veth pair whose peer stays in the
/// namespace, forwarding on, and `neighbours` as permanent entries (no ARP ever runs).
pub fn harness_netns(name: &str, ext_prefix_len: u8, neighbours: &[Neighbour]) -> Result<Netns> {
    let netns = Netns::create(name)?;
    netns.add_veth(EXT_IF, "ext1")?;
    netns.add_veth(INT_IF, "int1")?;
    let mut script = vec![
        format!("link set {EXT_IF} address {}", mac_text(LB_EXT_MAC)),
        format!("link set {INT_IF} address {}", mac_text(LB_INT_MAC)),
        format!("addr add {LB_EXT_IP}/{ext_prefix_len} dev {EXT_IF}"),
        format!("addr add {LB_INT_IP}/24 dev {INT_IF}"),
    ];
    for dev in [EXT_IF, "ext1", INT_IF, "int1"] {
        script.push(format!("link set {dev} up"));
    }
    for n in neighbours {
        script.push(format!(
            "neigh replace {} lladdr {} dev {} nud permanent",
            n.ip,
            mac_text(n.mac),
            n.dev
        ));
    }
    netns.ip_batch(&script)?;
    netns.set_sysctls(&[("net/ipv4/ip_forward", "1")], false)?;
    Ok(netns)
}

/// Parses a config text given in a test or the bench.
pub fn parse_config(text: &str) -> Result<Config> {
    Config::parse(text, Path::new("harness.toml")).map_err(|e| anyhow!("{e}"))
}

/// The production program, loaded unpinned and programmed from a config, inside the
/// calling thread's namespace (one made by [`harness_netns`]).
pub struct Harness {
    dp: Dataplane,
    table: ServiceTable,
    config: Config,
    ext_ifindex: u32,
    int_ifindex: u32,
}

impl Harness {
    /// Loads the program sized by `config_text`'s limits, programs its services, and
    /// registers `ext0` and `int0` as redirect targets.
    pub fn load(config_text: &str) -> Result<Harness> {
        let config = parse_config(config_text)?;
        let mut harness = Harness::load_unprogrammed(config.clone())?;
        harness.apply(config).context("program tables")?;
        Ok(harness)
    }

    /// Loads the program sized by `config`'s limits with `ext0` and `int0` registered
    /// as redirect targets, but no service installed yet (see [`apply`](Self::apply)).
    pub fn load_unprogrammed(config: Config) -> Result<Harness> {
        let dp = Dataplane::load(config.limits, None).context("load XDP program")?;
        let mut harness = Harness::around(dp, config)?;
        for ifindex in [harness.ext_ifindex, harness.int_ifindex] {
            harness.dp.add_tx_port(ifindex)?;
        }
        Ok(harness)
    }

    /// Loads the program with its maps pinned under `pin_dir`, as `lb run` starts:
    /// fresh (stale pins removed) or, with `adopt`, taking over what an earlier
    /// daemon pinned there (`lb run --replace`). Nothing is programmed or registered.
    pub fn load_pinned(config_text: &str, pin_dir: &Path, adopt: bool) -> Result<Harness> {
        let config = parse_config(config_text)?;
        let pinned = if adopt {
            PinnedState::Adopt
        } else {
            PinnedState::Replace
        };
        let dp = Dataplane::load_with(config.limits, Some(pin_dir), pinned)?;
        Harness::around(dp, config)
    }

    /// A harness around a loaded program with nothing installed in its tables yet.
    fn around(dp: Dataplane, config: Config) -> Result<Harness> {
        Ok(Harness {
            dp,
            table: ServiceTable::default(),
            config,
            ext_ifindex: sys::ifindex(EXT_IF)?,
            int_ifindex: sys::ifindex(INT_IF)?,
        })
    }

    /// Rebuilds the installed state from the pinned maps, as a restarted `lb run` does
    /// before its first apply (`ServiceTable::adopt`).
    pub fn adopt_table(&mut self) -> Result<()> {
        self.table = ServiceTable::adopt(&self.dp, &self.config)?;
        Ok(())
    }

    /// Takes over the pinned links (see `Dataplane::adopt_links`).
    pub fn adopt_links(&mut self, replace_program: bool) -> Result<Vec<(String, AttachedMode)>> {
        self.dp.adopt_links(replace_program)
    }

    /// Lets go without detaching or unpinning, as a daemon handing over does.
    pub fn release(&mut self) {
        self.dp.release();
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&mut self) -> Result<u32> {
        Ok(self.dp.program()?.info()?.id())
    }

    /// Programs the loaded program from `config` (as `lb reload` does).
    pub fn apply(&mut self, config: Config) -> Result<ApplySummary> {
        let summary = self.table.apply(&mut self.dp, &config)?;
        self.config = config;
        Ok(summary)
    }

    /// What the daemon's flow collector does for the address filter in one pass: reads
    /// the flow table and drops the bits nothing needs any more (`ServiceTable::
    /// end_filter_pass`). Removes no flow.
    pub fn filter_pass(&mut self) -> Result<()> {
        let pass = self.table.begin_filter_pass();
        let entries = self.dp.flow_entries();
        self.table.end_filter_pass(&mut self.dp, pass, &entries)
    }

    /// ADDR_FILTER as the data path sees it.
    pub fn addr_filter(&self) -> Result<lb_common::addr_filter::AddrFilter> {
        self.dp.addr_filter()
    }

    /// [`apply`](Self::apply) with a config text.
    pub fn apply_config(&mut self, config_text: &str) -> Result<ApplySummary> {
        self.apply(parse_config(config_text)?)
    }

    pub fn ext_ifindex(&self) -> u32 {
        self.ext_ifindex
    }

    pub fn int_ifindex(&self) -> u32 {
        self.int_ifindex
    }

    /// Reprograms the current config with run-time overrides (drain, down, weight).
    pub fn apply_overrides(&mut self, overrides: &Overrides) -> Result<()> {
        self.table
            .apply_with(&mut self.dp, &self.config, overrides)?;
        Ok(())
    }

    /// What the controller installed.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// One run of the program: verdict and the packet as it left. Panics on a
    /// test_run error.
    pub fn run(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(packet).expect("test_run")
    }

    pub fn try_run(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.test_run(packet, None)
    }

    /// One run as if the packet arrived on `ifindex` (the program must be attached
    /// there, so the kernel has the receive queue the context names).
    pub fn run_on(&mut self, packet: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.try_run_with_ctx(packet, [0, packet.len() as u32, 0, ifindex, 0, 0])
            .expect("test_run")
    }

    /// One run with an explicit `xdp_md` context (data, data_end, data_meta,
    /// ingress_ifindex, rx_queue_index, egress_ifindex).
    pub fn try_run_with_ctx(&mut self, packet: &[u8], ctx: [u32; 6]) -> Result<(u32, Vec<u8>)> {
        let ctx: Vec<u8> = ctx.iter().flat_map(|f| f.to_ne_bytes()).collect();
        self.test_run(packet, Some(&ctx))
    }

    fn test_run(&mut self, packet: &[u8], ctx: Option<&[u8]>) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; packet.len() + 512];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..TestRunOptions::default()
        };
        let result = self.dp.program()?.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// The loaded program (e.g. as a tail-call target).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        self.dp.program()
    }

    /// Every event waiting in `FLOW_EVENTS`, oldest first (the ring is emptied).
    pub fn flow_events(&mut self) -> Vec<lb_common::FlowEvent> {
        self.dp.read_flow_events(usize::MAX)
    }

    /// Hands out `FLOW_EVENTS` for a `FlowEventReader` (once).
    pub fn take_flow_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.dp.take_flow_events()
    }

    /// Writes the `SETTINGS` entry (node id, announcements) as `lb run` with `[peers]`
    /// would; the next `apply` writes the config's again.
    pub fn set_settings(&mut self, settings: lb_common::Settings) -> Result<()> {
        self.dp.set_settings(settings)
    }

    pub fn settings(&self) -> Result<lb_common::Settings> {
        self.dp.settings()
    }

    /// Installs `batch` as if announced by peer `from_node` to an instance with node id
    /// `self_node`, as the daemon does (`daemon::apply_announcements`).
    pub fn apply_announcements(
        &mut self,
        self_node: u16,
        from_node: u16,
        batch: &[lb_userspace::peers::record::Announcement],
    ) -> lb_userspace::peers::install::ApplyStats {
        let mut activity = lb_userspace::peers::activity::RemoteActivity::new(1024);
        lb_userspace::daemon::apply_announcements(
            &mut self.dp,
            &self.table,
            &mut activity,
            self_node,
            from_node,
            batch,
            sys::monotonic_ns(),
        )
    }

    /// The tunnel source (docs/scale-out.md, "Forwarding to the previous owner").
    pub fn set_tunnel_source(&mut self, addr: Option<Ipv4Addr>) -> Result<()> {
        self.dp.set_tunnel_source(addr)
    }

    pub fn set_tunnel_peers(&mut self, peers: &[Ipv4Addr]) -> Result<()> {
        self.dp.set_tunnel_peers(peers)
    }

    pub fn tunnel_peers(&self) -> Result<Vec<Ipv4Addr>> {
        self.dp.tunnel_peers()
    }

    pub fn set_vip_transition(&mut self, vip: Ipv4Addr, previous_owner: Ipv4Addr) -> Result<()> {
        self.dp.set_vip_transition(vip, previous_owner)
    }

    pub fn clear_vip_transition(&mut self, vip: Ipv4Addr) -> Result<bool> {
        self.dp.clear_vip_transition(vip)
    }

    pub fn vip_transitions(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        self.dp.vip_transitions()
    }

    /// The verifier's instruction count of each program, by name.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        self.dp.verified_instructions()
    }

    /// A global counter (`lb_common::counters::*`), summed over CPUs. Panics on error.
    pub fn counter(&self, index: u32) -> u64 {
        self.try_counter(index).expect("global counters")
    }

    pub fn try_counter(&self, index: u32) -> Result<u64> {
        let counters = self.dp.global_counters()?;
        counters
            .get(index as usize)
            .map(|(_, value)| *value)
            .with_context(|| format!("no global counter {index}"))
    }

    /// Every flow-table entry.
    pub fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        self.dp.flow_entries()
    }

    /// Every flow-table entry by batch lookups of `chunk` entries (no fallback).
    pub fn flows_batched(&self, chunk: u32) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.dp.flow_entries_batched(chunk)
    }

    /// Number of flow-table entries, by walking the keys one at a time.
    pub fn flow_count(&self) -> usize {
        self.dp.flow_count()
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.dp.flow(key)
    }

    /// Writes a flow-table entry, as the controller does (e.g. to mark it for reset).
    pub fn set_flow(&mut self, key: FlowKey, entry: FlowEntry) -> Result<()> {
        self.dp.insert_flow(key, entry)
    }

    /// Deletes a flow-table entry; whether it was there.
    pub fn remove_flow(&mut self, key: &FlowKey) -> bool {
        self.dp.remove_flow(key)
    }

    /// Kernel memory of the flow table, from its own accounting (`memlock` in fdinfo).
    pub fn flow_table_bytes(&self) -> Result<u64> {
        memlock(self.dp.flow_map())
    }

    /// The redirect target registered for `ifindex`, if any.
    pub fn tx_port(&self, ifindex: u32) -> Option<u32> {
        self.dp.tx_port(ifindex)
    }

    pub fn attach(&mut self, ifname: &str, mode: Option<AttachedMode>) -> Result<AttachedMode> {
        self.dp.attach(ifname, mode)
    }

    pub fn attached(&self) -> Vec<(String, u32, AttachedMode)> {
        self.dp.attached()
    }

    pub fn detach_all(&mut self) {
        self.dp.detach_all();
    }

    /// The live ring of the first service in the services map: a backend id per slot.
    pub fn first_service_ring(&self) -> Result<Vec<u64>> {
        let services = self.dp.service_entries()?;
        let (_, service) = services.first().context("no service")?;
        let start = service.ring_offset as usize;
        let end = start + service.ring_size as usize;
        Ok(self.dp.ring_slots()[start..end].to_vec())
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        self.dp.service_stats(id)
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        self.dp.backend_stats(id)
    }

    /// Sets a service's counters on every CPU.
    pub fn set_service_stats(&mut self, id: u32, stats: ServiceStats) -> Result<()> {
        self.dp.fill_service_stats(id, stats)
    }

    /// Sets a backend's counters on every CPU.
    pub fn set_backend_stats(&mut self, id: u32, stats: BackendStats) -> Result<()> {
        self.dp.fill_backend_stats(id, stats)
    }

    pub fn insert_session(&mut self, key: SessionKey, entry: SessionEntry) -> Result<()> {
        self.dp.insert_session(key, entry)
    }

    pub fn sessions(&self) -> Result<Vec<(SessionKey, SessionEntry)>> {
        Ok(self.dp.session_entries())
    }

    /// Every record of a fragmented datagram.
    pub fn fragments(&self) -> Vec<(FragmentKey, FragmentEntry)> {
        self.dp.fragment_entries()
    }

    /// Writes a record of a fragmented datagram (e.g. to age it).
    pub fn set_fragment(&mut self, key: FragmentKey, entry: FragmentEntry) -> Result<()> {
        self.dp.insert_fragment(key, entry)
    }
}

/// (link id, program id) of the XDP link pinned at `path`.
pub fn pinned_link_info(path: &Path) -> Result<(u32, u32)> {
    let link = FdLink::from(PinnedLink::from_pin(path).context("open the link pin")?);
    let info = link.info().context("link info")?;
    Ok((info.id(), info.program_id()))
}

/// Kernel memory of a map from its own accounting (`memlock` in fdinfo).
fn memlock(map: &MapData) -> Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.fd().as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}
