//! The test servers' HTTP/1.x side: `GET /` answers the server's name, `GET /bytes/{n}`
//! the deterministic payload, `PUT|POST /sha256` the hash of the upload; every response
//! names the server (`X-Server`) and the peer it saw (`X-Peer`).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::lock;
use crate::payload::{hex, payload_bytes};
use crate::server::{Counters, SERVER_POLL};

/// An idle keep-alive connection is closed after this long, so abandoned
/// client connections cannot pin server threads forever.
const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_HEAD_LINE: u64 = 8 * 1024;
const MAX_HEADERS: usize = 100;

/// Accepts until `stop`; then closes the listener and every open
/// connection, and joins the connection threads.
pub(crate) fn accept_loop(
    listener: TcpListener,
    name: &str,
    stop: &AtomicBool,
    counters: &Arc<Counters>,
) {
    let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // poll() instead of a blocking accept: wakes at once for a new
        // connection, and at least every SERVER_POLL to check `stop`.
        if !wait_readable(&listener, SERVER_POLL) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                // E.g. ECONNABORTED or EMFILE; back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
        workers.retain(|w| !w.is_finished());
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            lock(&open).insert(id, clone);
        }
        let (open2, name, counters) = (open.clone(), name.to_string(), counters.clone());
        let spawned = thread::Builder::new()
            .name(format!("{name} conn"))
            .spawn(move || {
                let _ = serve_tcp_connection(stream, peer, &name, &counters);
                lock(&open2).remove(&id);
            });
        match spawned {
            Ok(w) => workers.push(w),
            Err(_) => {
                lock(&open).remove(&id);
            }
        }
    }
    drop(listener);
    for (_, s) in lock(&open).drain() {
        let _ = s.shutdown(Shutdown::Both);
    }
    for w in workers {
        let _ = w.join();
    }
}

fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: pfd is a valid pollfd array of length 1 for the whole call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0
}

fn serve_tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    counters: &Counters,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // Responses are written in one flush; Nagle would only delay the next
    // request's response on keep-alive connections.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HTTP_IDLE_TIMEOUT))?;
    let reader = BufReader::new(stream.try_clone()?);
    let writer = BufWriter::with_capacity(64 * 1024, stream);
    serve_http(reader, writer, name, Some(peer), counters)
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: u64,
}

/// Reads one request head. `Ok(None)` on a clean EOF before a request.
fn read_request<R: BufRead>(reader: &mut R) -> io::Result<Option<Request>> {
    let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());
    let mut line = String::new();
    if read_line_limited(reader, &mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
        content_length: 0,
    };
    for _ in 0..=MAX_HEADERS {
        line.clear();
        if read_line_limited(reader, &mut line)? == 0 {
            return Err(bad("EOF inside request head"));
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            request.keep_alive = keep_alive;
            return Ok(Some(request));
        }
        let Some((key, value)) = header.split_once(':') else {
            return Err(bad("malformed header"));
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            request.content_length = value.parse().map_err(|_| bad("bad Content-Length"))?;
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                "request bodies with Transfer-Encoding are not supported",
            ));
        }
    }
    Err(bad("too many headers"))
}

fn read_line_limited<R: BufRead>(reader: &mut R, line: &mut String) -> io::Result<usize> {
    let n = reader.by_ref().take(MAX_HEAD_LINE).read_line(line)?;
    if n as u64 == MAX_HEAD_LINE && !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "header line too long",
        ));
    }
    Ok(n)
}

/// Serves HTTP/1.x requests until the client closes, asks to close, or an
/// error. Generic over the transport so it can be unit-tested without a
/// network.
fn serve_http<R: BufRead, W: Write>(
    mut reader: R,
    mut writer: W,
    name: &str,
    peer: Option<SocketAddr>,
    counters: &Counters,
) -> io::Result<()> {
    let text = |writer: &mut W, status: &str, body: &str, keep_alive: bool, head_only: bool| {
        write_head(writer, status, name, peer, body.len() as u64, keep_alive)?;
        if !head_only {
            writer.write_all(body.as_bytes())?;
        }
        io::Result::Ok(())
    };
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                text(
                    &mut writer,
                    "400 Bad Request",
                    &format!("bad request: {e}\n"),
                    false,
                    false,
                )?;
                return writer.flush();
            }
            Err(e) => return Err(e),
        };
        counters.http_requests.fetch_add(1, Ordering::Relaxed);
        let keep_alive = request.keep_alive;
        let head_only = request.method == "HEAD";
        if matches!(request.method.as_str(), "POST" | "PUT") && request.target == "/sha256" {
            // An upload is hashed as it arrives, so tests can check what reached the server.
            let digest = sha256_of_body(&mut reader, request.content_length)?;
            text(
                &mut writer,
                "200 OK",
                &format!("{digest}\n"),
                keep_alive,
                false,
            )?;
        } else {
            // Discard any other request body; only GET/HEAD are meaningful there.
            io::copy(
                &mut reader.by_ref().take(request.content_length),
                &mut io::sink(),
            )?;
            let bytes = request
                .target
                .strip_prefix("/bytes/")
                .and_then(|n| n.parse::<u64>().ok());
            if request.method != "GET" && !head_only {
                text(
                    &mut writer,
                    "405 Method Not Allowed",
                    "method not allowed\n",
                    keep_alive,
                    false,
                )?;
            } else if request.target == "/" {
                text(
                    &mut writer,
                    "200 OK",
                    &format!("{name}\n"),
                    keep_alive,
                    head_only,
                )?;
            } else if let Some(n) = bytes {
                write_head(&mut writer, "200 OK", name, peer, n, keep_alive)?;
                if !head_only {
                    copy_payload(n, &mut writer)?;
                }
            } else {
                text(
                    &mut writer,
                    "404 Not Found",
                    "not found\n",
                    keep_alive,
                    head_only,
                )?;
            }
        }
        writer.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Hex SHA-256 of the next `content_length` bytes of `reader`; an error if the body
/// ends early.
fn sha256_of_body<R: Read>(reader: &mut R, content_length: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut body = reader.take(content_length);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    if got != content_length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(hex(&hasher.finalize()))
}

fn write_head<W: Write>(
    w: &mut W,
    status: &str,
    name: &str,
    peer: Option<SocketAddr>,
    content_length: u64,
    keep_alive: bool,
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {content_length}\r\n\
         X-Server: {name}\r\n"
    )?;
    // The address the server saw: lets tests check the SNAT/DSR behaviour.
    if let Some(peer) = peer {
        write!(w, "X-Peer: {peer}\r\n")?;
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(w, "Connection: {connection}\r\n\r\n")
}

fn copy_payload<W: Write>(n: u64, w: &mut W) -> io::Result<()> {
    let mut payload = payload_bytes(n);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = payload.read(&mut buf)?;
        if got == 0 {
            return Ok(());
        }
        w.write_all(&buf[..got])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::parse_response;
    use crate::payload::{payload_sha256, sha256_hex};
    use std::os::unix::net::UnixStream;

    /// Runs the HTTP handler over a socketpair: exercises parsing and
    /// keep-alive without any network traffic.
    fn converse(request: &[u8]) -> Vec<u8> {
        let (mut client, server) = UnixStream::pair().unwrap();
        let worker = thread::spawn(move || {
            let reader = BufReader::new(server.try_clone().unwrap());
            let counters = Counters::default();
            serve_http(reader, server, "s2", None, &counters).unwrap();
        });
        client.write_all(request).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        worker.join().unwrap();
        out
    }

    #[test]
    fn http_root_and_keep_alive() {
        let out = converse(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.contains("X-Server: s2\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\ns2\n"), "{text}");
    }

    #[test]
    fn http_bytes_and_errors() {
        let out = converse(b"GET /bytes/100000 HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let resp = parse_response(&out).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("100000"));
        // HTTP/1.0 without keep-alive closes after the first response.
        assert_eq!(resp.body.len(), 100000);
        assert_eq!(sha256_hex(&resp.body), payload_sha256(100000));

        let resp = parse_response(&converse(
            b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(resp.status, 404);
        let resp = parse_response(&converse(b"garbage\r\n\r\n")).unwrap();
        assert_eq!(resp.status, 400);
        let resp = parse_response(&converse(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ))
        .unwrap();
        assert_eq!(resp.status, 405);
        let resp = parse_response(&converse(
            b"PUT /sha256 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ))
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("{}\n", sha256_hex(b"abc")));
        let resp = parse_response(&converse(
            b"HEAD /bytes/10 HTTP/1.1\r\nConnection: close\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.body.is_empty());
    }
}
