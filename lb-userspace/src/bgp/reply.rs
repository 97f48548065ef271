//! BIRD's control-socket replies, read line by line.
//!
//! Every reply line starts with a four-digit code: `NNNN-text` is followed by more lines
//! of the same reply, `NNNN text` ends it, and a line starting with a space continues the
//! previous code. The socket greets with `0001 BIRD <version> ready.`. Codes 0xxx end a
//! command that worked, 1xxx and 2xxx are table rows and headings, 8xxx are run-time
//! errors (e.g. `8002 <file>:<line>:<col> syntax error`) and 9xxx errors in the command.

use std::fmt;

/// The greeting's code.
pub const CODE_WELCOME: u16 = 1;

/// One complete reply: its lines' codes and texts, the last one ending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub lines: Vec<(u16, String)>,
}

impl Reply {
    /// Code of the final line.
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |(code, _)| *code)
    }

    /// An 8xxx (run-time) or 9xxx (command) error.
    pub fn is_error(&self) -> bool {
        self.code() >= 8000
    }

    /// The texts, one per line.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(_, text)| text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A line that is not in BIRD's reply format (not a BIRD socket, or a broken stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a BIRD control-socket reply: {:?}", self.0)
    }
}

impl std::error::Error for ReplyError {}

/// Collects lines into replies.
#[derive(Debug, Default)]
pub struct ReplyReader {
    lines: Vec<(u16, String)>,
}

impl ReplyReader {
    /// Feeds one line (without its newline); a reply once its final line arrived.
    pub fn push(&mut self, line: &str) -> Result<Option<Reply>, ReplyError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(text) = line.strip_prefix(' ') {
            // Continues the previous line's code; never the first line of a reply.
            let Some(&(code, _)) = self.lines.last() else {
                return Err(ReplyError(line.to_string()));
            };
            self.lines.push((code, text.to_string()));
            return Ok(None);
        }
        let bytes = line.as_bytes();
        if bytes.len() < 5 || !bytes[..4].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError(line.to_string()));
        }
        let code: u16 = line[..4]
            .parse()
            .map_err(|_| ReplyError(line.to_string()))?;
        let text = line[5..].to_string();
        match bytes[4] {
            b'-' => {
                self.lines.push((code, text));
                Ok(None)
            }
            b' ' => {
                self.lines.push((code, text));
                Ok(Some(Reply {
                    lines: std::mem::take(&mut self.lines),
                }))
            }
            _ => Err(ReplyError(line.to_string())),
        }
    }
}

/// What a `configure` reply means: `Ok` with BIRD's words, or the error to report.
pub fn configure_outcome(reply: &Reply) -> Result<String, String> {
    match reply.code() {
        // Reconfigured; in progress (protocols restarting); queued after a running one.
        3..=5 => Ok(reply.text()),
        _ => Err(reply.text()),
    }
}

/// The greeting, checked: BIRD's version line.
pub fn greeting(reply: &Reply) -> Result<String, String> {
    if reply.code() == CODE_WELCOME {
        Ok(reply.text())
    } else {
        Err(format!("unexpected greeting {:?}", reply.text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<Reply> {
        let mut reader = ReplyReader::default();
        text.lines()
            .filter_map(|line| reader.push(line).unwrap())
            .collect()
    }

    #[test]
    fn greeting_is_one_final_line() {
        let replies = read("0001 BIRD 2.0.12 ready.\n");
        assert_eq!(replies.len(), 1);
        assert_eq!(greeting(&replies[0]).unwrap(), "BIRD 2.0.12 ready.");
        assert!(!replies[0].is_error());
    }

    #[test]
    fn configure_success_and_in_progress() {
        let replies = read(
            "0002-Reading configuration from /etc/bird.conf\n0003 Reconfigured\n\
             0002-Reading configuration from /etc/bird.conf\n0004 Reconfiguration in progress\n",
        );
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].code(), 3);
        assert_eq!(
            configure_outcome(&replies[0]).unwrap(),
            "Reading configuration from /etc/bird.conf\nReconfigured"
        );
        assert!(configure_outcome(&replies[1]).is_ok());
    }

    #[test]
    fn configure_error_names_the_file() {
        let replies = read(
            "0002-Reading configuration from b.conf\n\
             8002 /run/lb/routes.conf:1:39 syntax error, unexpected NUM\n",
        );
        assert!(replies[0].is_error());
        let error = configure_outcome(&replies[0]).unwrap_err();
        assert!(error.ends_with("/run/lb/routes.conf:1:39 syntax error, unexpected NUM"));
    }

    #[test]
    fn continuation_lines_keep_the_code() {
        let replies = read(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-device1    Device     ---        up     22:00:12.589  \n \
             lb_vips    Static     master4    up     22:00:12.589  \n0000 \n",
        );
        assert_eq!(replies.len(), 1);
        let lines = &replies[0].lines;
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[2].0, 1002);
        assert!(lines[2].1.starts_with("lb_vips"));
        assert_eq!(replies[0].code(), 0);
    }

    #[test]
    fn command_errors() {
        let replies = read("9001 syntax error, unexpected CF_SYM_UNDEFINED\n");
        assert!(replies[0].is_error());
        assert_eq!(replies[0].code(), 9001);
        assert!(greeting(&replies[0]).is_err());
        assert!(
            configure_outcome(&read("0006 Reconfiguration ignored, shutting down\n")[0]).is_err()
        );
    }

    #[test]
    fn foreign_lines_are_refused() {
        let mut reader = ReplyReader::default();
        assert!(reader.push("HTTP/1.1 200 OK").is_err());
        assert!(reader.push(" continuation first").is_err());
        assert!(reader.push("00x1 nope").is_err());
        assert!(reader.push("0001").is_err());
        assert!(reader.push("0001+x").is_err());
    }
}
