//! The I/O half of an apply: a plan's writes, in order, and nothing else.

use anyhow::{Context as _, Result};

use super::plan::Op;
use crate::dataplane::Dataplane;

/// Performs `ops` in order. Every check was made when they were planned, so only a
/// failing syscall stops this; the writes before it stay done (the data path is then
/// part way between the old state and the new one, each packet still seeing whole
/// rings and entries, since the order of the writes is kept).
pub fn execute(ops: &[Op], dp: &mut Dataplane) -> Result<()> {
    for op in ops {
        match op {
            Op::WriteSettings(settings) => dp.set_settings(*settings)?,
            Op::WriteBackend { id, backend } => dp.write_backend(*id, *backend)?,
            Op::RemoveService(key) => dp.remove_service(key)?,
            Op::ClearServiceStats(id) => dp.clear_service_stats(*id)?,
            Op::ClearBackendStats(id) => dp.clear_backend_stats(*id)?,
            Op::RemoveSessionsOfServices(ids) => {
                dp.remove_sessions(|key, _| ids.contains(&key.service_id));
            }
            Op::RemoveSessionsOfBackends(ids) => {
                dp.remove_sessions(|_, entry| ids.contains(&entry.backend_id));
            }
            Op::WriteRing { first_slot, ring } => dp.write_ring(*first_slot, ring),
            Op::AddEligibility { service_id, prefix } => dp
                .insert_eligibility(*service_id, prefix.addr, prefix.len)
                .with_context(|| format!("add allow-list prefix {prefix}"))?,
            Op::RemoveEligibility { service_id, prefix } => {
                if let Err(e) = dp.remove_eligibility(*service_id, prefix.addr, prefix.len) {
                    log::warn!(
                        "removing allow-list prefix {prefix} of service {service_id}: {e:#}"
                    );
                }
            }
            Op::WriteService { key, entry } => dp.write_service(*key, *entry)?,
            Op::WriteLocalAddr { addr, kind } => dp.write_local_addr(*addr, *kind)?,
            Op::RemoveLocalAddr(addr) => dp.remove_local_addr(*addr)?,
            Op::WriteSnatPool { service_id, pool } => dp.write_snat_pool(*service_id, *pool)?,
            Op::WriteAddrFilter(filter) => dp.write_addr_filter(filter)?,
        }
    }
    Ok(())
}
