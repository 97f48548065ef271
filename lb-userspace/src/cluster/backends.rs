//! Announced endpoints become backends: the router's table is merged into the config and
//! the run-time overrides before they are applied to the data plane, so static and
//! announced backends share one `ServiceTable::apply_with`.
//!
//! Rules (docs/cluster-protocol.md, "Announced backends"):
//! * an active endpoint with tokens takes new flows; weight 0 otherwise;
//! * a draining endpoint (its node left) is drained; a down one (silent node, or the
//!   node reports the service down) is down;
//! * weights: the tokens (per-mille of the announced share) are used as they are when
//!   the service has no configured backend weight; otherwise the announced endpoints
//!   together weigh as much as the configured backends together, so each announced
//!   endpoint gets `tokens × (sum of configured weights) / 1000`, at least 1;
//! * a configured backend wins over an announced endpoint with the same address and
//!   port (the announcement is ignored for the data plane);
//! * announced backends are added only while `limits.max_backends` has room.

use std::collections::BTreeSet;

use super::{
    allotment::TOKENS,
    router::{AnnouncedEndpoint, NodeState},
};
use crate::{
    config::{BackendConfig, Config},
    domain::BackendAddr,
    services::Overrides,
};

/// What [`merge`] left out, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// (service, backend) announced but also configured: the configured one wins.
    pub configured: Vec<(String, BackendAddr)>,
    /// (service, backend) beyond `limits.max_backends`.
    pub no_room: Vec<(String, BackendAddr)>,
}

/// `config` and `overrides` with the announced endpoints added as backends.
pub fn merge(
    config: &Config,
    overrides: &Overrides,
    announced: &[AnnouncedEndpoint],
) -> (Config, Overrides, Skipped) {
    let mut merged = config.clone();
    let mut overrides = overrides.clone();
    let mut skipped = Skipped::default();
    let mut distinct: BTreeSet<BackendAddr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port)))
        .collect();
    // Per configured service: its backends and their total weight, looked up once.
    let configured: std::collections::BTreeMap<&str, (BTreeSet<BackendAddr>, u64)> = config
        .services
        .iter()
        .map(|s| {
            let addrs = s.backends.iter().map(|b| (b.address, b.port)).collect();
            let weight = s.backends.iter().map(|b| u64::from(b.weight)).sum();
            (s.name.as_str(), (addrs, weight))
        })
        .collect();
    for endpoint in announced {
        let Some(service) = merged
            .services
            .iter_mut()
            .find(|s| s.name == endpoint.service && s.protocol == endpoint.protocol)
        else {
            continue;
        };
        let addr = (endpoint.node, endpoint.port);
        let key = (service.name.clone(), addr);
        let (configured_addrs, configured_weight) = configured
            .get(service.name.as_str())
            .map_or((None, 0), |(addrs, weight)| (Some(addrs), *weight));
        if configured_addrs.is_some_and(|addrs| addrs.contains(&addr)) {
            skipped.configured.push(key);
            continue;
        }
        if !distinct.contains(&addr) {
            if distinct.len() as u64 >= u64::from(config.limits.max_backends) {
                skipped.no_room.push(key);
                continue;
            }
            distinct.insert(addr);
        }
        let weight = match endpoint.state {
            NodeState::Active if endpoint.tokens > 0 => scaled(endpoint.tokens, configured_weight),
            _ => 0,
        };
        match endpoint.state {
            NodeState::Draining => {
                overrides.drained.insert(addr);
            }
            NodeState::Down => {
                overrides.down.insert(key);
            }
            NodeState::Active if weight == 0 => {
                // Active node, but it reports the service down.
                overrides.down.insert(key);
            }
            NodeState::Active => {}
        }
        service.backends.push(BackendConfig {
            address: endpoint.node,
            port: endpoint.port,
            weight,
        });
    }
    (merged, overrides, skipped)
}

/// An announced endpoint's ring weight: its tokens, or its share of the configured
/// backends' total weight.
fn scaled(tokens: u32, configured_weight: u64) -> u32 {
    if configured_weight == 0 {
        return tokens;
    }
    let weight =
        (u64::from(tokens) * configured_weight + u64::from(TOKENS) / 2) / u64::from(TOKENS);
    weight.clamp(1, u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;
    use crate::{cluster::wire::Health, domain::Protocol};

    const CONFIG: &str = r#"[interfaces]
attach = ["lb-int"]
[limits]
max_backends = 4
[cluster]
cluster_id = 7
key_file = "/k"
router_ip = "198.19.0.1"
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
[[service]]
name = "mixed"
vip = "198.18.1.10"
port = 81
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.50"
weight = 2
[[service.backend]]
address = "198.19.0.51"
weight = 3
"#;

    fn endpoint(
        service: &str,
        last: u8,
        port: u16,
        state: NodeState,
        tokens: u32,
    ) -> AnnouncedEndpoint {
        AnnouncedEndpoint {
            service: service.into(),
            vip: Ipv4Addr::new(198, 18, 1, 10),
            service_port: 80,
            protocol: Protocol::Tcp,
            node: Ipv4Addr::new(198, 19, 0, last),
            port,
            priority: 0,
            state,
            health: if tokens > 0 { Health::Up } else { Health::Down },
            capacity: 1,
            load_permille: 0,
            connections: 0,
            tokens,
            applied: None,
        }
    }

    fn weights(config: &Config, service: &str) -> Vec<(Ipv4Addr, u16, u32)> {
        config
            .services
            .iter()
            .find(|s| s.name == service)
            .unwrap()
            .backends
            .iter()
            .map(|b| (b.address, b.port, b.weight))
            .collect()
    }

    #[test]
    fn announced_endpoints_become_backends_by_state() {
        let config = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let announced = [
            endpoint("web", 11, 80, NodeState::Active, 400),
            endpoint("web", 12, 80, NodeState::Draining, 0),
            endpoint("web", 13, 80, NodeState::Down, 0),
            endpoint("web", 14, 80, NodeState::Active, 0),
            endpoint("nosuch", 15, 80, NodeState::Active, 1000),
        ];
        let (merged, overrides, skipped) = merge(&config, &Overrides::default(), &announced);
        let ip = |last| Ipv4Addr::new(198, 19, 0, last);
        // max_backends 4 with two configured: 198.19.0.13 and .14 find no room.
        assert_eq!(
            weights(&merged, "web"),
            vec![(ip(11), 80, 400), (ip(12), 80, 0)]
        );
        assert_eq!(
            skipped.no_room,
            vec![("web".into(), (ip(13), 80)), ("web".into(), (ip(14), 80))]
        );
        assert!(overrides.drained.contains(&(ip(12), 80)));
        assert!(overrides.down.is_empty());
        // The config itself is untouched.
        assert!(weights(&config, "web").is_empty());

        let mut roomy = config.clone();
        roomy.limits.max_backends = 16;
        let (merged, overrides, _) = merge(&roomy, &Overrides::default(), &announced);
        assert_eq!(weights(&merged, "web").len(), 4);
        assert!(overrides.down.contains(&("web".into(), (ip(13), 80))));
        assert!(overrides.down.contains(&("web".into(), (ip(14), 80))));
        assert_eq!(
            overrides.effective_weight("web", (ip(13), 80), 0),
            0,
            "a down endpoint takes no new flows"
        );
    }

    #[test]
    fn mixed_services_share_by_configured_weight_and_configured_wins() {
        let mut config = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
        config.limits.max_backends = 16;
        let announced = [
            endpoint("mixed", 11, 80, NodeState::Active, 400),
            endpoint("mixed", 12, 80, NodeState::Active, 300),
            endpoint("mixed", 13, 80, NodeState::Active, 300),
            // Same address and port as a configured backend: ignored.
            endpoint("mixed", 50, 81, NodeState::Active, 1),
        ];
        let (merged, _, skipped) = merge(&config, &Overrides::default(), &announced);
        let ip = |last| Ipv4Addr::new(198, 19, 0, last);
        // Configured weights sum to 5: the announced endpoints together weigh 5.
        assert_eq!(
            weights(&merged, "mixed"),
            vec![
                (ip(50), 81, 2),
                (ip(51), 81, 3),
                (ip(11), 80, 2),
                (ip(12), 80, 2),
                (ip(13), 80, 2),
            ]
        );
        assert_eq!(skipped.configured, vec![("mixed".into(), (ip(50), 81))]);
        assert_eq!(scaled(400, 100), 40);
        assert_eq!(
            scaled(1, 100),
            1,
            "an endpoint with tokens never rounds to 0"
        );
        assert_eq!(scaled(400, 0), 400);
    }
}
