//! The `[peers]` table.

use super::*;
use crate::domain::{DEFAULT_JOIN_TIMEOUT_MS, DEFAULT_PEER_DEAD_AFTER_MS};

/// `[peers]` (two peers) after a valid single-service file.
const PEERS_TABLE: &str = r#"[peers]
node_id = 1
cluster_id = 9
key_file = "/etc/lb/peers.key"
listen = "198.18.0.1:7395"
[[peers.peer]]
node_id = 2
address = "198.18.0.2:7395"
[[peers.peer]]
node_id = 3
address = "198.18.0.3:7395"
"#;

fn peers_config() -> String {
    with_service(PEERS_TABLE)
}

#[test]
fn peers_table_parses_with_defaults() {
    let config = parse(&peers_config()).unwrap();
    assert_eq!(
        config.peers,
        Some(PeersConfig {
            node_id: 1,
            cluster_id: 9,
            key_file: "/etc/lb/peers.key".into(),
            listen: "198.18.0.1:7395".parse().unwrap(),
            members: vec![
                PeerConfig {
                    node_id: 2,
                    address: "198.18.0.2:7395".parse().unwrap(),
                },
                PeerConfig {
                    node_id: 3,
                    address: "198.18.0.3:7395".parse().unwrap(),
                },
            ],
            announce: true,
            join_timeout: Duration::from_millis(DEFAULT_JOIN_TIMEOUT_MS),
            dead_after: Duration::from_millis(DEFAULT_PEER_DEAD_AFTER_MS),
        })
    );
    let set = peers_config().replace(
        "cluster_id = 9\n",
        "cluster_id = 9\nannounce = false\njoin_timeout_ms = 0\ndead_after_ms = 400\n",
    );
    let peers = parse(&set).unwrap().peers.unwrap();
    assert!(!peers.announce);
    assert_eq!(peers.join_timeout, Duration::ZERO);
    assert_eq!(peers.dead_after, Duration::from_millis(400));
    // No peers listed: a cluster of one, still with its node id.
    let alone = with_service(PEERS_TABLE.split("[[peers.peer]]").next().unwrap());
    assert!(parse(&alone).unwrap().peers.unwrap().members.is_empty());
}

#[test]
fn peers_keys_are_checked() {
    let with = |from: &str, to: &str| peers_config().replacen(from, to, 1);
    assert_refused(
        &with("node_id = 1\n", "node_id = 0\n"),
        "node_id = 0",
        "peers.node_id must be between 1 and 65535",
    );
    assert_refused(
        &with("node_id = 1\n", "node_id = 65536\n"),
        "node_id = 65536",
        "peers.node_id must be between 1 and 65535",
    );
    assert_refused(
        &with("node_id = 2\n", "node_id = 0\n"),
        "node_id = 0",
        "peers.peer.node_id must be between 1 and 65535",
    );
    assert_refused(
        &with("node_id = 2\n", "node_id = 1\n"),
        "node_id = 1\naddress",
        "own node_id",
    );
    assert_refused(
        &with("node_id = 3\n", "node_id = 2\n"),
        "node_id = 2",
        "peer node_id 2 is listed twice",
    );
    assert_refused(
        &with("198.18.0.3:7395", "198.18.0.2:7000"),
        "198.18.0.2:7000",
        "peer address 198.18.0.2 is listed twice",
    );
    assert_refused(
        &with("198.18.0.2:7395", "198.18.0.1:7000"),
        "198.18.0.1:7000",
        "this instance's own (peers.listen)",
    );
    assert_refused(
        &with("198.18.0.1:7395", "0.0.0.0:7395"),
        "0.0.0.0:7395",
        "peers.listen must be a unicast address and a port above 0",
    );
    assert_refused(
        &with("198.18.0.1:7395", "198.18.0.1"),
        "listen = ",
        "peers.listen must be an IPv4 address:port",
    );
    assert_refused(
        &with("198.18.0.2:7395", "198.18.0.2:0"),
        "198.18.0.2:0",
        "peers.peer.address must be a unicast address and a port above 0",
    );
    assert_refused(
        &with("cluster_id = 9\n", "cluster_id = 9\ndead_after_ms = 50\n"),
        "dead_after_ms = 50",
        "peers.dead_after_ms must be between 100 and 60000",
    );
    assert_refused(
        &with("cluster_id = 9\n", "cluster_id = 9\njoin_timeout_ms = -1\n"),
        "join_timeout_ms = -1",
        "peers.join_timeout_ms must be between 0 and 600000",
    );
    assert_refused(
        &with("cluster_id = 9\n", "cluster_id = 65536\n"),
        "cluster_id = 65536",
        "peers.cluster_id must be between 0 and 65535",
    );
    assert_refused(
        &with("key_file = \"/etc/lb/peers.key\"", "key_file = \"\""),
        "key_file = ",
        "peers.key_file must not be empty",
    );
    assert_refused(
        &with("node_id = 2\n", "node_id = 2\nweight = 1\n"),
        "weight = 1",
        "unknown field `weight`",
    );
}

#[test]
fn peers_key_is_read_and_checked_at_the_key_file_line() {
    let text = peers_config();
    let config = parse(&text).unwrap();
    let line = first_line_of(&text, "key_file = ");
    let key = config
        .peers_key(|path| {
            assert_eq!(path, Path::new("/etc/lb/peers.key"));
            Ok(b"0123456789abcdef\n".to_vec())
        })
        .unwrap();
    assert_eq!(key.as_deref(), Some(&b"0123456789abcdef"[..]));
    let short = config.peers_key(|_| Ok(b"short \n".to_vec())).unwrap_err();
    assert_eq!((short.path.as_path(), short.line), (Path::new(PATH), line));
    assert!(
        short.message.contains("5 bytes, need at least 16"),
        "{short}"
    );
    let missing = config
        .peers_key(|_| Err(std::io::Error::from(std::io::ErrorKind::NotFound)))
        .unwrap_err();
    assert_eq!(missing.line, line);
    assert!(
        missing
            .message
            .contains("peers.key_file: cannot read /etc/lb/peers.key"),
        "{missing}"
    );
    // Without [peers], no key is read.
    let single = parse(&with_service("")).unwrap();
    assert_eq!(single.peers_key(|_| unreachable!()).unwrap(), None);
}
