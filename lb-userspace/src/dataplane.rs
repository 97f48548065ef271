//! The loaded XDP program and typed handles on its maps.

use std::{
    collections::HashMap as StdHashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{
    Backend, BackendStats, FlowEntry, FlowKey, MAGLEV_RING_SIZE, Service, ServiceKey, ServiceStats,
    Settings, XDP_PROGRAM_NAME, counters, map_names,
};

use crate::ebpf;

/// Capacities of the maps, fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_services: u32,
    pub max_backends: u32,
    pub max_flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_services: lb_common::DEFAULT_MAX_SERVICES,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
        }
    }
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pub capacity: Capacity,
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub backends: Array<MapData, Backend>,
    pub rings: Array<MapData, u32>,
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub local_addrs: HashMap<MapData, u32, u32>,
    pub settings: Array<MapData, Settings>,
    pub tx_ports: DevMapHash<MapData>,
    pub global_counters: PerCpuArray<MapData, u64>,
    pub service_stats: PerCpuArray<MapData, ServiceStats>,
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    /// Interfaces the program is attached to: name → (ifindex, mode, link).
    attached: StdHashMap<String, (u32, AttachedMode, aya::programs::xdp::XdpLinkId)>,
    pin_dir: Option<PathBuf>,
}

/// Takes a map out of the object as its typed handle, pinning it under `pin_dir`.
fn take<T>(ebpf: &mut Ebpf, name: &str, pin_dir: Option<&Path>) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
    if let Some(dir) = pin_dir {
        let path = dir.join(name);
        map.pin(&path)
            .with_context(|| format!("pin {}", path.display()))?;
    }
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Dataplane {
    /// Loads the XDP program (verifier included) with maps of the given capacity,
    /// pinning every map under `pin_dir` (stale pins of an earlier run are replaced) so
    /// operators and tools such as bpftool can inspect them.
    pub fn load(capacity: Capacity, pin_dir: Option<&Path>) -> Result<Dataplane> {
        let object = ebpf::object()?;
        let rings = capacity
            .max_services
            .checked_mul(2 * MAGLEV_RING_SIZE)
            .context("max_services too large for the Maglev ring array")?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SERVICES, capacity.max_services)
            .map_max_entries(map_names::SERVICE_STATS, capacity.max_services)
            .map_max_entries(map_names::BACKENDS, capacity.max_backends)
            .map_max_entries(map_names::BACKEND_STATS, capacity.max_backends)
            .map_max_entries(map_names::MAGLEV_RINGS, rings)
            .map_max_entries(map_names::FLOWS, capacity.max_flows)
            .load(object)
            .map_err(explain_load_error)?;
        {
            let program: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM_NAME)
                .context("XDP program missing from the object")?
                .try_into()?;
            program
                .load()
                .map_err(|e| anyhow!("the kernel refused the XDP program: {e:#}"))?;
        }
        if let Some(dir) = pin_dir {
            remove_pins(dir);
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let mut dataplane = Dataplane {
            capacity,
            services: take(&mut ebpf, map_names::SERVICES, pin_dir)?,
            backends: take(&mut ebpf, map_names::BACKENDS, pin_dir)?,
            rings: take(&mut ebpf, map_names::MAGLEV_RINGS, pin_dir)?,
            flows: take(&mut ebpf, map_names::FLOWS, pin_dir)?,
            local_addrs: take(&mut ebpf, map_names::LOCAL_ADDRS, pin_dir)?,
            settings: take(&mut ebpf, map_names::SETTINGS, pin_dir)?,
            tx_ports: take(&mut ebpf, map_names::TX_PORTS, pin_dir)?,
            global_counters: take(&mut ebpf, map_names::GLOBAL_COUNTERS, pin_dir)?,
            service_stats: take(&mut ebpf, map_names::SERVICE_STATS, pin_dir)?,
            backend_stats: take(&mut ebpf, map_names::BACKEND_STATS, pin_dir)?,
            ebpf,
            attached: StdHashMap::new(),
            pin_dir: pin_dir.map(Path::to_path_buf),
        };
        dataplane.set_settings(Settings::default())?;
        Ok(dataplane)
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(XDP_PROGRAM_NAME)
            .context("XDP program missing")?
            .try_into()?)
    }

    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.settings.set(0, settings, 0)?;
        Ok(())
    }

    /// Attaches to `ifname`: `Some(mode)` forces a mode, `None` tries native first and
    /// falls back to generic with a warning.
    pub fn attach(&mut self, ifname: &str, mode: Option<AttachedMode>) -> Result<AttachedMode> {
        let ifindex = crate::sys::ifindex(ifname)?;
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
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("register {ifname} for redirects"))?;
        self.attached
            .insert(ifname.to_string(), (ifindex, attached_mode, link));
        Ok(attached_mode)
    }

    /// Detaches from every interface (idempotent).
    pub fn detach_all(&mut self) {
        let attached: Vec<_> = self.attached.drain().collect();
        for (ifname, (ifindex, _, link)) in attached {
            let _ = self.tx_ports.remove(ifindex);
            if let Ok(program) = self.program()
                && let Err(e) = program.detach(link)
            {
                log::warn!("detach from {ifname}: {e}");
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

    /// Removes the pins made by `pin_maps` (idempotent).
    pub fn unpin_maps(&mut self) {
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir);
        }
    }

    /// Sum over CPUs of every global counter.
    pub fn global_counters(&self) -> Result<Vec<(&'static str, u64)>> {
        (0..counters::COUNT)
            .map(|index| {
                let values = self.global_counters.get(&index, 0)?;
                Ok((counters::NAMES[index as usize], values.iter().sum()))
            })
            .collect()
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        let values = self.service_stats.get(&id, 0)?;
        Ok(values
            .iter()
            .fold(ServiceStats::default(), |sum, v| ServiceStats {
                packets: sum.packets + v.packets,
                bytes: sum.bytes + v.bytes,
                new_flows: sum.new_flows + v.new_flows,
                drops: sum.drops + v.drops,
            }))
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let values = self.backend_stats.get(&id, 0)?;
        Ok(values
            .iter()
            .fold(BackendStats::default(), |sum, v| BackendStats {
                packets: sum.packets + v.packets,
                bytes: sum.bytes + v.bytes,
                new_flows: sum.new_flows + v.new_flows,
                _reserved: 0,
            }))
    }

    /// Snapshot of the flow table.
    pub fn flow_entries(&self) -> Vec<(FlowKey, FlowEntry)> {
        // Entries can vanish between key iteration and lookup (LRU, GC): skip those.
        self.flows.iter().filter_map(Result::ok).collect()
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
    let _ = fs::remove_dir(dir);
}

fn explain_load_error(error: aya::EbpfError) -> anyhow::Error {
    let text = format!("{error:#}");
    if text.contains("EPERM") || text.contains("Operation not permitted") {
        anyhow!("loading the XDP program needs root (CAP_BPF and CAP_NET_ADMIN): {text}")
    } else {
        anyhow!("loading the XDP program failed: {text}")
    }
}
