//! The controller's side of the BGP announcements (`[bgp]`): the inputs that decide
//! what BIRD announces, and `lb drain` (docs/scale-out.md, "Routes").

use super::*;
use crate::bgp::{self, Announcer, RouteInputs, control};

/// How long `lb run` waits for BIRD's greeting when it starts.
const START_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long SIGTERM waits for BIRD to take the withdrawal before the withdraw delay.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// The announcer and what it announces from.
pub struct BgpState {
    pub announcer: Announcer,
    /// Set by the daemon: `ready` once the configuration is applied, `draining` by
    /// `lb drain` and SIGTERM. The peer protocol feeds `ready` and `peer_snat` here.
    pub inputs: RouteInputs,
}

/// Before anything is loaded: BIRD must answer on `bgp.control_socket` and the routes
/// file's directory must exist; either refusal names the line of the key.
pub(super) async fn check_bird(config: &Config) -> Result<()> {
    let Some(settings) = &config.bgp else {
        return Ok(());
    };
    let dir = settings
        .routes_file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(config
            .bgp_routes_file_error(format!("directory {} does not exist", dir.display()))
            .into());
    }
    match control::probe(&settings.control_socket, START_PROBE_TIMEOUT).await {
        Ok(version) => {
            log::info!("bgp: {} on {}", version, settings.control_socket.display());
            Ok(())
        }
        Err(e) => Err(config
            .bgp_control_socket_error(format!(
                "BIRD does not answer on {}: {e:#}",
                settings.control_socket.display()
            ))
            .into()),
    }
}

impl Controller {
    /// With `[bgp]`: starts announcing (inside the runtime), ready since the
    /// configuration is applied.
    pub(super) fn start_announcing(&mut self) {
        let Some(settings) = self.config.bgp.clone() else {
            return;
        };
        // Without peers the instance is ready once its configuration is applied; with
        // them, once its peers synced it (`sync_peer_routes`). A restarted controller
        // that adopted a running data path keeps announcing: that data path never
        // stopped, and a controller crash must change no route.
        let adopted = self.dataplane.adopted();
        let inputs = match &self.peers {
            None => RouteInputs {
                ready: true,
                ..RouteInputs::default()
            },
            Some(peers) => route_inputs(&peers.status(), false, adopted, self.moves.as_ref()),
        };
        let routes = bgp::desired_routes(&self.config.services, &settings.return_routes, &inputs);
        self.bgp = Some(BgpState {
            announcer: Announcer::spawn(settings, routes),
            inputs,
        });
    }

    /// Recomputes the wanted routes from the configuration and the inputs; the
    /// announcer acts only if they changed. Call after changing either.
    pub fn update_routes(&mut self) {
        let (Some(state), Some(settings)) = (&self.bgp, &self.config.bgp) else {
            return;
        };
        state.announcer.want(bgp::desired_routes(
            &self.config.services,
            &settings.return_routes,
            &state.inputs,
        ));
    }

    /// With `[peers]`: announce once synced, and back up the live peers' SNAT addresses
    /// (docs/scale-out.md, "Routes"). Called on the peers' poll.
    pub(super) fn sync_peer_routes(&mut self) {
        let (Some(peers), Some(state)) = (&self.peers, &mut self.bgp) else {
            return;
        };
        let inputs = route_inputs(
            &peers.status(),
            state.inputs.draining,
            self.dataplane.adopted(),
            self.moves.as_ref(),
        );
        if inputs != state.inputs {
            if inputs.ready && !state.inputs.ready {
                log::info!("bgp: synced with the peers, announcing");
            }
            state.inputs = inputs;
            self.update_routes();
        }
    }

    /// `lb drain`: withdraw every route, keep forwarding.
    pub(super) fn drain(&mut self) -> Result<api::BgpStatus> {
        let Some(state) = &mut self.bgp else {
            bail!("nothing to drain: the configuration has no [bgp]");
        };
        if !state.inputs.draining {
            log::info!("bgp: draining, withdrawing every route");
        }
        state.inputs.draining = true;
        if let Some(peers) = &self.peers {
            peers.set_draining();
        }
        self.update_routes();
        self.bgp_status()
            .ok_or_else(|| anyhow::anyhow!("[bgp] went away"))
    }

    /// SIGTERM: withdraw; the caller waits for BIRD and the withdraw delay.
    pub(super) fn withdraw_for_exit(
        &mut self,
    ) -> Option<(Arc<Mutex<bgp::AnnouncerStatus>>, Duration)> {
        let delay = self.config.bgp.as_ref()?.withdraw_delay;
        let state = self.bgp.as_mut()?;
        state.inputs.draining = true;
        let status = state.announcer.status_handle();
        if let Some(peers) = &self.peers {
            peers.set_draining();
        }
        self.update_routes();
        Some((status, delay))
    }

    pub(super) fn bgp_status(&self) -> Option<api::BgpStatus> {
        let state = self.bgp.as_ref()?;
        let status = state.announcer.status();
        Some(api::BgpStatus {
            state: if state.inputs.draining {
                "draining"
            } else if state.inputs.ready {
                "announcing"
            } else {
                "not-ready"
            }
            .to_string(),
            routes_wanted: status.wanted.len(),
            routes_announced: status.announced.as_ref().map(bgp::RouteSet::len),
            in_sync: status.in_sync(),
            configures: status.configures,
            configure_failures: status.configure_failures,
            last_error: status.last_error,
        })
    }
}

/// `lb drain` answers once BIRD has withdrawn (or after [`WITHDRAW_TIMEOUT`]), without
/// holding the controller meanwhile: the operator can stop the instance right after.
pub(super) async fn drained(controller: Arc<Mutex<Controller>>) -> Result<Reply> {
    let c = controller.clone();
    let status = tokio::task::spawn_blocking(move || {
        lock(&c)
            .bgp
            .as_ref()
            .map(|state| state.announcer.status_handle())
    })
    .await?;
    if let Some(status) = status {
        bgp::announcer::wait_in_sync(&status, WITHDRAW_TIMEOUT).await;
    }
    let status = tokio::task::spawn_blocking(move || lock(&controller).bgp_status()).await?;
    Ok(Reply::Drained(
        status.ok_or_else(|| anyhow::anyhow!("[bgp] went away"))?,
    ))
}

/// After SIGTERM with `[bgp]`: wait for BIRD to withdraw (bounded), then keep
/// forwarding for the withdraw delay so the routers move the traffic first.
pub(super) async fn withdraw_and_wait(status: Arc<Mutex<bgp::AnnouncerStatus>>, delay: Duration) {
    if bgp::announcer::wait_in_sync(&status, WITHDRAW_TIMEOUT).await {
        log::info!(
            "bgp: routes withdrawn; forwarding {} ms more before exiting",
            delay.as_millis()
        );
    } else {
        log::warn!(
            "bgp: BIRD did not take the withdrawal within {} s; exiting after the delay anyway",
            WITHDRAW_TIMEOUT.as_secs()
        );
    }
    tokio::time::sleep(delay).await;
}

/// What BIRD should announce as the peer protocol sees the cluster: ready once synced
/// (or at once over an adopted data path), the peers' SNAT addresses as backups, the
/// owned VIPs as their mode table says.
fn route_inputs(
    peers: &crate::peers::membership::PeersStatus,
    draining: bool,
    adopted: bool,
    moves: Option<&crate::peers::moves::Moves>,
) -> RouteInputs {
    RouteInputs {
        ready: peers.ready || adopted,
        draining,
        peer_snat: peers.peer_snat.clone(),
        owned_primary: moves
            .map(|m| m.primary().into_iter().collect())
            .unwrap_or_default(),
        owned_backup: moves
            .map(|m| m.backup().into_iter().collect())
            .unwrap_or_default(),
    }
}
