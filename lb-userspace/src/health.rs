//! Health checks (the health half of the health-and-load handler): TCP connect and HTTP GET probes,
//! and the rise/fall counting that turns probe results into a backend's health.

use std::net::SocketAddr;

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::domain::{HealthCheck, HealthProbe};

/// Runs one probe of `check` against `target`; `Err` says why it failed.
pub async fn probe(target: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(target, &check.probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", check.timeout.as_millis())),
    }
}

async fn probe_inner(target: SocketAddr, probe: &HealthProbe) -> Result<(), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let HealthProbe::Http {
        path,
        status_min,
        status_max,
    } = probe
    else {
        return Ok(());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: lb-health\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all we need: "HTTP/1.x NNN ...".
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (*status_min..=*status_max).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "HTTP status {status}, wanted {status_min}-{status_max}"
        ))
    }
}

/// Health of one backend of one service.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub up: bool,
    /// Consecutive results that disagree with `up` (towards rise or fall).
    #[serde(skip)]
    streak: u32,
    pub last_error: Option<String>,
}

impl Default for Health {
    /// A backend is trusted until its checks say otherwise.
    fn default() -> Self {
        Health {
            up: true,
            streak: 0,
            last_error: None,
        }
    }
}

impl Health {
    /// Records one probe result; returns true if `up` flipped.
    pub fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32) -> bool {
        let ok = result.is_ok();
        if let Err(e) = result {
            self.last_error = Some(e);
        }
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            if ok {
                self.last_error = None;
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let mut health = Health::default();
        assert!(!health.record(Err("x".into()), 2, 3));
        assert!(!health.record(Err("x".into()), 2, 3));
        assert!(!health.record(Ok(()), 2, 3), "a success resets the streak");
        assert!(!health.record(Err("x".into()), 2, 3));
        assert!(!health.record(Err("x".into()), 2, 3));
        assert!(health.record(Err("x".into()), 2, 3));
        assert!(!health.up);
        assert!(!health.record(Ok(()), 2, 3));
        assert!(health.record(Ok(()), 2, 3));
        assert!(health.up);
        assert_eq!(health.last_error, None);
    }
}
