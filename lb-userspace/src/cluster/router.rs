//! Router side of the cluster protocol as a pure state machine: datagrams and time in,
//! datagrams to send and the announced endpoints out. No sockets and no clock of its own,
//! so every rule below is unit-tested with exact times; `cluster::io` runs it on a socket.
//!
//! Rules:
//! * Only messages of our cluster ID with a valid tag count. Each rejected datagram is
//!   counted by reason and changes nothing.
//! * Replay: per node address the router keeps the sender's instance and highest sequence
//!   number; a sequence number not above it is a replay. A timestamp further than
//!   `max_clock_skew` from our clock is stale, so a message captured before a node was
//!   forgotten cannot bring it back (`forget_after` must exceed `max_clock_skew`).
//! * A join (or a heartbeat from a node we do not know, e.g. after a router restart) makes
//!   a node active; it is answered with a router reply and a router-to-nodes message.
//! * A node silent for `dead_after` heartbeat intervals is down: no new flows. A node that
//!   leaves is draining: no new flows, its existing flows keep going. Either comes back
//!   with its next join or heartbeat. Nodes not heard for `forget_after` are forgotten.
//! * Two processes claiming one address: the one already live keeps it; the other's
//!   messages are dropped as duplicates until the first falls silent.
//! * Joins from addresses that are not live nodes are budgeted (`joins_per_second`),
//!   checked before any HMAC is computed, so a flood costs bounded work.
//! * Management node: the configured controller if there is one, else the live node with
//!   the highest priority, ties to the lowest address. Nodes are told whenever it changes.

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use super::{
    allotment::{Allotment, AllotmentPolicy, EndpointReport},
    wire::{
        self, ClusterKey, DecodeError, Fields, Function, Header, Health, Message, PacketType,
        ServiceOffer,
    },
};
use crate::domain::{DEFAULT_DEAD_AFTER, DEFAULT_HEARTBEAT_INTERVAL, Protocol};

/// A service of the balancer that nodes may offer (matched by name and protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownService {
    pub name: String,
    pub protocol: Protocol,
    pub vip: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct RouterSettings {
    pub cluster_id: u16,
    /// Our address on the nodes' segment (header word 4).
    pub router_ip: Ipv4Addr,
    /// Configured management node; `None` elects one from the live nodes.
    pub controller: Option<Ipv4Addr>,
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a node is down.
    pub dead_after: u32,
    /// Down or draining nodes not heard for this long are forgotten.
    pub forget_after: Duration,
    pub max_clock_skew: Duration,
    /// Budget of joins from unknown senders; also the burst size.
    pub joins_per_second: u32,
    pub max_nodes: usize,
    pub services: Vec<KnownService>,
    pub allotment: AllotmentPolicy,
}

impl RouterSettings {
    /// Defaults for everything but identity and services.
    pub fn new(cluster_id: u16, router_ip: Ipv4Addr, services: Vec<KnownService>) -> Self {
        Self {
            cluster_id,
            router_ip,
            controller: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
            forget_after: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(30),
            joins_per_second: 50,
            max_nodes: 256,
            services,
            allotment: AllotmentPolicy::default(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() || self.dead_after == 0 {
            return Err("heartbeat interval and dead_after must be above 0".into());
        }
        if self.forget_after <= self.max_clock_skew || self.forget_after <= self.dead_interval() {
            return Err(
                "forget_after must exceed max_clock_skew and the dead interval, or a \
                 replayed message could bring a forgotten node back"
                    .into(),
            );
        }
        if self.joins_per_second == 0 || self.max_nodes == 0 {
            return Err("joins_per_second and max_nodes must be above 0".into());
        }
        Ok(())
    }

    pub fn dead_interval(&self) -> Duration {
        self.heartbeat_interval * self.dead_after
    }
}

/// Both clocks the engine needs: monotonic for liveness, wall for message timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub wall_ms: u64,
}

impl Clock {
    pub fn system() -> Self {
        Self {
            now: Instant::now(),
            wall_ms: wall_ms(),
        }
    }
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: SocketAddrV4,
    pub datagram: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Takes new flows (if its service is healthy).
    Active,
    /// Left: no new flows, existing flows continue.
    Draining,
    /// Silent: no new flows.
    Down,
}

/// One row of the health-and-load table (docs/architecture.md): application id (VIP, port,
/// protocol; node address and port), health, load, capacity, target and current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedEndpoint {
    pub service: String,
    pub vip: Ipv4Addr,
    pub service_port: u16,
    pub protocol: Protocol,
    pub node: Ipv4Addr,
    pub port: u16,
    pub priority: u16,
    pub state: NodeState,
    pub health: Health,
    pub capacity: u32,
    pub load_permille: u32,
    pub connections: u32,
    /// Target share of the service's new flows in [`super::allotment::TOKENS`]; the
    /// endpoint's Maglev weight. 0 takes no new flows.
    pub tokens: u32,
    /// What was applied to the data plane when [`RouterEngine::mark_applied`] was last
    /// called (`None`: never).
    pub applied: Option<(NodeState, u32)>,
}

/// Counters of the router side; `drop_*` are datagrams that changed nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterCounters {
    pub received: u64,
    pub accepted: u64,
    pub drop_truncated: u64,
    pub drop_oversized: u64,
    pub drop_wrong_cluster: u64,
    pub drop_bad_tag: u64,
    pub drop_malformed: u64,
    /// Header source address differs from the datagram's.
    pub drop_address_mismatch: u64,
    /// A router's packet type sent to the router.
    pub drop_unexpected_type: u64,
    pub drop_replay: u64,
    pub drop_stale: u64,
    pub drop_duplicate_address: u64,
    pub drop_join_rate_limited: u64,
    pub drop_table_full: u64,
    pub drop_unknown_node: u64,
    pub joins: u64,
    pub rejoins: u64,
    pub leaves: u64,
    pub expired: u64,
    pub forgotten: u64,
    /// Announcements of a service the balancer does not have (each node/name once).
    pub unknown_services: u64,
}

#[derive(Clone, Debug)]
struct Node {
    reply_to: SocketAddrV4,
    instance: u64,
    last_sequence: u64,
    priority: u16,
    state: NodeState,
    last_heard: Instant,
    services: Vec<ServiceOffer>,
    capacity: u32,
    /// Exponentially smoothed, so one noisy report moves little.
    load_smoothed: f64,
    connections: u32,
}

/// Weight of a new load report in the smoothed value.
const LOAD_SMOOTHING: f64 = 0.3;
/// Log-once sets stop growing here (the counters still count).
const LOG_ONCE_LIMIT: usize = 4096;

pub struct RouterEngine {
    settings: RouterSettings,
    key: ClusterKey,
    instance: u64,
    sequence: u64,
    nodes: BTreeMap<Ipv4Addr, Node>,
    allotments: BTreeMap<String, Allotment<Ipv4Addr>>,
    management: Ipv4Addr,
    counters: RouterCounters,
    join_budget: f64,
    budget_refilled: Instant,
    last_broadcast: Option<Instant>,
    logged_unknown: HashSet<(Ipv4Addr, String)>,
    logged_duplicate: HashSet<(Ipv4Addr, u64)>,
    endpoints: Vec<AnnouncedEndpoint>,
    applied: BTreeMap<(String, Ipv4Addr), (NodeState, u32)>,
    generation: u64,
}

impl RouterEngine {
    /// `instance` identifies this router process; `clock` seeds the sequence numbers
    /// (wall-clock microseconds), so they keep rising across restarts.
    pub fn new(
        settings: RouterSettings,
        key: ClusterKey,
        instance: u64,
        clock: Clock,
    ) -> Result<Self, String> {
        settings.validate()?;
        let join_budget = f64::from(settings.joins_per_second);
        let allotments = settings
            .services
            .iter()
            .map(|s| (s.name.clone(), Allotment::new(settings.allotment)))
            .collect();
        Ok(Self {
            management: settings.controller.unwrap_or(Ipv4Addr::UNSPECIFIED),
            settings,
            key,
            instance,
            sequence: clock.wall_ms.saturating_mul(1000),
            nodes: BTreeMap::new(),
            allotments,
            counters: RouterCounters::default(),
            join_budget,
            budget_refilled: clock.now,
            last_broadcast: None,
            logged_unknown: HashSet::new(),
            logged_duplicate: HashSet::new(),
            endpoints: Vec::new(),
            applied: BTreeMap::new(),
            generation: 0,
        })
    }

    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    pub fn counters(&self) -> RouterCounters {
        self.counters
    }

    /// The management node announced to the nodes (0.0.0.0: none yet).
    pub fn management(&self) -> Ipv4Addr {
        self.management
    }

    /// Every announced endpoint of every known service, by service then node address.
    pub fn endpoints(&self) -> &[AnnouncedEndpoint] {
        &self.endpoints
    }

    /// Rises whenever what the data plane needs from [`Self::endpoints`] (the set of
    /// endpoints, their state and tokens) changes: the daemon re-applies on a change.
    /// Load and health figures alone do not move it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The balancer's services changed (config reload): offers are matched against the
    /// new list from now on; a node's offers of a newly added service count from its
    /// next report.
    pub fn set_services(&mut self, services: Vec<KnownService>, now: Instant) {
        let policy = self.settings.allotment;
        self.allotments
            .retain(|name, _| services.iter().any(|s| &s.name == name));
        for service in &services {
            self.allotments
                .entry(service.name.clone())
                .or_insert_with(|| Allotment::new(policy));
        }
        self.settings.services = services;
        self.logged_unknown.clear();
        self.refresh(now);
    }

    /// The daemon applied the current endpoints (state and tokens) to the data plane.
    pub fn mark_applied(&mut self) {
        self.applied = self
            .endpoints
            .iter()
            .map(|e| ((e.service.clone(), e.node), (e.state, e.tokens)))
            .collect();
        for e in &mut self.endpoints {
            e.applied = Some((e.state, e.tokens));
        }
    }

    /// Handles one received datagram; returns what to send in answer.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddrV4,
        clock: Clock,
    ) -> Vec<Outgoing> {
        self.counters.received += 1;
        let mut out = Vec::new();
        if let Err(drop) = self.accept(datagram, from, clock, &mut out) {
            *self.drop_counter(drop) += 1;
        } else {
            self.counters.accepted += 1;
        }
        self.refresh(clock.now);
        out
    }

    /// Time passes: expire silent nodes, forget old ones, re-allot, and tell live nodes
    /// the router and management addresses once per heartbeat interval (their sign that
    /// the router is alive). Call it at least every heartbeat interval.
    pub fn tick(&mut self, clock: Clock) -> Vec<Outgoing> {
        let now = clock.now;
        let dead = self.settings.dead_interval();
        for (ip, node) in &mut self.nodes {
            if node.state == NodeState::Active && now.duration_since(node.last_heard) > dead {
                node.state = NodeState::Down;
                self.counters.expired += 1;
                warn!("cluster: node {ip} silent for {dead:?}: down, no new flows");
            }
        }
        let forget = self.settings.forget_after;
        let before = self.nodes.len();
        self.nodes.retain(|ip, node| {
            let keep =
                node.state == NodeState::Active || now.duration_since(node.last_heard) <= forget;
            if !keep {
                info!("cluster: node {ip} forgotten");
            }
            keep
        });
        self.counters.forgotten += (before - self.nodes.len()) as u64;

        let mut out = Vec::new();
        let management_changed = self.elect_management();
        let due = self
            .last_broadcast
            .is_none_or(|t| now.duration_since(t) >= self.settings.heartbeat_interval);
        if management_changed || due {
            self.last_broadcast = Some(now);
            self.tell_live_nodes(clock, &mut out);
        }
        self.refresh(now);
        out
    }

    fn drop_counter(&mut self, drop: DropReason) -> &mut u64 {
        let c = &mut self.counters;
        match drop {
            DropReason::Decode(DecodeError::Truncated(_)) => &mut c.drop_truncated,
            DropReason::Decode(DecodeError::Oversized { .. }) => &mut c.drop_oversized,
            DropReason::Decode(DecodeError::WrongCluster(_)) => &mut c.drop_wrong_cluster,
            DropReason::Decode(DecodeError::BadTag) => &mut c.drop_bad_tag,
            DropReason::Decode(DecodeError::Malformed(_)) => &mut c.drop_malformed,
            DropReason::AddressMismatch => &mut c.drop_address_mismatch,
            DropReason::UnexpectedType => &mut c.drop_unexpected_type,
            DropReason::Replay => &mut c.drop_replay,
            DropReason::Stale => &mut c.drop_stale,
            DropReason::DuplicateAddress => &mut c.drop_duplicate_address,
            DropReason::JoinRateLimited => &mut c.drop_join_rate_limited,
            DropReason::TableFull => &mut c.drop_table_full,
            DropReason::UnknownNode => &mut c.drop_unknown_node,
        }
    }

    fn accept(
        &mut self,
        datagram: &[u8],
        from: SocketAddrV4,
        clock: Clock,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), DropReason> {
        // Cheap checks first; the join budget is spent before the HMAC is computed.
        if datagram.len() < wire::MIN_DATAGRAM {
            return Err(DropReason::Decode(DecodeError::Truncated(datagram.len())));
        }
        if datagram.len() > wire::MAX_DATAGRAM {
            return Err(DropReason::Decode(DecodeError::Oversized {
                len: datagram.len(),
                max: wire::MAX_DATAGRAM,
            }));
        }
        let cluster = wire::peek_cluster_id(datagram).unwrap_or_default();
        if cluster != self.settings.cluster_id {
            return Err(DropReason::Decode(DecodeError::WrongCluster(cluster)));
        }
        let announces = matches!(
            wire::peek_packet_type(datagram),
            Some(PacketType::Join | PacketType::Heartbeat)
        );
        if announces && !self.is_live(*from.ip(), clock.now) {
            self.spend_join_budget(clock.now)?;
        }
        let message = wire::decode(datagram, &self.key, self.settings.cluster_id)
            .map_err(DropReason::Decode)?;
        let header = &message.header;
        if header.source != *from.ip() {
            return Err(DropReason::AddressMismatch);
        }
        if !header.packet_type.from_node() {
            return Err(DropReason::UnexpectedType);
        }
        let skew = clock.wall_ms.abs_diff(message.fields.timestamp_ms);
        if u128::from(skew) > self.settings.max_clock_skew.as_millis() {
            return Err(DropReason::Stale);
        }
        match header.packet_type {
            PacketType::Join | PacketType::Heartbeat => self.on_report(&message, from, clock, out),
            PacketType::Leave => self.on_leave(&message),
            PacketType::RouterReply | PacketType::RouterToNodes => Err(DropReason::UnexpectedType),
        }
    }

    fn is_live(&self, ip: Ipv4Addr, now: Instant) -> bool {
        self.nodes.get(&ip).is_some_and(|n| {
            n.state == NodeState::Active
                && now.duration_since(n.last_heard) <= self.settings.dead_interval()
        })
    }

    fn spend_join_budget(&mut self, now: Instant) -> Result<(), DropReason> {
        let rate = f64::from(self.settings.joins_per_second);
        let elapsed = now.duration_since(self.budget_refilled).as_secs_f64();
        self.budget_refilled = now;
        self.join_budget = (self.join_budget + elapsed * rate).min(rate);
        if self.join_budget < 1.0 {
            return Err(DropReason::JoinRateLimited);
        }
        self.join_budget -= 1.0;
        Ok(())
    }

    /// Replay and duplicate-address checks for a known address; `Ok(true)` if the message
    /// comes from a new process taking the address over.
    fn check_sender(
        &mut self,
        ip: Ipv4Addr,
        fields: &Fields,
        now: Instant,
    ) -> Result<bool, DropReason> {
        let live = self.is_live(ip, now);
        let Some(node) = self.nodes.get(&ip) else {
            return Ok(true);
        };
        if node.instance == fields.instance {
            if fields.sequence <= node.last_sequence {
                return Err(DropReason::Replay);
            }
            return Ok(false);
        }
        if live {
            if self.logged_duplicate.len() < LOG_ONCE_LIMIT
                && self.logged_duplicate.insert((ip, fields.instance))
            {
                warn!(
                    "cluster: a second node claims {ip} (instance {:016x}) while {:016x} is live: ignored",
                    fields.instance, node.instance
                );
            }
            return Err(DropReason::DuplicateAddress);
        }
        Ok(true)
    }

    fn on_report(
        &mut self,
        message: &Message,
        from: SocketAddrV4,
        clock: Clock,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), DropReason> {
        let ip = message.header.source;
        let f = &message.fields;
        let new_process = self.check_sender(ip, f, clock.now)?;
        if !self.nodes.contains_key(&ip) && self.nodes.len() >= self.settings.max_nodes {
            return Err(DropReason::TableFull);
        }
        let services = self.known_offers(ip, &f.services);
        let load = f64::from(f.load_permille.unwrap_or(0));
        let capacity = f.capacity.unwrap_or(1);
        let connections = f.connections.unwrap_or(0);
        let priority = message.header.priority;
        let was = self.nodes.get(&ip).map(|n| n.state);
        let node = self.nodes.entry(ip).or_insert_with(|| Node {
            reply_to: from,
            instance: f.instance,
            last_sequence: f.sequence,
            priority,
            state: NodeState::Active,
            last_heard: clock.now,
            services: Vec::new(),
            capacity,
            load_smoothed: load,
            connections,
        });
        if new_process {
            node.instance = f.instance;
            node.load_smoothed = load;
        } else {
            node.load_smoothed += LOAD_SMOOTHING * (load - node.load_smoothed);
        }
        node.reply_to = from;
        node.last_sequence = f.sequence;
        node.priority = priority;
        node.state = NodeState::Active;
        node.last_heard = clock.now;
        node.services = services;
        node.capacity = capacity;
        node.connections = connections;
        match was {
            None => {
                self.counters.joins += 1;
                info!("cluster: node {ip} joined (priority {priority}, capacity {capacity})");
            }
            Some(NodeState::Down | NodeState::Draining) => {
                self.counters.rejoins += 1;
                info!("cluster: node {ip} is back");
            }
            Some(NodeState::Active) if new_process => {
                self.counters.rejoins += 1;
                info!("cluster: node {ip} restarted");
            }
            Some(NodeState::Active) => {}
        }
        let first_contact = was != Some(NodeState::Active) || new_process;
        if message.header.packet_type == PacketType::Join || first_contact {
            out.push(self.router_reply(ip, from, f.instance, clock));
            let management_changed = self.elect_management();
            if management_changed {
                self.tell_live_nodes(clock, out);
            } else {
                out.push(self.router_to_nodes(ip, from, clock));
            }
        }
        Ok(())
    }

    fn on_leave(&mut self, message: &Message) -> Result<(), DropReason> {
        let ip = message.header.source;
        let f = &message.fields;
        let Some(node) = self.nodes.get_mut(&ip) else {
            return Err(DropReason::UnknownNode);
        };
        if node.instance != f.instance {
            return Err(DropReason::UnknownNode);
        }
        if f.sequence <= node.last_sequence {
            return Err(DropReason::Replay);
        }
        node.last_sequence = f.sequence;
        if node.state != NodeState::Draining {
            node.state = NodeState::Draining;
            self.counters.leaves += 1;
            info!("cluster: node {ip} leaves: draining");
        }
        Ok(())
    }

    /// The offers that name a service of ours with its protocol; others are logged once
    /// per node and name, and ignored.
    fn known_offers(&mut self, ip: Ipv4Addr, offers: &[ServiceOffer]) -> Vec<ServiceOffer> {
        let mut known = Vec::with_capacity(offers.len());
        for offer in offers {
            let ours = self
                .settings
                .services
                .iter()
                .any(|s| s.name == offer.name && s.protocol == offer.protocol);
            if ours {
                known.push(offer.clone());
            } else if self.logged_unknown.len() < LOG_ONCE_LIMIT
                && self.logged_unknown.insert((ip, offer.name.clone()))
            {
                self.counters.unknown_services += 1;
                warn!(
                    "cluster: node {ip} offers service {:?} ({:?}, port {}) that this balancer does not have: ignored",
                    offer.name, offer.protocol, offer.port
                );
            }
        }
        known
    }

    /// Returns whether the management node changed.
    fn elect_management(&mut self) -> bool {
        let elected = self.settings.controller.unwrap_or_else(|| {
            self.nodes
                .iter()
                .filter(|(_, n)| n.state == NodeState::Active)
                // Highest priority; among equals the lowest address (max_by_key keeps the
                // last maximum, so iterate addresses in descending order).
                .rev()
                .max_by_key(|(_, n)| n.priority)
                .map_or(Ipv4Addr::UNSPECIFIED, |(ip, _)| *ip)
        });
        let changed = elected != self.management;
        if changed {
            info!("cluster: management node is now {elected}");
            self.management = elected;
        }
        changed
    }

    fn tell_live_nodes(&mut self, clock: Clock, out: &mut Vec<Outgoing>) {
        let live: Vec<(Ipv4Addr, SocketAddrV4)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.state == NodeState::Active)
            .map(|(ip, n)| (*ip, n.reply_to))
            .collect();
        for (ip, to) in live {
            out.push(self.router_to_nodes(ip, to, clock));
        }
    }

    fn router_header(&self, packet_type: PacketType, node: Ipv4Addr) -> Header {
        Header {
            source: self.settings.router_ip,
            destination: node,
            priority: 0,
            cluster_id: self.settings.cluster_id,
            packet_type,
            function: Function::Router,
            router: self.settings.router_ip,
            management: Ipv4Addr::UNSPECIFIED,
            source_port: 0,
            destination_port: 0,
        }
    }

    fn router_fields(&mut self, clock: Clock) -> Fields {
        self.sequence += 1;
        Fields {
            sequence: self.sequence,
            timestamp_ms: clock.wall_ms,
            instance: self.instance,
            ..Fields::default()
        }
    }

    fn router_reply(
        &mut self,
        node: Ipv4Addr,
        to: SocketAddrV4,
        node_instance: u64,
        clock: Clock,
    ) -> Outgoing {
        let message = Message {
            header: self.router_header(PacketType::RouterReply, node),
            fields: Fields {
                ack_instance: Some(node_instance),
                heartbeat_ms: Some(self.settings.heartbeat_interval.as_millis() as u32),
                ..self.router_fields(clock)
            },
        };
        self.encode(to, &message)
    }

    fn router_to_nodes(&mut self, node: Ipv4Addr, to: SocketAddrV4, clock: Clock) -> Outgoing {
        let message = Message {
            header: Header {
                management: self.management,
                ..self.router_header(PacketType::RouterToNodes, node)
            },
            fields: Fields {
                heartbeat_ms: Some(self.settings.heartbeat_interval.as_millis() as u32),
                ..self.router_fields(clock)
            },
        };
        self.encode(to, &message)
    }

    #[expect(
        clippy::expect_used,
        reason = "router messages carry no services: they are far below every size limit"
    )]
    fn encode(&self, to: SocketAddrV4, message: &Message) -> Outgoing {
        Outgoing {
            to,
            datagram: wire::encode(message, &self.key).expect("router message within limits"),
        }
    }

    /// Re-allots and rebuilds the endpoint rows; bumps the generation on a change.
    fn refresh(&mut self, now: Instant) {
        let mut rows = Vec::new();
        for service in &self.settings.services {
            let mut reports = BTreeMap::new();
            let mut offers = Vec::new();
            for (ip, node) in &self.nodes {
                let Some(offer) = node
                    .services
                    .iter()
                    .find(|o| o.name == service.name && o.protocol == service.protocol)
                else {
                    continue;
                };
                reports.insert(
                    *ip,
                    EndpointReport {
                        capacity: node.capacity,
                        load_permille: node.load_smoothed.round() as u32,
                        eligible: node.state == NodeState::Active && offer.health != Health::Down,
                    },
                );
                offers.push((*ip, node, offer));
            }
            // `new` and `set_services` keep one allotment per service; `entry` keeps that
            // true without trusting it.
            let policy = self.settings.allotment;
            let allotment = self
                .allotments
                .entry(service.name.clone())
                .or_insert_with(|| Allotment::new(policy));
            allotment.update(&reports, now);
            for (ip, node, offer) in offers {
                rows.push(AnnouncedEndpoint {
                    service: service.name.clone(),
                    vip: service.vip,
                    service_port: service.port,
                    protocol: service.protocol,
                    node: ip,
                    port: offer.port,
                    priority: node.priority,
                    state: node.state,
                    health: offer.health,
                    capacity: node.capacity,
                    load_permille: reports[&ip].load_permille,
                    connections: node.connections,
                    tokens: allotment.tokens().get(&ip).copied().unwrap_or(0),
                    applied: self.applied.get(&(service.name.clone(), ip)).copied(),
                });
            }
        }
        let data_plane = |rows: &[AnnouncedEndpoint]| {
            rows.iter()
                .map(|e| (e.service.clone(), e.node, e.port, e.state, e.tokens))
                .collect::<Vec<_>>()
        };
        if data_plane(&rows) != data_plane(&self.endpoints) {
            self.generation += 1;
        }
        self.endpoints = rows;
    }
}

/// Why a received message was discarded; each reason has its own counter.
#[derive(Clone, Debug)]
enum DropReason {
    Decode(DecodeError),
    AddressMismatch,
    UnexpectedType,
    Replay,
    Stale,
    DuplicateAddress,
    JoinRateLimited,
    TableFull,
    UnknownNode,
}

#[cfg(test)]
mod tests;
