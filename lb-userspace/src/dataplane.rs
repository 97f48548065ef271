//! The loaded XDP program and typed handles on its maps.

use std::{
    collections::HashMap as StdHashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf, lpm_trie::LpmTrie,
    },
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    Backend, BackendStats, EligibilityKey, FlowEntry, FlowKey, FragmentEntry, FragmentKey, Service,
    ServiceKey, ServiceStats, SessionEntry, SessionKey, Settings, SnatPool, VipTransition,
    XDP_PROGRAM_NAME, addr_filter::AddrFilter, map_names,
};

use crate::{
    domain::{AttachedMode, Limits},
    ebpf,
};

pub mod batch;
pub mod events;
mod tables;

pub use tables::possible_cpus;

/// MAGLEV_RINGS mapped into the controller's memory (the map is `BPF_F_MMAPABLE`):
/// rings are written and read with plain memory accesses, not one syscall per slot.
/// The data path sees the stores at once; the service-entry update that flips a ring
/// live is a syscall, which orders it after them. The kernel lays array elements out
/// 8 bytes apart, so each u32 slot is the low half of a u64 here.
pub struct RingMemory {
    base: *mut u64,
    slots: usize,
    mapped_bytes: usize,
}

// SAFETY: the mapping is owned by this value and only reached through `&self`/`&mut self`.
unsafe impl Send for RingMemory {}
// SAFETY: shared access only reads.
unsafe impl Sync for RingMemory {}

impl RingMemory {
    fn map(map: &MapData, slots: u32) -> Result<RingMemory> {
        use std::os::fd::{AsFd, AsRawFd};
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (slots as usize * 8).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks size and flags.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!(
                "mmap of {} failed (it must be a BPF_F_MMAPABLE array): {}",
                map_names::MAGLEV_RINGS,
                std::io::Error::last_os_error()
            );
        }
        Ok(RingMemory {
            base: base.cast(),
            slots: slots as usize,
            mapped_bytes: bytes,
        })
    }

    pub fn slots(&self) -> &[u64] {
        // SAFETY: the mapping holds `slots` 8-byte elements and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.slots) }
    }

    pub fn slots_mut(&mut self) -> &mut [u64] {
        // SAFETY: as `slots`; `&mut self` makes this the only view from this process.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.slots) }
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.cast(), self.mapped_bytes) };
    }
}

/// The loaded program and its maps. The maps are reached only through the typed
/// operations below, which build the wire form of keys and values in one place.
pub struct Dataplane {
    ebpf: Ebpf,
    capacity: Limits,
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    /// Kept open for `ring_memory`, which maps it.
    _rings: Array<MapData, u32>,
    ring_memory: RingMemory,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    local_addrs: HashMap<MapData, u32, u32>,
    settings: Array<MapData, Settings>,
    tx_ports: DevMapHash<MapData>,
    global_counters: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    eligibility: LpmTrie<MapData, EligibilityKey, u32>,
    sessions: HashMap<MapData, SessionKey, SessionEntry>,
    /// The stage programs `lb_xdp` tail-calls, installed at load; kept so the array and
    /// its entries live as long as the program.
    _stages: ProgramArray<MapData>,
    /// Records of fragmented datagrams (the data path alone writes them).
    fragments: HashMap<MapData, FragmentKey, FragmentEntry>,
    snat_pools: Array<MapData, SnatPool>,
    /// VIPs moving here → their previous owner (docs/scale-out.md, "Forwarding to the
    /// previous owner").
    vip_transitions: HashMap<MapData, u32, VipTransition>,
    /// Peers whose IPIP packets are decapsulated.
    tunnel_peers: HashMap<MapData, u32, u32>,
    /// Outer source address of forwarded packets.
    tunnel_source: Array<MapData, u32>,
    /// `lb_xdp` itself, which a decapsulated packet re-enters; kept like `_stages`.
    _reprocess: ProgramArray<MapData>,
    addr_filter: Array<MapData, AddrFilter>,
    /// FLOW_EVENTS until the daemon's reader takes it (`take_flow_events`).
    flow_events: Option<RingBuf<MapData>>,
    /// Interfaces the program is attached to: name → (ifindex, mode, link).
    attached: StdHashMap<String, (u32, AttachedMode, AttachedLink)>,
    pin_dir: Option<PathBuf>,
    /// Whether the maps (and links, if any) were taken over from an earlier daemon.
    adopted: bool,
}

/// An XDP attachment: owned by the program object, or pinned in bpffs so that it
/// outlives the daemon (a `kill -9` keeps forwarding; the next daemon adopts it).
enum AttachedLink {
    Owned(XdpLinkId),
    Pinned(PinnedLink),
}

/// Pin file of the XDP link of `ifname`; the mode is part of the name so that an
/// adopting daemon can report it.
fn link_pin(dir: &Path, ifname: &str, mode: AttachedMode) -> PathBuf {
    let mode = match mode {
        AttachedMode::Native => "native",
        AttachedMode::Generic => "generic",
    };
    dir.join(format!("link_{mode}_{ifname}"))
}

/// The pinned links under `dir`: (ifname, mode, path).
fn pinned_links(dir: &Path) -> Vec<(String, AttachedMode, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut links: Vec<_> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("link_")?;
            let (mode, ifname) = if let Some(ifname) = rest.strip_prefix("native_") {
                (AttachedMode::Native, ifname)
            } else {
                (AttachedMode::Generic, rest.strip_prefix("generic_")?)
            };
            Some((ifname.to_string(), mode, entry.path()))
        })
        .collect();
    links.sort();
    links
}

/// How `Dataplane::load` treats state pinned by an earlier daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinnedState {
    /// Remove stale pins and start with empty maps.
    Replace,
    /// Reuse the pinned maps (flows, sessions and counters continue) and links.
    Adopt,
}

/// Takes a map out of the object as its typed handle (the loader pinned it already).
fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Maps that an adopting daemon creates (and pins) when the earlier one had none: they
/// hold only short-lived state, so a daemon from before they existed can still be
/// replaced in place (docs/architecture.md, "Fragments").
const CREATED_ON_ADOPT: [&str; 8] = [
    map_names::FRAGMENTS,
    map_names::STAGES,
    map_names::FLOW_EVENTS,
    // The tunnel maps (docs/scale-out.md, "Forwarding to the previous owner"): a daemon
    // from before them had no VIP move under way, so empty ones are right. Pinned ones
    // are adopted with their contents, like every other map.
    map_names::VIP_TRANSITIONS,
    map_names::TUNNEL_PEERS,
    map_names::TUNNEL_SOURCE,
    map_names::REPROCESS,
    // Empty when created: the first apply fills it before the new program is attached.
    map_names::ADDR_FILTER,
];

/// Whether an earlier daemon left attached, pinned state under `dir` to adopt.
pub fn has_pinned_state(dir: &Path) -> bool {
    let links = pinned_links(dir);
    !links.is_empty()
        && links
            .iter()
            .all(|(ifname, _, _)| crate::sys::interface_exists(ifname))
        && map_names::ALL
            .iter()
            .filter(|name| !CREATED_ON_ADOPT.contains(name))
            .all(|name| dir.join(name).exists())
}

/// Loads the stage programs and installs them in `STAGES`, where `lb_xdp` finds them.
/// An adopted (pinned) array gets this daemon's stages at once: their maps are the
/// adopted ones, and adoption already requires the same map layouts.
fn load_stages(ebpf: &mut Ebpf) -> Result<ProgramArray<MapData>> {
    let mut stages: ProgramArray<MapData> = take(ebpf, map_names::STAGES)?;
    for (index, name) in lb_common::STAGE_PROGRAM_NAMES.iter().enumerate() {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("stage program {name} missing from the object"))?
            .try_into()?;
        program
            .load()
            .map_err(|e| anyhow!("the kernel refused the stage program {name}: {e:#}"))?;
        stages
            .set(index as u32, program.fd()?, 0)
            .with_context(|| format!("install the stage program {name}"))?;
    }
    Ok(stages)
}

/// Installs the loaded `lb_xdp` in slot 0 of `REPROCESS`, which it tail-calls with a
/// packet it just decapsulated (docs/scale-out.md, "Forwarding to the previous owner").
fn load_reprocess(ebpf: &mut Ebpf) -> Result<ProgramArray<MapData>> {
    let mut reprocess: ProgramArray<MapData> = take(ebpf, map_names::REPROCESS)?;
    let program: &Xdp = ebpf
        .program(XDP_PROGRAM_NAME)
        .context("XDP program missing from the object")?
        .try_into()?;
    reprocess
        .set(0, program.fd()?, 0)
        .context("install the XDP program for decapsulated packets")?;
    Ok(reprocess)
}

impl Dataplane {
    /// Loads the XDP program (verifier included) with maps of the given capacity. With a
    /// `pin_dir`, every map is pinned there: `PinnedState::Replace` removes stale pins
    /// first, `PinnedState::Adopt` reuses the pinned maps and takes over pinned links.
    pub fn load(capacity: Limits, pin_dir: Option<&Path>) -> Result<Dataplane> {
        Self::load_with(capacity, pin_dir, PinnedState::Replace)
    }

    pub fn load_with(
        capacity: Limits,
        pin_dir: Option<&Path>,
        pinned: PinnedState,
    ) -> Result<Dataplane> {
        let object = ebpf::object()?;
        let rings = capacity.max_ring_slots;
        if let Some(dir) = pin_dir {
            if pinned == PinnedState::Replace {
                remove_pins(dir);
            }
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            if pinned == PinnedState::Adopt {
                check_pinned_capacity(dir, capacity, rings)?;
            }
        }
        let pin_paths: Vec<(&str, PathBuf)> = pin_dir
            .map(|dir| map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect())
            .unwrap_or_default();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::SERVICES, capacity.max_services)
            .map_max_entries(map_names::SERVICE_STATS, capacity.max_services)
            .map_max_entries(map_names::SNAT_POOLS, capacity.max_services)
            .map_max_entries(map_names::BACKENDS, capacity.max_backends)
            .map_max_entries(map_names::BACKEND_STATS, capacity.max_backends)
            .map_max_entries(map_names::NEXT_HOPS, capacity.max_backends)
            .map_max_entries(map_names::MAGLEV_RINGS, rings)
            .map_max_entries(map_names::FLOWS, capacity.max_flows);
        for (name, path) in &pin_paths {
            // Creates and pins the map, or opens the pinned one if it exists.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(explain_load_error)?;
        {
            let program: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM_NAME)
                .context("XDP program missing from the object")?
                .try_into()?;
            program
                .load()
                .map_err(|e| anyhow!("the kernel refused the XDP program: {e:#}"))?;
        }
        let stages = load_stages(&mut ebpf)?;
        let reprocess = load_reprocess(&mut ebpf)?;
        let rings: Array<MapData, u32> = take(&mut ebpf, map_names::MAGLEV_RINGS)?;
        let ring_memory =
            RingMemory::map(aya::maps::IterableMap::map(&rings), capacity.max_ring_slots)?;
        let mut dataplane = Dataplane {
            capacity,
            services: take(&mut ebpf, map_names::SERVICES)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            _rings: rings,
            ring_memory,
            flows: take(&mut ebpf, map_names::FLOWS)?,
            local_addrs: take(&mut ebpf, map_names::LOCAL_ADDRS)?,
            settings: take(&mut ebpf, map_names::SETTINGS)?,
            tx_ports: take(&mut ebpf, map_names::TX_PORTS)?,
            global_counters: take(&mut ebpf, map_names::GLOBAL_COUNTERS)?,
            service_stats: take(&mut ebpf, map_names::SERVICE_STATS)?,
            backend_stats: take(&mut ebpf, map_names::BACKEND_STATS)?,
            eligibility: take(&mut ebpf, map_names::ELIGIBILITY)?,
            sessions: take(&mut ebpf, map_names::SESSIONS)?,
            fragments: take(&mut ebpf, map_names::FRAGMENTS)?,
            _stages: stages,
            snat_pools: take(&mut ebpf, map_names::SNAT_POOLS)?,
            addr_filter: take(&mut ebpf, map_names::ADDR_FILTER)?,
            flow_events: Some(take(&mut ebpf, map_names::FLOW_EVENTS)?),
            vip_transitions: take(&mut ebpf, map_names::VIP_TRANSITIONS)?,
            tunnel_peers: take(&mut ebpf, map_names::TUNNEL_PEERS)?,
            tunnel_source: take(&mut ebpf, map_names::TUNNEL_SOURCE)?,
            _reprocess: reprocess,
            ebpf,
            attached: StdHashMap::new(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            adopted: pinned == PinnedState::Adopt,
        };
        if pinned == PinnedState::Replace {
            dataplane.set_settings(Settings::default())?;
        }
        Ok(dataplane)
    }

    /// Takes over the links pinned by an earlier daemon. With `replace_program`, each
    /// link is switched to this program in one `bpf_link_update` (no detach in between);
    /// without it the running program keeps serving. Returns the adopted interfaces.
    pub fn adopt_links(&mut self, replace_program: bool) -> Result<Vec<(String, AttachedMode)>> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(Vec::new());
        };
        let mut adopted = Vec::new();
        for (ifname, mode, path) in pinned_links(&dir) {
            let ifindex = crate::sys::ifindex(&ifname)?;
            let pinned = PinnedLink::from_pin(&path)
                .with_context(|| format!("open pinned link {}", path.display()))?;
            if replace_program {
                // The update goes through a second fd of the same link while the pin
                // stays in place: if it fails, closing that fd leaves the link (and the
                // old program) attached. `bpf_link_update` keeps the link itself, so
                // the pin needs no change and `pinned` then names the new program.
                let update_fd: FdLink = PinnedLink::from_pin(&path)
                    .with_context(|| format!("open pinned link {}", path.display()))?
                    .into();
                let xdp_link = XdpLink::try_from(update_fd)?;
                let program = self.program()?;
                let id = program
                    .attach_to_link(xdp_link)
                    .with_context(|| format!("swap the program on {ifname}"))?;
                // Only our extra fd: the pin keeps the link.
                drop(program.take_link(id)?);
            }
            let link = AttachedLink::Pinned(pinned);
            self.attached.insert(ifname.clone(), (ifindex, mode, link));
            adopted.push((ifname, mode));
        }
        Ok(adopted)
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM_NAME)
            .context("XDP program missing")?
            .try_into()?)
    }

    /// The verifier's instruction count of `lb_xdp` and of each stage program, by name:
    /// how close each is to the kernel's budget (docs/architecture.md, "Programs").
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        std::iter::once(XDP_PROGRAM_NAME)
            .chain(lb_common::STAGE_PROGRAM_NAMES)
            .map(|name| {
                let program: &Xdp = self
                    .ebpf
                    .program(name)
                    .with_context(|| format!("program {name} missing"))?
                    .try_into()?;
                let count = program.info()?.verified_instruction_count().unwrap_or(0);
                Ok((name, count))
            })
            .collect()
    }

    /// Attaches to `ifname`: `Some(mode)` forces a mode, `None` tries native first and
    /// falls back to generic with a warning.
    pub fn attach(&mut self, ifname: &str, mode: Option<AttachedMode>) -> Result<AttachedMode> {
        let ifindex = crate::sys::ifindex(ifname)?;
        // Registered first: the program may redirect to this interface from its very
        // first packet. Undone if the attach fails, unless an earlier attach owns it.
        let already_attached = self.attached.contains_key(ifname);
        self.add_tx_port(ifindex)
            .with_context(|| format!("register {ifname} for redirects"))?;
        let result = self.attach_and_pin(ifname, ifindex, mode);
        if result.is_err() && !already_attached {
            let _ = self.remove_tx_port(ifindex);
        }
        result
    }

    fn attach_and_pin(
        &mut self,
        ifname: &str,
        ifindex: u32,
        mode: Option<AttachedMode>,
    ) -> Result<AttachedMode> {
        let program = self.program()?;
        let attempts: &[AttachedMode] = match mode {
            Some(AttachedMode::Native) => &[AttachedMode::Native],
            Some(AttachedMode::Generic) => &[AttachedMode::Generic],
            None => &[AttachedMode::Native, AttachedMode::Generic],
        };
        let mut last_error = None;
        let mut attached = None;
        for &attempt in attempts {
            let flags = match attempt {
                AttachedMode::Native => XdpMode::Driver,
                AttachedMode::Generic => XdpMode::Skb,
            };
            match program.attach_to_if_index(ifindex, flags) {
                Ok(link) => {
                    attached = Some((attempt, link));
                    break;
                }
                Err(e) => {
                    if mode.is_none() && attempt == AttachedMode::Native {
                        log::warn!(
                            "{ifname}: native XDP refused ({e}); falling back to generic mode (slower)"
                        );
                    }
                    last_error = Some(e);
                }
            }
        }
        let Some((attached_mode, link)) = attached else {
            let e = last_error.map(|e| format!("{e:#}")).unwrap_or_default();
            bail!("cannot attach XDP to {ifname}: {e} (is XDP supported, are you root?)");
        };
        let link = match &self.pin_dir {
            Some(dir) => {
                let path = link_pin(dir, ifname, attached_mode);
                let _ = fs::remove_file(&path);
                let program = self.program()?;
                let fd_link: FdLink = program.take_link(link)?.try_into()?;
                AttachedLink::Pinned(
                    fd_link
                        .pin(&path)
                        .with_context(|| format!("pin {}", path.display()))?,
                )
            }
            None => AttachedLink::Owned(link),
        };
        self.attached
            .insert(ifname.to_string(), (ifindex, attached_mode, link));
        Ok(attached_mode)
    }

    /// Detaches from every interface (idempotent).
    pub fn detach_all(&mut self) {
        let attached: Vec<_> = self.attached.drain().collect();
        for (ifname, (ifindex, _, link)) in attached {
            let _ = self.remove_tx_port(ifindex);
            match link {
                AttachedLink::Owned(id) => {
                    if let Ok(program) = self.program()
                        && let Err(e) = program.detach(id)
                    {
                        log::warn!("detach from {ifname}: {e}");
                    }
                }
                // Removing the pin and closing the last fd destroys the link.
                AttachedLink::Pinned(pinned) => match pinned.unpin() {
                    Ok(fd_link) => drop(fd_link),
                    Err(e) => log::warn!("unpin the link of {ifname}: {e}"),
                },
            }
        }
    }

    pub fn attached(&self) -> Vec<(String, u32, AttachedMode)> {
        let mut list: Vec<_> = self
            .attached
            .iter()
            .map(|(name, (ifindex, mode, _))| (name.clone(), *ifindex, *mode))
            .collect();
        list.sort();
        list
    }

    /// Lets go of the data path without detaching or unpinning: links and maps stay
    /// pinned and keep forwarding, for the next daemon to adopt.
    pub fn release(&mut self) {
        // Dropping a PinnedLink closes our fd only; the pin keeps the link.
        self.attached.clear();
        self.pin_dir = None;
    }

    /// Removes what `load` and `attach` pinned under the pin directory, maps and links
    /// (idempotent).
    pub fn unpin_maps(&mut self) {
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir);
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.detach_all();
        self.unpin_maps();
    }
}

fn remove_pins(dir: &Path) {
    for name in map_names::ALL {
        let _ = fs::remove_file(dir.join(name));
    }
    for (_, _, path) in pinned_links(dir) {
        let _ = fs::remove_file(path);
    }
    let _ = fs::remove_dir(dir);
}

/// Pinned maps can only be adopted if they have the capacities the config asks for.
fn check_pinned_capacity(dir: &Path, capacity: Limits, rings: u32) -> Result<()> {
    for (name, wanted) in [
        (map_names::SERVICES, capacity.max_services),
        (map_names::SNAT_POOLS, capacity.max_services),
        (map_names::BACKENDS, capacity.max_backends),
        (map_names::MAGLEV_RINGS, rings),
        (map_names::FLOWS, capacity.max_flows),
    ] {
        let path = dir.join(name);
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("open pinned map {}", path.display()))?;
        if info.max_entries() != wanted {
            bail!(
                "pinned map {} holds {} entries but the config asks for {wanted}: [limits] \
                 can only change with a clean restart (stop the daemon with SIGTERM first)",
                path.display(),
                info.max_entries()
            );
        }
    }
    Ok(())
}

fn explain_load_error(error: aya::EbpfError) -> anyhow::Error {
    let text = format!("{error:#}");
    if text.contains("EPERM") || text.contains("Operation not permitted") {
        anyhow!("loading the XDP program needs root (CAP_BPF and CAP_NET_ADMIN): {text}")
    } else {
        anyhow!("loading the XDP program failed: {text}")
    }
}
