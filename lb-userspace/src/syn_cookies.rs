//! Automatic SYN cookies (`syn_cookies = "auto"`): the decision, per service, of when
//! the data path answers SYNs with cookies instead of opening a flow for each.
//!
//! Pure: the controller's GC walk (every second) feeds it the service's half-open
//! connections and its cookie and new-flow counters; the resulting service flags reach
//! the data path through the next apply (docs/architecture.md, "SYN floods").
//!
//! A hysteresis, like Linux's syncookies: on as soon as the pressure passes the
//! threshold, off only after it stayed at or below half of it for `QUIET`, so a flood
//! that pauses for a second does not flip the service back and forth. While on, the
//! table holds no half-open entries of the flood, so the pressure is what they would
//! have been: the cookies sent during the last `tcp_syn` that no valid ACK followed.
//! After switching off, cookie ACKs are still accepted for `COOKIE_LIFETIME`, so a
//! handshake answered with a cookie just before completes.

use std::{collections::VecDeque, time::Duration};

use lb_common::{SERVICE_FLAG_COOKIE_ACKS, SERVICE_FLAG_SYN_COOKIES};
use serde::{Deserialize, Serialize};

/// How long the pressure must stay at or below the low mark before cookies go off.
pub const QUIET: Duration = Duration::from_secs(5);

/// How long a SYN cookie stays valid: the kernel's cookie check accepts up to two
/// minutes of counter age, in 64 s steps (net/ipv4/syncookies.c `MAX_SYNCOOKIE_AGE`),
/// so at most three minutes.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(180);

/// Where a service's automatic SYN cookies are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CookieMode {
    /// SYNs open flows as usual.
    #[default]
    Off,
    /// SYNs are answered with cookies; cookie ACKs open flows.
    On,
    /// Off again, but cookie ACKs of handshakes answered while on are still accepted.
    Draining,
}

impl CookieMode {
    /// The `SERVICE_FLAG_*` bits the data path needs for this mode.
    pub fn flags(self) -> u8 {
        match self {
            CookieMode::Off => 0,
            CookieMode::On => SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS,
            CookieMode::Draining => SERVICE_FLAG_COOKIE_ACKS,
        }
    }
}

/// One GC tick's view of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Half-open connections in the flow table (SYN seen, server's SYN+ACK seen).
    pub half_open: u64,
    /// The service's counters: SYNs answered with a cookie, new flows.
    pub cookies_sent: u64,
    pub new_flows: u64,
}

/// The automatic SYN cookie state of one service.
#[derive(Clone, Debug, Default)]
pub struct AutoCookies {
    mode: CookieMode,
    /// While on: since when the pressure is at or below the low mark.
    quiet_since: Option<Duration>,
    /// While draining: when cookie ACKs stop being accepted.
    draining_until: Duration,
    /// (time, cookies sent, new flows) of the ticks within the last `window`.
    history: VecDeque<(Duration, u64, u64)>,
    /// Times the mode went on, and back off.
    pub switched_on: u64,
    pub switched_off: u64,
    /// The pressure of the last tick.
    pub pressure: u64,
}

impl AutoCookies {
    /// Resumes a service that the data path has in `mode` (a restarted controller).
    pub fn resumed(mode: CookieMode, now: Duration) -> AutoCookies {
        AutoCookies {
            mode,
            draining_until: now + COOKIE_LIFETIME,
            ..AutoCookies::default()
        }
    }

    pub fn mode(&self) -> CookieMode {
        self.mode
    }

    /// Takes one tick at `now` (monotonic); `window` is the half-open timeout
    /// (`tcp_syn`). Returns whether the mode changed.
    pub fn observe(
        &mut self,
        now: Duration,
        sample: Sample,
        threshold: u32,
        window: Duration,
    ) -> bool {
        let unanswered = self.unanswered(now, sample, window);
        let pressure = sample.half_open.saturating_add(unanswered);
        self.pressure = pressure;
        let threshold = u64::from(threshold);
        let before = self.mode;
        match self.mode {
            CookieMode::Off | CookieMode::Draining if pressure > threshold => {
                self.mode = CookieMode::On;
                self.quiet_since = None;
                self.switched_on += 1;
            }
            CookieMode::Draining if now >= self.draining_until => self.mode = CookieMode::Off,
            CookieMode::On if pressure <= threshold / 2 => {
                let since = *self.quiet_since.get_or_insert(now);
                if now.saturating_sub(since) >= QUIET {
                    self.mode = CookieMode::Draining;
                    self.draining_until = now + COOKIE_LIFETIME;
                    self.quiet_since = None;
                    self.switched_off += 1;
                }
            }
            CookieMode::On => self.quiet_since = None,
            CookieMode::Off | CookieMode::Draining => {}
        }
        self.mode != before
    }

    /// Cookies sent within the last `window` that no new flow followed: the half-open
    /// entries they would have made without cookies. Counters that went backwards (a
    /// service id's stats cleared) count from where they are now.
    fn unanswered(&mut self, now: Duration, sample: Sample, window: Duration) -> u64 {
        if self.history.back().is_some_and(|&(_, cookies, flows)| {
            sample.cookies_sent < cookies || sample.new_flows < flows
        }) {
            self.history.clear();
        }
        self.history
            .push_back((now, sample.cookies_sent, sample.new_flows));
        while self
            .history
            .front()
            .is_some_and(|&(at, _, _)| now.saturating_sub(at) > window)
        {
            self.history.pop_front();
        }
        let (cookies, flows) = self
            .history
            .front()
            .map_or((sample.cookies_sent, sample.new_flows), |&(_, c, f)| (c, f));
        (sample.cookies_sent - cookies).saturating_sub(sample.new_flows - flows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(3);
    const THRESHOLD: u32 = 1000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn half_open(n: u64) -> Sample {
        Sample {
            half_open: n,
            ..Sample::default()
        }
    }

    #[test]
    fn switches_on_above_the_threshold_only() {
        let mut auto = AutoCookies::default();
        assert!(!auto.observe(secs(1), half_open(1000), THRESHOLD, WINDOW));
        assert_eq!(auto.mode(), CookieMode::Off);
        assert!(auto.observe(secs(2), half_open(1001), THRESHOLD, WINDOW));
        assert_eq!(auto.mode(), CookieMode::On);
        assert_eq!(
            auto.mode().flags(),
            SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS
        );
        assert_eq!(auto.switched_on, 1);
    }

    #[test]
    fn switches_off_after_a_quiet_spell_then_drains() {
        let mut auto = AutoCookies::default();
        auto.observe(secs(0), half_open(5000), THRESHOLD, WINDOW);
        // Below the threshold but above the low mark: stays on.
        for t in 1..20 {
            assert!(!auto.observe(secs(t), half_open(600), THRESHOLD, WINDOW));
        }
        // At the low mark: off once it stayed there for QUIET.
        for t in 20..25 {
            assert!(!auto.observe(secs(t), half_open(500), THRESHOLD, WINDOW));
        }
        assert!(auto.observe(secs(25), half_open(500), THRESHOLD, WINDOW));
        assert_eq!(auto.mode(), CookieMode::Draining);
        assert_eq!(auto.mode().flags(), SERVICE_FLAG_COOKIE_ACKS);
        assert_eq!(auto.switched_off, 1);
        // Cookie ACKs stay accepted for the cookies' lifetime, then nothing is left.
        let end = secs(25) + COOKIE_LIFETIME;
        assert!(!auto.observe(end - secs(1), half_open(0), THRESHOLD, WINDOW));
        assert!(auto.observe(end, half_open(0), THRESHOLD, WINDOW));
        assert_eq!(auto.mode(), CookieMode::Off);
        assert_eq!(auto.mode().flags(), 0);
    }

    #[test]
    fn a_short_lull_does_not_switch_off() {
        let mut auto = AutoCookies::default();
        auto.observe(secs(0), half_open(5000), THRESHOLD, WINDOW);
        for t in 1..5 {
            auto.observe(secs(t), half_open(0), THRESHOLD, WINDOW);
        }
        // The flood is back before QUIET passed: the quiet spell starts over.
        auto.observe(secs(5), half_open(900), THRESHOLD, WINDOW);
        for t in 6..10 {
            assert!(!auto.observe(secs(t), half_open(0), THRESHOLD, WINDOW));
        }
        assert_eq!(auto.mode(), CookieMode::On);
        assert!(auto.observe(secs(11), half_open(0), THRESHOLD, WINDOW));
    }

    #[test]
    fn a_flood_while_draining_switches_on_again() {
        let mut auto = AutoCookies::resumed(CookieMode::Draining, secs(0));
        assert!(auto.observe(secs(1), half_open(2000), THRESHOLD, WINDOW));
        assert_eq!(auto.mode(), CookieMode::On);
    }

    #[test]
    fn unanswered_cookies_keep_it_on() {
        // The flood goes on while cookies are on: no half-open entries, but 10,000
        // cookies a second that nobody answers; 100 real clients a second do.
        let mut auto = AutoCookies::default();
        auto.observe(secs(0), half_open(5000), THRESHOLD, WINDOW);
        let (mut cookies, mut flows) = (0, 0);
        for t in 1..30 {
            cookies += 10_100;
            flows += 100;
            let sample = Sample {
                half_open: 0,
                cookies_sent: cookies,
                new_flows: flows,
            };
            auto.observe(secs(t), sample, THRESHOLD, WINDOW);
            assert_eq!(auto.mode(), CookieMode::On, "at {t} s");
        }
        // Pressure: the cookies of the window (3 s) less the answered ones.
        assert_eq!(auto.pressure, 30_000);
        // The flood stops; only real clients, each answering its cookie.
        let mut t = 30;
        while auto.mode() == CookieMode::On {
            cookies += 100;
            flows += 100;
            let sample = Sample {
                half_open: 0,
                cookies_sent: cookies,
                new_flows: flows,
            };
            auto.observe(secs(t), sample, THRESHOLD, WINDOW);
            t += 1;
            assert!(t < 60, "never switched off");
        }
        // The window empties of flood cookies (the first tick without any is 32),
        // then QUIET passes: switched at 37, the loop's next second is 38.
        assert_eq!(t, 30 + WINDOW.as_secs() + QUIET.as_secs());
    }

    #[test]
    fn counters_that_went_backwards_start_afresh() {
        let mut auto = AutoCookies::default();
        let sample = |cookies_sent| Sample {
            half_open: 0,
            cookies_sent,
            new_flows: 0,
        };
        auto.observe(secs(0), sample(5000), THRESHOLD, WINDOW);
        auto.observe(secs(1), sample(7000), THRESHOLD, WINDOW);
        assert_eq!(auto.pressure, 2000);
        auto.observe(secs(2), sample(10), THRESHOLD, WINDOW);
        assert_eq!(auto.pressure, 0);
    }
}
