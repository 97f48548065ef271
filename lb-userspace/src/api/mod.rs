//! Operator API over a Unix socket: one JSON request line, one JSON answer line.
//!
//! Request: a [`Request`], tagged by `command`: `status`, `stats`, `flows`, `reload`,
//! `backends`, `sessions`, `nodes`, `peers`, `backend-drain`, `backend-undrain`, `backend-weight`,
//! `backend-add`, `backend-remove`, `drain` and `handover`, e.g. `{"command":"status"}` or
//! `{"command":"backend-drain","backend":"198.19.0.11:80"}`.
//! Answer: `{"ok":true,"result":...}` with the request's [`Reply`] as the result, or
//! `{"ok":false,"error":"..."}`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod types;

pub use types::*;

/// Longest request line accepted: requests are tiny, anything larger is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the operator asks for: one variant per `lb` subcommand.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stats,
    Flows,
    Reload,
    Backends,
    Sessions,
    /// The cluster router's health-and-load table and counters.
    Nodes,
    /// The peer protocol: this instance's state, its peers, the counters.
    Peers,
    /// The owned VIPs' transfer processing mode table.
    Vips,
    /// Move owned VIP `vip` to peer `to` (docs/scale-out.md, "Moving a VIP").
    #[serde(rename = "vip-move")]
    VipMove {
        vip: std::net::Ipv4Addr,
        to: u16,
    },
    /// Backend `address[:port]` (in every service) takes no new flows.
    #[serde(rename = "backend-drain")]
    BackendDrain {
        backend: String,
    },
    #[serde(rename = "backend-undrain")]
    BackendUndrain {
        backend: String,
    },
    #[serde(rename = "backend-weight")]
    BackendWeight {
        service: String,
        backend: String,
        weight: u32,
    },
    #[serde(rename = "backend-add")]
    BackendAdd {
        service: String,
        backend: String,
        weight: u32,
    },
    #[serde(rename = "backend-remove")]
    BackendRemove {
        service: String,
        backend: String,
    },
    /// Withdraws every route BIRD announces for this instance (`[bgp]`); the data
    /// path keeps forwarding.
    Drain,
    /// Hands the pinned data path over to a new daemon (`lb run --replace`): the
    /// daemon answers, then exits without detaching or unpinning.
    Handover,
}

/// One answer line: the daemon sends `Answer<Reply>`, the client reads `Answer<Value>`
/// and decodes the result by the request it sent ([`Reply::decode`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer<T = Value> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer<Reply> {
    pub fn from_result(result: Result<Reply>) -> Self {
        match result {
            Ok(reply) => Answer {
                ok: true,
                result: Some(reply),
                error: None,
            },
            Err(e) => Answer {
                ok: false,
                result: None,
                error: Some(format!("{e:#}")),
            },
        }
    }
}

/// Sends one request to the daemon and returns its reply.
pub fn call(socket: &Path, request: &Request) -> Result<Reply> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the lb daemon at {} (is `lb run` running, and are you allowed to use its socket?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let parsed: Answer = serde_json::from_str(&answer)
        .with_context(|| format!("malformed answer from the daemon: {answer:?}"))?;
    if parsed.ok {
        Reply::decode(request, parsed.result.unwrap_or(Value::Null))
            .with_context(|| format!("unexpected answer from the daemon: {answer:?}"))
    } else {
        Err(anyhow!(
            parsed.error.unwrap_or_else(|| "unknown error".into())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"command":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"reload"}"#).unwrap(),
            Request::Reload
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"format-disk"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::BackendDrain {
                backend: "198.19.0.11:80".into()
            })
            .unwrap(),
            r#"{"command":"backend-drain","backend":"198.19.0.11:80"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"command":"backend-weight","service":"web","backend":"198.19.0.12","weight":3}"#
            )
            .unwrap(),
            Request::BackendWeight {
                service: "web".into(),
                backend: "198.19.0.12".into(),
                weight: 3
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"backend-drain"}"#).is_err());
    }
}
