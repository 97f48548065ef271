//! Automatic SYN cookies (docs/architecture.md, "SYN floods"): each GC tick feeds every
//! `syn_cookies = "auto"` service's hysteresis (`syn_cookies.rs`) and applies a changed
//! mode through the overrides, so a reload keeps it and never races it (both run under
//! the controller lock, and both apply the same overrides).

use lb_common::{FlowEntry, FlowKey};

use super::*;
use crate::{
    api::SynCookieStats,
    domain::SynCookies,
    syn_cookies::{AutoCookies, CookieMode, Sample},
};

impl Controller {
    /// Resumes the automatic SYN cookies an adopted data path has on or draining.
    pub(super) fn resume_syn_cookies(&mut self) {
        let now = self.started.elapsed();
        for (name, &flags) in &self.overrides.syn_cookies {
            let mode = if flags & lb_common::SERVICE_FLAG_SYN_COOKIES != 0 {
                CookieMode::On
            } else {
                CookieMode::Draining
            };
            log::info!("{name}: automatic SYN cookies resumed ({mode:?})");
            self.syn_cookies
                .insert(name.clone(), AutoCookies::resumed(mode, now));
        }
    }

    /// One tick of every automatic service from the GC's snapshot of the flow table.
    pub(super) fn update_syn_cookies(&mut self, entries: &[(FlowKey, FlowEntry)]) {
        let half_open = flows::half_open_per_service(entries);
        let now = self.started.elapsed();
        let window = self.config.timeouts.tcp_syn;
        let mut wanted = BTreeMap::new();
        let mut present = std::collections::BTreeSet::new();
        for service in self.table.services() {
            let config = &service.config;
            if config.syn_cookies != SynCookies::Auto {
                continue;
            }
            present.insert(config.name.clone());
            let stats = match self.dataplane.service_stats(service.id) {
                Ok(stats) => stats,
                Err(e) => {
                    log::warn!("{}: cannot read the service's counters: {e:#}", config.name);
                    continue;
                }
            };
            let sample = Sample {
                half_open: half_open.get(&service.id).copied().unwrap_or(0),
                cookies_sent: stats.syn_cookies,
                new_flows: stats.new_flows,
            };
            let auto = self.syn_cookies.entry(config.name.clone()).or_default();
            if auto.observe(now, sample, config.syn_cookie_threshold, window) {
                match auto.mode() {
                    CookieMode::On => log::warn!(
                        "{}: SYN flood ({} half-open, threshold {}): answering SYNs with \
                         cookies",
                        config.name,
                        auto.pressure,
                        config.syn_cookie_threshold
                    ),
                    CookieMode::Draining => log::warn!(
                        "{}: SYN flood over: SYNs open flows again (cookie ACKs accepted \
                         for {} s)",
                        config.name,
                        crate::syn_cookies::COOKIE_LIFETIME.as_secs()
                    ),
                    CookieMode::Off => {
                        log::info!("{}: no more cookie ACKs accepted", config.name)
                    }
                }
            }
            let flags = auto.mode().flags();
            if flags != 0 {
                wanted.insert(config.name.clone(), flags);
            }
        }
        self.syn_cookies.retain(|name, _| present.contains(name));
        if wanted != self.overrides.syn_cookies {
            self.overrides.syn_cookies = wanted;
            if let Err(e) = self.reapply() {
                log::error!("switching automatic SYN cookies failed: {e:#}");
            }
        }
    }

    /// The SYN cookie part of `lb stats` for one service.
    pub(super) fn syn_cookie_stats(
        &self,
        service: &crate::config::ServiceConfig,
        sent: u64,
    ) -> SynCookieStats {
        let auto = self.syn_cookies.get(&service.name);
        let mode = if service.syn_proxy {
            "always".to_string()
        } else if service.syn_cookies == SynCookies::Off {
            "disabled".to_string()
        } else {
            crate::api::serde_name(&auto.map(AutoCookies::mode).unwrap_or_default())
        };
        SynCookieStats {
            mode,
            sent,
            switched_on: auto.map_or(0, |a| a.switched_on),
            switched_off: auto.map_or(0, |a| a.switched_off),
            pressure: auto.map_or(0, |a| a.pressure),
        }
    }
}
