//! HTTP client helpers for tests: one GET on a new connection from inside a namespace,
//! a keep-alive connection for tests that need one connection to outlive a change, and
//! telling which test server answered.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::netns::run_in_netns;
use crate::topology::SERVER_COUNT;

/// A parsed HTTP response from [`http_get`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, e.g. `"s1\n"`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on a new connection from inside namespace `ns`, with
/// `Connection: close`; reads until EOF. `timeout` bounds connect and each read.
pub fn http_get(
    ns: &str,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    let path = path.to_string();
    run_in_netns(ns, move || -> Result<HttpResponse> {
        let mut s = TcpStream::connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("reading response from {addr}"))?;
        parse_response(&raw)
    })?
}

pub(crate) fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete HTTP response head in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).context("non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// Count response bodies per server: `"s1\n"` counts for `"s1"`, anything
/// else under its trimmed text.
pub fn count_by_server<I, S>(bodies: I) -> BTreeMap<String, usize>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut counts = BTreeMap::new();
    for b in bodies {
        *counts.entry(b.as_ref().trim().to_string()).or_insert(0) += 1;
    }
    counts
}
/// Which server (1..=3) answered, from a test server's `GET /` body (`s1\n`...).
pub fn server_of(body: &str) -> Option<usize> {
    body.trim()
        .strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=SERVER_COUNT).contains(n))
}

/// One HTTP/1.1 keep-alive connection opened from inside a namespace; requests on it
/// reuse the same TCP connection (and so the same flow through the balancer).
pub struct KeepAliveClient {
    reader: BufReader<TcpStream>,
}

impl KeepAliveClient {
    /// Connects from inside `ns`; `timeout` bounds the connect and each read.
    pub fn connect(ns: &str, addr: SocketAddrV4, timeout: Duration) -> Result<KeepAliveClient> {
        let stream = run_in_netns(ns, move || {
            TcpStream::connect_timeout(&addr.into(), timeout)
        })?
        .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(KeepAliveClient {
            reader: BufReader::new(stream),
        })
    }

    /// `GET path` on this connection; the response body (its `Content-Length` bytes).
    pub fn get(&mut self, path: &str) -> io::Result<Vec<u8>> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: vip\r\n\r\n"
        )?;
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        self.reader.read_exact(&mut body)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting() {
        let c = count_by_server(["s1\n", "s2\n", "s1\n"]);
        assert_eq!(c.get("s1"), Some(&2));
        assert_eq!(c.get("s2"), Some(&1));
    }

    #[test]
    fn server_names() {
        assert_eq!(server_of("s2\n"), Some(2));
        assert_eq!(server_of("s4\n"), None);
        assert_eq!(server_of("x1"), None);
    }
}
