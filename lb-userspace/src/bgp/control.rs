//! A small client of BIRD's control socket: connect, read the greeting, run commands,
//! each step bounded by a timeout so an unanswering BIRD never holds the daemon up.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

use super::reply::{self, Reply, ReplyReader};

/// How long any one step (connect, greeting, a command's reply) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected, greeted control socket.
pub struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    replies: ReplyReader,
    limit: Duration,
    /// BIRD's greeting, e.g. "BIRD 2.0.12 ready.".
    pub version: String,
}

impl Session {
    /// Connects to `path` and reads the greeting.
    pub async fn connect(path: &Path, limit: Duration) -> Result<Session> {
        let stream = timeout(limit, UnixStream::connect(path))
            .await
            .map_err(|_| anyhow!("no connection within {} ms", limit.as_millis()))?
            .with_context(|| format!("cannot connect to {}", path.display()))?;
        let (read, writer) = stream.into_split();
        let mut session = Session {
            reader: BufReader::new(read),
            writer,
            replies: ReplyReader::default(),
            limit,
            version: String::new(),
        };
        let hello = session.read_reply().await.context("no BIRD greeting")?;
        session.version = reply::greeting(&hello).map_err(|e| anyhow!(e))?;
        Ok(session)
    }

    /// Sends `command` and returns BIRD's whole reply (an error reply is returned too).
    pub async fn command(&mut self, command: &str) -> Result<Reply> {
        let line = format!("{command}\n");
        timeout(self.limit, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| anyhow!("{command:?}: not sent within {} ms", self.limit.as_millis()))?
            .with_context(|| format!("sending {command:?}"))?;
        self.read_reply()
            .await
            .with_context(|| format!("reply to {command:?}"))
    }

    async fn read_reply(&mut self) -> Result<Reply> {
        let limit = self.limit;
        timeout(limit, async {
            let mut line = String::new();
            loop {
                line.clear();
                if self.reader.read_line(&mut line).await? == 0 {
                    bail!("BIRD closed the control socket");
                }
                if let Some(reply) = self.replies.push(line.trim_end_matches('\n'))? {
                    return Ok(reply);
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer within {} ms", limit.as_millis()))?
    }
}

/// Connects and reads the greeting: BIRD's version line, or why it failed.
pub async fn probe(path: &Path, limit: Duration) -> Result<String> {
    Ok(Session::connect(path, limit).await?.version)
}

/// `configure`: BIRD re-reads its configuration (and so the routes file). An error
/// carries BIRD's own message (e.g. the file and line it refused).
pub async fn configure(path: &Path, limit: Duration) -> Result<String> {
    let mut session = Session::connect(path, limit).await?;
    let reply = session.command("configure").await?;
    reply::configure_outcome(&reply).map_err(|e| anyhow!("BIRD refused `configure`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::UnixListener;

    /// A fake BIRD that greets with `greeting` and answers one command with `answer`.
    async fn fake(dir: &Path, greeting: &'static str, answer: &'static str) -> std::path::PathBuf {
        let path = dir.join("bird.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(greeting.as_bytes()).await.unwrap();
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"configure\n");
            stream.write_all(answer.as_bytes()).await.unwrap();
            // Keep the stream open until the client is done.
            let _ = stream.read(&mut buf).await;
        });
        path
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-bird-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn configure_reads_the_outcome() {
        let dir = tempdir("ok");
        let path = fake(
            &dir,
            "0001 BIRD 2.0.12 ready.\n",
            "0002-Reading configuration from /x\n0003 Reconfigured\n",
        )
        .await;
        let done = configure(&path, Duration::from_secs(2)).await.unwrap();
        assert!(done.ends_with("Reconfigured"));
    }

    #[tokio::test]
    async fn configure_reports_birds_error() {
        let dir = tempdir("err");
        let path = fake(
            &dir,
            "0001 BIRD 2.0.12 ready.\n",
            "0002-Reading configuration from /x\n8002 /x/routes.conf:3:1 syntax error\n",
        )
        .await;
        let error = configure(&path, Duration::from_secs(2)).await.unwrap_err();
        assert!(format!("{error:#}").contains("/x/routes.conf:3:1 syntax error"));
    }

    #[tokio::test]
    async fn silent_or_missing_socket_fails_in_time() {
        let dir = tempdir("silent");
        let path = dir.join("silent.ctl");
        let _listener = UnixListener::bind(&path).unwrap();
        let error = probe(&path, Duration::from_millis(200)).await.unwrap_err();
        assert!(format!("{error:#}").contains("no answer within 200 ms"));
        let error = probe(&dir.join("none.ctl"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("cannot connect"));
    }
}
