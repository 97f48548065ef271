//! Validation of the `[[service]]` tables: names, listeners, NAT addresses, backends,
//! allow-lists, health checks, and what they take of the data path's maps.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use toml::Spanned;

use super::{MAX_TIMEOUT_SECS, Parser};
use crate::config::raw::{RawHealthCheck, RawProbe, RawService};
use crate::config::{BackendConfig, ConfigError, ServiceConfig, position};
use crate::domain::{
    DEFAULT_SYN_COOKIE_THRESHOLD, DenyAction, HealthCheck, HealthProbe, Limits, Mode, PORTS,
    Prefix, Protocol, SynCookies, UnknownSegment, WEIGHTS,
};

/// Service names show up in operator output and logs; keep them short.
const MAX_SERVICE_NAME_LEN: usize = 64;

/// Largest `syn_cookie_threshold`: as many half-open connections as the default flow
/// table holds pairs.
const MAX_SYN_COOKIE_THRESHOLD: i64 = (lb_common::DEFAULT_MAX_FLOWS / 2) as i64;

impl Parser<'_> {
    /// With a cluster, a service may start without configured backends: nodes announce
    /// theirs.
    pub(super) fn services(
        &self,
        raw: &[Spanned<RawService>],
        limits: &Limits,
        announced_backends: bool,
    ) -> Result<Vec<ServiceConfig>, ConfigError> {
        // A full-NAT source address equal to any VIP, even a later one, would make
        // translated packets look like client traffic to that service.
        let mut vip_owners: HashMap<Ipv4Addr, &str> = HashMap::new();
        for service in raw {
            let service = service.get_ref();
            vip_owners
                .entry(*service.vip.get_ref())
                .or_insert(service.name.get_ref());
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut listeners: HashMap<(Ipv4Addr, u16, Protocol), &str> = HashMap::new();
        let mut distinct_backends: HashSet<(Ipv4Addr, u16)> = HashSet::new();
        let mut services = Vec::with_capacity(raw.len());
        let mut ring_slots = 0u64;
        let mut allow_prefixes = 0usize;

        for (index, spanned) in raw.iter().enumerate() {
            let table = spanned.span();
            let service = spanned.get_ref();
            if index as u64 >= u64::from(limits.max_services) {
                return Err(self.error(
                    table,
                    format!(
                        "too many services: limits.max_services is {}",
                        limits.max_services
                    ),
                ));
            }

            let name = service.name.get_ref();
            if !valid_service_name(name) {
                return Err(self.error(
                    service.name.span(),
                    format!(
                        "invalid service name {name:?}: use 1 to {MAX_SERVICE_NAME_LEN} \
                         characters, without whitespace or control characters"
                    ),
                ));
            }
            // The byte offset; its line is worked out only for the error (per service it
            // would rescan the file: minutes for 10,000 services).
            if let Some(first) = names.insert(name, table.start) {
                let first = position(self.text, first).line;
                return Err(self.error(
                    service.name.span(),
                    format!("duplicate service name {name:?} (first defined on line {first})"),
                ));
            }

            let vip = self.unicast(&service.vip, "vip")?;
            let port: u16 = self.int(&service.port, "port", PORTS)?;
            let protocol = service.protocol.unwrap_or_default();
            if let Some(other) = listeners.insert((vip, port, protocol), name) {
                return Err(self.error(
                    table,
                    format!(
                        "service {name:?} listens on {vip}:{port}/{protocol}, \
                         as does service {other:?}"
                    ),
                ));
            }

            let syn_proxy = match &service.syn_proxy {
                Some(flag) if *flag.get_ref() && protocol != Protocol::Tcp => {
                    return Err(self.error(
                        flag.span(),
                        format!("service {name:?} is {protocol}: syn_proxy is only for tcp"),
                    ));
                }
                Some(flag) => *flag.get_ref(),
                None => false,
            };
            let syn_cookies = match &service.syn_cookies {
                Some(choice) if protocol != Protocol::Tcp => {
                    return Err(self.error(
                        choice.span(),
                        format!("service {name:?} is {protocol}: syn_cookies is only for tcp"),
                    ));
                }
                Some(choice) if syn_proxy && *choice.get_ref() == SynCookies::Auto => {
                    return Err(self.error(
                        choice.span(),
                        format!(
                            "service {name:?} has syn_proxy = true, which answers every SYN \
                             with a cookie: syn_cookies = \"auto\" would never switch anything"
                        ),
                    ));
                }
                Some(choice) => *choice.get_ref(),
                None if protocol == Protocol::Tcp && !syn_proxy => SynCookies::Auto,
                None => SynCookies::Off,
            };
            if let Some(threshold) = &service.syn_cookie_threshold
                && syn_cookies == SynCookies::Off
            {
                return Err(self.error(
                    threshold.span(),
                    format!(
                        "service {name:?} has no automatic SYN cookies (syn_cookies = \"off\", \
                         syn_proxy or udp): syn_cookie_threshold does not apply"
                    ),
                ));
            }
            let syn_cookie_threshold = self.int_or(
                service.syn_cookie_threshold.as_ref(),
                "syn_cookie_threshold",
                1..=MAX_SYN_COOKIE_THRESHOLD,
                DEFAULT_SYN_COOKIE_THRESHOLD,
            )?;
            let unknown_segment = match &service.unknown_segment {
                Some(answer) if protocol != Protocol::Tcp => {
                    return Err(self.error(
                        answer.span(),
                        format!("service {name:?} is {protocol}: unknown_segment is only for tcp"),
                    ));
                }
                Some(answer) => *answer.get_ref(),
                None => UnknownSegment::default(),
            };
            let mode = service.mode.unwrap_or_default();
            let snat_ips = self.snat_ips(service, mode, &vip_owners, table.clone())?;

            if service.backend.is_empty() && !announced_backends {
                return Err(self.error(
                    table,
                    format!(
                        "service {name:?} has no backends (and no [cluster] whose nodes \
                         could announce some)"
                    ),
                ));
            }
            let mut backends = Vec::with_capacity(service.backend.len());
            let mut seen = HashSet::new();
            for spanned_backend in &service.backend {
                let backend = spanned_backend.get_ref();
                let address = self.unicast(&backend.address, "backend address")?;
                let port = self.int_or(backend.port.as_ref(), "backend port", PORTS, port)?;
                let weight = self.int_or(backend.weight.as_ref(), "weight", WEIGHTS, 1)?;
                if !seen.insert((address, port)) {
                    return Err(self.error(
                        spanned_backend.span(),
                        format!("service {name:?} lists backend {address}:{port} twice"),
                    ));
                }
                if distinct_backends.insert((address, port))
                    && distinct_backends.len() as u64 > u64::from(limits.max_backends)
                {
                    return Err(self.error(
                        spanned_backend.span(),
                        format!(
                            "too many backends: limits.max_backends is {} distinct \
                             address:port pairs",
                            limits.max_backends
                        ),
                    ));
                }
                backends.push(BackendConfig {
                    address,
                    port,
                    weight,
                });
            }
            if !announced_backends && backends.iter().all(|backend| backend.weight == 0) {
                return Err(self.error(
                    table,
                    format!(
                        "every backend of service {name:?} has weight 0, so it could take \
                         no new flow"
                    ),
                ));
            }

            let allow = match &service.allow {
                None => None,
                Some(entries) => {
                    let mut prefixes = Vec::with_capacity(entries.len());
                    for entry in entries {
                        let prefix: Prefix = entry
                            .get_ref()
                            .parse()
                            .map_err(|message: String| self.error(entry.span(), message))?;
                        prefixes.push(prefix);
                    }
                    prefixes.sort();
                    prefixes.dedup();
                    // All services share one ELIGIBILITY map: refused here, a full one
                    // would stop an apply half-way.
                    allow_prefixes += prefixes.len();
                    let capacity = lb_common::MAX_ELIGIBILITY_PREFIXES as usize;
                    if allow_prefixes > capacity {
                        let at = entries.first().map_or(table.clone(), |e| e.span());
                        return Err(self.error(
                            at,
                            format!(
                                "the allow lists of the services up to {name:?} hold {allow_prefixes} \
                                 prefixes but the data path holds at most {capacity}"
                            ),
                        ));
                    }
                    Some(prefixes)
                }
            };
            let deny = match &service.deny {
                None => DenyAction::default(),
                Some(deny) if service.allow.is_none() => {
                    return Err(self.error(
                        deny.span(),
                        format!("service {name:?} sets deny but has no allow list"),
                    ));
                }
                Some(deny) => *deny.get_ref(),
            };
            let affinity_timeout = match &service.affinity_timeout {
                None => None,
                Some(secs) => Some(Duration::from_secs(self.int::<u64>(
                    secs,
                    "affinity_timeout",
                    1..=MAX_TIMEOUT_SECS,
                )?)),
            };
            let health_check = match &service.health_check {
                None => None,
                Some(raw) => Some(self.health_check(raw)?),
            };
            // Announced backends are not known yet: such a service gets the largest ring.
            let ring_size = if announced_backends {
                lb_common::MAGLEV_RING_SIZE
            } else {
                let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
                crate::maglev::ring_size_for(&weights)
            };
            ring_slots += 2 * u64::from(ring_size);
            if ring_slots > u64::from(limits.max_ring_slots) {
                return Err(self.error(
                    table,
                    format!(
                        "the Maglev rings of the services up to {name:?} need {ring_slots} \
                         slots but limits.max_ring_slots is {}",
                        limits.max_ring_slots
                    ),
                ));
            }

            services.push(ServiceConfig {
                name: name.clone(),
                vip,
                port,
                protocol,
                mode,
                snat_ips,
                syn_proxy,
                syn_cookies,
                syn_cookie_threshold,
                backends,
                allow,
                deny,
                affinity_timeout,
                health_check,
                on_backend_down: service.on_backend_down.unwrap_or_default(),
                unknown_segment,
            });
        }
        Ok(services)
    }

    /// The full-NAT source addresses: `snat_ip = "a"` or `snat_ips = ["a", ...]`, never
    /// both; each unicast, none a VIP, none twice, at most `MAX_SNAT_IPS`.
    fn snat_ips(
        &self,
        service: &RawService,
        mode: Mode,
        vip_owners: &HashMap<Ipv4Addr, &str>,
        table: std::ops::Range<usize>,
    ) -> Result<Vec<Ipv4Addr>, ConfigError> {
        let name = service.name.get_ref();
        let (listed, key): (Vec<&Spanned<Ipv4Addr>>, &str) =
            match (&service.snat_ip, &service.snat_ips) {
                (Some(_), Some(list)) => {
                    return Err(self.error(
                        list.span(),
                        format!(
                            "service {name:?} has both snat_ip and snat_ips: list every \
                             address in snat_ips"
                        ),
                    ));
                }
                (Some(one), None) => (vec![one], "snat_ip"),
                (None, Some(list)) => (list.get_ref().iter().collect(), "snat_ips"),
                (None, None) => (Vec::new(), "snat_ip"),
            };
        let span = match &service.snat_ips {
            Some(list) => list.span(),
            None => service
                .snat_ip
                .as_ref()
                .map_or(table.clone(), Spanned::span),
        };
        match mode {
            Mode::Dnat if service.snat_ip.is_some() || service.snat_ips.is_some() => {
                return Err(self.error(
                    span,
                    format!("service {name:?} is dnat: {key} is only for full-nat"),
                ));
            }
            Mode::Dnat => return Ok(Vec::new()),
            Mode::FullNat if service.snat_ips.is_some() && listed.is_empty() => {
                return Err(self.error(
                    span,
                    format!("service {name:?}: snat_ips must list at least one address"),
                ));
            }
            Mode::FullNat if listed.is_empty() => {
                return Err(self.error(
                    table,
                    format!("service {name:?} is full-nat and needs a snat_ip (or snat_ips)"),
                ));
            }
            Mode::FullNat => {}
        }
        if listed.len() > lb_common::MAX_SNAT_IPS {
            return Err(self.error(
                span,
                format!(
                    "service {name:?} lists {} snat_ips, at most {} are allowed",
                    listed.len(),
                    lb_common::MAX_SNAT_IPS
                ),
            ));
        }
        let mut ips: Vec<Ipv4Addr> = Vec::with_capacity(listed.len());
        for spanned_ip in listed {
            let ip = self.unicast(spanned_ip, key)?;
            if let Some(owner) = vip_owners.get(&ip) {
                return Err(self.error(
                    spanned_ip.span(),
                    format!("{key} {ip} of service {name:?} is the VIP of service {owner:?}"),
                ));
            }
            if ips.contains(&ip) {
                return Err(self.error(
                    spanned_ip.span(),
                    format!("service {name:?} lists snat_ips {ip} twice"),
                ));
            }
            ips.push(ip);
        }
        Ok(ips)
    }

    fn health_check(&self, raw: &Spanned<RawHealthCheck>) -> Result<HealthCheck, ConfigError> {
        let check = raw.get_ref();
        let ms = |value: Option<&Spanned<i64>>, what: &str, default: u64| {
            self.int_or::<u64>(value, what, 1..=3_600_000, default)
                .map(Duration::from_millis)
        };
        let interval = ms(check.interval_ms.as_ref(), "health_check.interval_ms", 1000)?;
        let timeout = ms(check.timeout_ms.as_ref(), "health_check.timeout_ms", 500)?;
        if timeout > interval {
            return Err(self.error(
                raw.span(),
                "health_check.timeout_ms must not exceed health_check.interval_ms",
            ));
        }
        let probe = match check.probe {
            RawProbe::Tcp => {
                for (field, name) in [
                    (check.path.as_ref().map(Spanned::span), "path"),
                    (check.status_min.as_ref().map(Spanned::span), "status_min"),
                    (check.status_max.as_ref().map(Spanned::span), "status_max"),
                ] {
                    if let Some(span) = field {
                        return Err(self.error(
                            span,
                            format!("health_check.{name} is only for type = \"http\""),
                        ));
                    }
                }
                HealthProbe::Tcp
            }
            RawProbe::Http => {
                let path = match &check.path {
                    None => "/".to_string(),
                    Some(path) => {
                        let text = path.get_ref();
                        if !text.starts_with('/')
                            || text.len() > 1024
                            || text.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            return Err(self.error(
                                path.span(),
                                "health_check.path must start with '/' and contain no \
                                 whitespace or control characters (at most 1024 bytes)",
                            ));
                        }
                        text.clone()
                    }
                };
                let status_min = self.int_or(
                    check.status_min.as_ref(),
                    "health_check.status_min",
                    100..=599,
                    200,
                )?;
                let status_max = self.int_or(
                    check.status_max.as_ref(),
                    "health_check.status_max",
                    100..=599,
                    399,
                )?;
                if status_min > status_max {
                    return Err(self.error(
                        raw.span(),
                        "health_check.status_min must not exceed health_check.status_max",
                    ));
                }
                HealthProbe::Http {
                    path,
                    status_min,
                    status_max,
                }
            }
        };
        Ok(HealthCheck {
            probe,
            port: match &check.port {
                None => None,
                Some(port) => Some(self.int(port, "health_check.port", PORTS)?),
            },
            interval,
            timeout,
            rise: self.int_or(check.rise.as_ref(), "health_check.rise", 1..=100, 2)?,
            fall: self.int_or(check.fall.as_ref(), "health_check.fall", 1..=100, 3)?,
        })
    }
}

fn valid_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_NAME_LEN).contains(&name.chars().count())
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}
