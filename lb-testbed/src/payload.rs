//! The deterministic payload the test servers send for `GET /bytes/{n}`, and the
//! hashes that let a test verify a transfer without storing it.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// The `n` bytes that `GET /bytes/{n}` returns: a fixed pseudo-random
/// stream (splitmix64), so a transfer can be verified without storing it.
/// Byte `i` is the same whatever `n` is.
pub fn payload_bytes(n: u64) -> Payload {
    Payload {
        state: 0x6c62_2d70_6179_6c64, // "lb-payld"
        remaining: n,
        word: [0; 8],
        used: 8,
    }
}

/// Lowercase hex SHA-256 of `payload_bytes(n)`.
pub fn payload_sha256(n: u64) -> String {
    let mut hasher = Sha256::new();
    let mut payload = payload_bytes(n);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = payload.read(&mut buf).unwrap_or(0);
        if got == 0 {
            break;
        }
        hasher.update(&buf[..got]);
    }
    hex(&hasher.finalize())
}

/// Lowercase hex SHA-256 of `data` (to compare with [`payload_sha256`]).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reader/iterator over the deterministic payload; see [`payload_bytes`].
#[derive(Clone, Debug)]
pub struct Payload {
    state: u64,
    remaining: u64,
    word: [u8; 8],
    used: usize,
}

impl Payload {
    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for Payload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut filled = 0;
        while filled < want {
            if self.used == 8 {
                self.word = self.next_word();
                self.used = 0;
            }
            let take = (8 - self.used).min(want - filled);
            buf[filled..filled + take].copy_from_slice(&self.word[self.used..self.used + take]);
            self.used += take;
            filled += take;
        }
        self.remaining -= filled as u64;
        Ok(filled)
    }
}

impl Iterator for Payload {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let mut b = [0u8];
        match self.read(&mut b) {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_chunking_independent() {
        let all: Vec<u8> = payload_bytes(1000).collect();
        assert_eq!(all.len(), 1000);
        let mut chunked = Vec::new();
        let mut p = payload_bytes(1000);
        let mut buf = [0u8; 7];
        loop {
            let n = p.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            chunked.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, chunked);
        // A prefix of a longer payload is the shorter payload.
        let longer: Vec<u8> = payload_bytes(5000).collect();
        assert_eq!(&longer[..1000], &all[..]);
        assert_eq!(payload_sha256(1000), sha256_hex(&all));
        assert_eq!(payload_sha256(0), sha256_hex(&[]));
        // Not trivially constant.
        assert!(all.iter().any(|&b| b != all[0]));
    }
}
