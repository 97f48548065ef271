//! The routes an instance announces, and the file BIRD reads them from.
//!
//! The file holds one BIRD static protocol per kind of route, always all five (empty
//! when nothing of that kind is announced), so the operator's `bird.conf` can export
//! them by name (`proto = "lb_vips"`) whatever the instance's state. The routes are
//! blackholes: BIRD only needs them to exist to announce them over BGP with itself as
//! the next hop; the instance's own kernel never receives them (its `bird.conf` has no
//! kernel protocol exporting them). docs/scale-out.md, "Routes".

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::config::ServiceConfig;
use crate::domain::Prefix;

/// Static protocol of every VIP the instance serves.
pub const PROTO_VIPS: &str = "lb_vips";
/// Static protocol of every SNAT address the instance owns.
pub const PROTO_SNAT: &str = "lb_snat";
/// Static protocol of the SNAT addresses of live peers (exported with a longer AS path).
pub const PROTO_SNAT_BACKUP: &str = "lb_snat_backup";
/// Static protocol of the routes back to the clients (`bgp.return_routes`).
pub const PROTO_RETURN: &str = "lb_return";
/// Static protocol of the owned VIPs another instance owns (exported with a longer AS
/// path): announced so that the VIP stays reachable whatever happens to its owner.
pub const PROTO_VIPS_BACKUP: &str = "lb_vips_backup";

/// Every protocol the routes file defines, in file order.
pub const PROTOCOLS: [&str; 5] = [
    PROTO_VIPS,
    PROTO_SNAT,
    PROTO_SNAT_BACKUP,
    PROTO_RETURN,
    PROTO_VIPS_BACKUP,
];

/// What the instance announces; empty = nothing (not ready, or draining).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSet {
    pub vips: BTreeSet<Ipv4Addr>,
    pub snat: BTreeSet<Ipv4Addr>,
    /// Peers' SNAT addresses; never one of `snat`.
    pub snat_backup: BTreeSet<Ipv4Addr>,
    pub return_routes: BTreeSet<Prefix>,
    /// Owned VIPs of other instances; never one of `vips`.
    pub vips_backup: BTreeSet<Ipv4Addr>,
}

impl RouteSet {
    /// Number of routes announced.
    pub fn len(&self) -> usize {
        self.vips.len()
            + self.snat.len()
            + self.snat_backup.len()
            + self.return_routes.len()
            + self.vips_backup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The instance's state that decides what it announces, besides its configuration. The
/// daemon keeps one and recomputes the routes whenever it changes; the peer protocol
/// (docs/scale-out.md, "Peers") sets `ready` and `peer_snat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteInputs {
    /// Synced with the peers (without peers: the configuration is applied).
    pub ready: bool,
    /// `lb drain` or SIGTERM: announce nothing, keep forwarding.
    pub draining: bool,
    /// SNAT addresses of the live peers, announced as backups.
    pub peer_snat: Vec<Ipv4Addr>,
    /// Owned VIPs (`bgp.owned_vip`) this instance announces as primary, and those it
    /// backs up (`peers::moves::Moves`); every other VIP is announced as primary by all.
    pub owned_primary: BTreeSet<Ipv4Addr>,
    pub owned_backup: BTreeSet<Ipv4Addr>,
}

/// The routes to announce: everything while ready and not draining, nothing otherwise.
pub fn desired_routes(
    services: &[ServiceConfig],
    return_routes: &[Prefix],
    inputs: &RouteInputs,
) -> RouteSet {
    if !inputs.ready || inputs.draining {
        return RouteSet::default();
    }
    let vips: BTreeSet<Ipv4Addr> = services
        .iter()
        .map(|s| s.vip)
        .filter(|vip| !inputs.owned_backup.contains(vip))
        .chain(inputs.owned_primary.iter().copied())
        .collect();
    let vips_backup = inputs
        .owned_backup
        .iter()
        .copied()
        .filter(|vip| !inputs.owned_primary.contains(vip))
        .collect();
    let snat = crate::config::Config::snat_addresses(services);
    // An address both owned and a peer's (a misconfigured cluster) is announced as ours
    // only: a backup route of our own address would only lengthen our path.
    let snat_backup = inputs
        .peer_snat
        .iter()
        .copied()
        .filter(|ip| !snat.contains(ip))
        .collect();
    RouteSet {
        vips,
        snat,
        snat_backup,
        return_routes: return_routes.iter().copied().collect(),
        vips_backup,
    }
}

/// The routes file for `routes`: five static protocols, always all defined.
pub fn render(routes: &RouteSet) -> String {
    let mut out = String::from(
        "# Written by lb: the routes this instance announces (docs/scale-out.md, \"Routes\").\n\
         # Do not edit: lb rewrites this file whenever what it announces changes.\n",
    );
    let hosts = |set: &BTreeSet<Ipv4Addr>| -> Vec<Prefix> {
        set.iter().map(|&addr| Prefix { addr, len: 32 }).collect()
    };
    let sections = [
        (PROTO_VIPS, hosts(&routes.vips)),
        (PROTO_SNAT, hosts(&routes.snat)),
        (PROTO_SNAT_BACKUP, hosts(&routes.snat_backup)),
        (
            PROTO_RETURN,
            routes.return_routes.iter().copied().collect::<Vec<_>>(),
        ),
        (PROTO_VIPS_BACKUP, hosts(&routes.vips_backup)),
    ];
    for (name, prefixes) in sections {
        let _ = writeln!(out, "\nprotocol static {name} {{\n  ipv4;");
        for prefix in prefixes {
            let _ = writeln!(out, "  route {prefix} blackhole;");
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn services() -> Vec<ServiceConfig> {
        let text = r#"
[interfaces]
attach = ["eth0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ips = ["198.19.1.1", "198.19.1.2"]
[[service.backend]]
address = "198.19.0.11"
[[service]]
name = "dns"
vip = "198.18.1.10"
port = 53
protocol = "udp"
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
[[service]]
name = "direct"
vip = "198.18.1.11"
port = 80
mode = "dnat"
[[service.backend]]
address = "198.19.0.11"
"#;
        Config::parse(text, Path::new("t.toml")).unwrap().services
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn ready() -> RouteInputs {
        RouteInputs {
            ready: true,
            draining: false,
            peer_snat: vec![ip("198.19.1.3"), ip("198.19.1.2")],
            ..RouteInputs::default()
        }
    }

    #[test]
    fn ready_instance_announces_vips_snat_backups_and_return_routes() {
        let returns = ["198.18.0.0/24".parse().unwrap()];
        let routes = desired_routes(&services(), &returns, &ready());
        assert_eq!(
            routes.vips.iter().copied().collect::<Vec<_>>(),
            [ip("198.18.1.10"), ip("198.18.1.11")]
        );
        assert_eq!(
            routes.snat.iter().copied().collect::<Vec<_>>(),
            [ip("198.19.1.1"), ip("198.19.1.2")]
        );
        // 198.19.1.2 is ours too: announced once, as ours.
        assert_eq!(
            routes.snat_backup.iter().copied().collect::<Vec<_>>(),
            [ip("198.19.1.3")]
        );
        assert_eq!(routes.return_routes.len(), 1);
        assert_eq!(routes.len(), 6);
    }

    #[test]
    fn not_ready_or_draining_announces_nothing() {
        let returns = ["198.18.0.0/24".parse().unwrap()];
        let mut inputs = ready();
        inputs.ready = false;
        assert!(desired_routes(&services(), &returns, &inputs).is_empty());
        let mut inputs = ready();
        inputs.draining = true;
        assert!(desired_routes(&services(), &returns, &inputs).is_empty());
        inputs.ready = false;
        assert!(desired_routes(&services(), &returns, &inputs).is_empty());
    }

    #[test]
    fn owned_vips_are_primary_at_their_owner_and_backup_elsewhere() {
        let owned = |primary: &[&str], backup: &[&str]| RouteInputs {
            owned_primary: primary.iter().map(|a| ip(a)).collect(),
            owned_backup: backup.iter().map(|a| ip(a)).collect(),
            ..ready()
        };
        // .11 is owned by another instance: backed up, not announced as primary.
        let routes = desired_routes(&services(), &[], &owned(&[], &["198.18.1.11"]));
        assert_eq!(routes.vips, BTreeSet::from([ip("198.18.1.10")]));
        assert_eq!(routes.vips_backup, BTreeSet::from([ip("198.18.1.11")]));
        // Owned here: primary only.
        let routes = desired_routes(&services(), &[], &owned(&["198.18.1.11"], &[]));
        assert_eq!(
            routes.vips,
            BTreeSet::from([ip("198.18.1.10"), ip("198.18.1.11")])
        );
        assert!(routes.vips_backup.is_empty());
        let text = render(&desired_routes(
            &services(),
            &[],
            &owned(&[], &["198.18.1.11"]),
        ));
        assert!(text.ends_with(
            "protocol static lb_vips_backup {\n  ipv4;\n  route 198.18.1.11/32 blackhole;\n}\n"
        ));
        // Draining withdraws the backups too.
        let mut draining = owned(&[], &["198.18.1.11"]);
        draining.draining = true;
        assert!(desired_routes(&services(), &[], &draining).is_empty());
    }

    #[test]
    fn renders_every_protocol_even_when_empty() {
        assert_eq!(
            render(&RouteSet::default()),
            "# Written by lb: the routes this instance announces (docs/scale-out.md, \"Routes\").\n\
             # Do not edit: lb rewrites this file whenever what it announces changes.\n\
             \nprotocol static lb_vips {\n  ipv4;\n}\n\
             \nprotocol static lb_snat {\n  ipv4;\n}\n\
             \nprotocol static lb_snat_backup {\n  ipv4;\n}\n\
             \nprotocol static lb_return {\n  ipv4;\n}\n\
             \nprotocol static lb_vips_backup {\n  ipv4;\n}\n"
        );
    }

    #[test]
    fn renders_routes_as_blackholes_under_their_protocol() {
        let returns = ["198.18.0.0/24".parse().unwrap()];
        let text = render(&desired_routes(&services(), &returns, &ready()));
        let body: Vec<&str> = text.lines().skip(2).filter(|l| !l.is_empty()).collect();
        assert_eq!(
            body,
            [
                "protocol static lb_vips {",
                "  ipv4;",
                "  route 198.18.1.10/32 blackhole;",
                "  route 198.18.1.11/32 blackhole;",
                "}",
                "protocol static lb_snat {",
                "  ipv4;",
                "  route 198.19.1.1/32 blackhole;",
                "  route 198.19.1.2/32 blackhole;",
                "}",
                "protocol static lb_snat_backup {",
                "  ipv4;",
                "  route 198.19.1.3/32 blackhole;",
                "}",
                "protocol static lb_return {",
                "  ipv4;",
                "  route 198.18.0.0/24 blackhole;",
                "}",
                "protocol static lb_vips_backup {",
                "  ipv4;",
                "}",
            ]
        );
    }
}
