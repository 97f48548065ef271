//! One sample of each reply, for the shape tests here and the rendering tests.

use super::*;

pub fn status() -> Status {
    Status {
        name: "lb-demo".into(),
        config: "/etc/lb/lb.toml".into(),
        pid: 4242,
        uptime_secs: 75,
        generation: 3,
        last_reload: Some("ok (generation 3)".into()),
        interfaces: vec![InterfaceStatus {
            name: "veth-lb".into(),
            ifindex: 7,
            mode: AttachedMode::Native,
        }],
        pin_dir: "/sys/fs/bpf/lb-demo".into(),
        services: 2,
        connections: 5,
        flows_expired: 11,
        adopted: false,
        metrics: None,
        bgp: None,
    }
}

pub fn stats() -> Stats {
    Stats {
        counters: [("pass".to_string(), 10), ("drop".to_string(), 2)].into(),
        services: vec![ServiceStats {
            name: "web".into(),
            vip: "198.18.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            mode: Mode::FullNat,
            snat_ips: vec!["198.19.1.1".parse().unwrap(), "198.19.1.2".parse().unwrap()],
            id: 1,
            packets: 100,
            bytes: 6400,
            new_flows: 4,
            drops: 3,
            denied: 1,
            syn_cookies: SynCookieStats {
                mode: "on".into(),
                sent: 7000,
                switched_on: 1,
                switched_off: 0,
                pressure: 6500,
            },
            backends: vec![BackendStats {
                address: "198.19.0.11:8080".parse().unwrap(),
                id: 2,
                weight: 5,
                packets: 60,
                bytes: 3840,
                new_flows: 3,
            }],
        }],
    }
}

pub fn flows() -> Vec<FlowRow> {
    let flow = FlowRow {
        protocol: "tcp".into(),
        service: "web".into(),
        client: "198.18.0.2:40000".into(),
        vip: "198.18.0.10:80".into(),
        snat: "198.19.0.1:1024".into(),
        server: "198.19.0.11:8080".into(),
        state: "established".into(),
        age_secs: 9,
        idle_secs: 1,
        backend_id: 2,
        owner: 1,
        proxy: None,
    };
    let proxied = FlowRow {
        protocol: "tcp".into(),
        client: "198.18.0.3:40001".into(),
        state: "syn-proxy".into(),
        proxy: Some(ProxyColumns {
            seq: 12345,
            delta: 0,
            timestamp: 0,
        }),
        ..flow.clone()
    };
    vec![flow, proxied]
}

pub fn summary() -> ApplySummary {
    ApplySummary {
        services_added: 1,
        services_removed: 0,
        services_changed: 2,
        rings_swapped: 2,
        ring_slots_written: 130,
        backends_added: 1,
        backends_removed: 0,
    }
}

pub fn backends() -> Vec<BackendRow> {
    vec![
        BackendRow {
            service: "web".into(),
            backend: "198.19.0.11:8080".parse().unwrap(),
            id: 2,
            weight: 5,
            effective_weight: 0,
            source: BackendSource::Config,
            state: BackendState::Draining,
            health: BackendHealth::Down,
            last_error: Some("connection refused".into()),
            active_flows: 3,
            new_flows: 7,
            packets: 60,
            bytes: 3840,
        },
        BackendRow {
            service: "web".into(),
            backend: "198.19.0.21:8080".parse().unwrap(),
            id: 3,
            weight: 1,
            effective_weight: 1,
            source: BackendSource::Announced,
            state: BackendState::Active,
            health: BackendHealth::Unknown,
            last_error: None,
            active_flows: 0,
            new_flows: 0,
            packets: 0,
            bytes: 0,
        },
    ]
}

pub fn sessions() -> Vec<SessionRow> {
    vec![
        SessionRow {
            client: "198.18.0.2".parse().unwrap(),
            service: Some("web".into()),
            backend: Some("198.19.0.11:8080".parse().unwrap()),
            backend_id: 2,
            age_secs: 30,
            idle_secs: 4,
            handle: "1/198.18.0.2".into(),
        },
        SessionRow {
            client: "198.18.0.3".parse().unwrap(),
            service: None,
            backend: None,
            backend_id: 9,
            age_secs: 31,
            idle_secs: 31,
            handle: "4/198.18.0.3".into(),
        },
    ]
}

pub fn nodes() -> Nodes {
    Nodes {
        cluster_id: 7,
        router: "198.19.0.1".parse().unwrap(),
        port: 7394,
        management: Some("198.19.0.21".parse().unwrap()),
        controller_configured: false,
        heartbeat_ms: 1000,
        dead_after: 3,
        table_generation: 12,
        counters: RouterCounters {
            received: 40,
            accepted: 38,
            drop_bad_tag: 2,
            joins: 1,
            ..RouterCounters::default()
        },
        endpoints: vec![AnnouncedEndpoint {
            service: "web".into(),
            vip: "198.18.0.10".parse().unwrap(),
            service_port: 80,
            protocol: Protocol::Tcp,
            node: "198.19.0.21".parse().unwrap(),
            port: 8080,
            priority: 5,
            state: NodeState::Active,
            health: NodeHealth::Up,
            capacity: 2,
            load_permille: 250,
            connections: 17,
            tokens: 600,
            applied: Some((NodeState::Draining, 0)),
        }],
    }
}

pub fn bgp() -> BgpStatus {
    BgpStatus {
        state: "draining".into(),
        routes_wanted: 0,
        routes_announced: Some(0),
        in_sync: true,
        configures: 2,
        configure_failures: 1,
        last_error: None,
    }
}

pub fn peers() -> PeersStatus {
    let mut rejected: std::collections::BTreeMap<String, u64> =
        crate::peers::membership::Reject::ALL
            .iter()
            .map(|r| (r.name().to_string(), 0))
            .collect();
    rejected.insert("bad_tag".into(), 2);
    PeersStatus {
        node_id: 1,
        cluster_id: 9,
        listen: "198.18.0.1:7395".parse().unwrap(),
        state: PeerNodeState::Ready,
        ready: true,
        live_nodes: [1, 2].into(),
        peer_snat: vec!["198.19.1.2".parse().unwrap()],
        join_timeout_ms: 5000,
        dead_after_ms: 1000,
        peers: vec![
            PeerRow {
                node_id: 2,
                address: "198.18.0.2:7395".parse().unwrap(),
                state: PeerState::Up,
                announced: Some(PeerNodeState::Ready),
                outgoing: PeerOutgoing::Connected,
                last_heard_ms: Some(120),
                flows_held: 17,
                lag_ms: Some(3),
                announcements_received: 40,
                queued: 0,
                snat: vec!["198.19.1.2".parse().unwrap()],
            },
            PeerRow {
                node_id: 3,
                address: "198.18.0.3:7395".parse().unwrap(),
                state: PeerState::Down,
                announced: None,
                outgoing: PeerOutgoing::Failed,
                last_heard_ms: None,
                flows_held: 0,
                lag_ms: None,
                announcements_received: 0,
                queued: 0,
                snat: vec![],
            },
        ],
        install_lag: Some(crate::peers::membership::InstallLag {
            samples: 40,
            p50_ms: 3,
            p99_ms: 9,
            max_ms: 12,
        }),
        counters: PeerCounters {
            messages_received: 52,
            announcements_sent: 33,
            announcement_bytes_sent: 2310,
            announcements_received: 40,
            announcements_applied: 0,
            queue_overflows: 0,
            connections_refused: 0,
            rejected,
        },
    }
}

/// Two owned VIPs: one owned here, one backed up while its move is under way.
pub fn vips() -> Vec<crate::peers::moves::VipRow> {
    use crate::peers::moves::{Mode, MoveRow, Step, VipRow};
    vec![
        VipRow {
            vip: "198.18.1.20".parse().unwrap(),
            mode: Mode::Normal,
            owner: 1,
            epoch: 0,
            since_ms: 9000,
            moving: None,
        },
        VipRow {
            vip: "198.18.1.21".parse().unwrap(),
            mode: Mode::Transition,
            owner: 2,
            epoch: 3,
            since_ms: 40,
            moving: Some(MoveRow {
                peer: 2,
                step: Step::Streaming,
            }),
        },
    ]
}
