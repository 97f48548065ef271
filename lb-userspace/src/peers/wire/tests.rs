//! Golden bytes (tag computed independently with Python's `hmac`), round trips of every
//! packet type, each refusal, and a never-panic decoder over random and mutated input.

use std::net::SocketAddrV4;

use proptest::prelude::*;

use super::*;
use crate::peers::record::{FlowRecord, RecordOp};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const CLUSTER: u16 = 9;
const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const TS: u64 = 1_700_000_000_000;

fn key() -> ClusterKey {
    ClusterKey::new(KEY).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn message(packet_type: PacketType) -> Message {
    Message {
        header: Header {
            source: A,
            destination: B,
            cluster_id: CLUSTER,
            packet_type,
            from_node: 1,
            to_node: 2,
        },
        sequence: 0x0102_0304_0506_0708,
        timestamp_ms: TS,
        instance: 0xab_cdef,
        state: matches!(packet_type, PacketType::Hello | PacketType::Heartbeat)
            .then_some(NodeState::Ready),
        snat: Vec::new(),
        announcements: Vec::new(),
        move_step: (packet_type == PacketType::Move).then_some(MoveStep {
            vip: Ipv4Addr::new(198, 18, 1, 20),
            epoch: 3,
            message: MoveMessage::Refuse(Refusal::Busy),
        }),
        claims: Vec::new(),
    }
}

fn announcement(port: u16) -> Announcement {
    let at = |ip: [u8; 4], port| SocketAddrV4::new(Ipv4Addr::from(ip), port);
    Announcement {
        op: RecordOp::Upsert,
        record: FlowRecord {
            owner: 1,
            proto: 6,
            state: 2,
            client: at([198, 18, 9, 1], port),
            vip: at([198, 18, 1, 10], 80),
            backend: at([198, 19, 0, 11], 80),
            snat: Some(at([198, 19, 1, 1], 40000)),
            synproxy: 0,
            wscales: 0,
            seq_delta: 0,
            ts_delta: 0,
            proxy_isn: 0,
            age_ms: 5,
        },
    }
}

#[test]
fn heartbeat_golden_bytes() {
    // Words: source, destination, priority 0 | cluster 9, type 19 | function 3, router 0,
    // management 0, from node 1 | to node 2; then sequence, timestamp, instance, state.
    let expected = hex("c6120001c61200020000000900130003000000000000000000010002\
         000100080102030405060708000200080000018bcfe56800000300080000000000abcdef\
         0040000102\
         5de2281ea599e821fae0124e1942665739d0f0b3b3658cf8f6a58ce540cda26b");
    let heartbeat = message(PacketType::Heartbeat);
    assert_eq!(encode(&heartbeat, &key()).unwrap(), expected);
    assert_eq!(decode(&expected, &key(), CLUSTER).unwrap(), heartbeat);
    let framed = framed(&expected);
    assert_eq!(framed[..4], (expected.len() as u32).to_be_bytes());
    assert_eq!(framed[4..], expected);
}

#[test]
fn every_packet_type_reads_back() {
    let mut hello = message(PacketType::Hello);
    hello.state = Some(NodeState::Transition);
    hello.snat = vec![Ipv4Addr::new(198, 19, 1, 1), Ipv4Addr::new(198, 19, 1, 2)];
    let mut batch = message(PacketType::Announcements);
    batch.announcements = (1..=MAX_ANNOUNCEMENTS as u16).map(announcement).collect();
    let mut draining = message(PacketType::Heartbeat);
    draining.state = Some(NodeState::Draining);
    draining.claims = vec![
        (Ipv4Addr::new(198, 18, 1, 20), 2),
        (Ipv4Addr::new(198, 18, 1, 21), 0),
    ];
    let mut moves: Vec<Message> = [
        MoveMessage::Offer,
        MoveMessage::Accept,
        MoveMessage::StreamDone,
        MoveMessage::Installed,
        MoveMessage::Released,
        MoveMessage::Taken,
        MoveMessage::Abort,
    ]
    .into_iter()
    .chain(Refusal::ALL.map(MoveMessage::Refuse))
    .map(|step| {
        let mut m = message(PacketType::Move);
        m.move_step = Some(MoveStep {
            vip: Ipv4Addr::new(198, 18, 1, 20),
            epoch: u64::MAX - 1,
            message: step,
        });
        m
    })
    .collect();
    let mut all = vec![hello, batch, message(PacketType::SyncDone), draining];
    all.append(&mut moves);
    for m in all {
        let bytes = encode(&m, &key()).unwrap();
        assert!(bytes.len() <= MAX_MESSAGE);
        assert_eq!(decode(&bytes, &key(), CLUSTER).unwrap(), m);
    }
}

#[test]
fn encode_refuses_what_decode_would() {
    let mut too_many = message(PacketType::Announcements);
    too_many.announcements = vec![announcement(1); MAX_ANNOUNCEMENTS + 1];
    assert!(encode(&too_many, &key()).unwrap_err().contains("at most"));
    let empty = message(PacketType::Announcements);
    assert!(
        encode(&empty, &key())
            .unwrap_err()
            .contains("without announcements")
    );
    let mut bare = message(PacketType::Move);
    bare.move_step = None;
    assert!(
        encode(&bare, &key())
            .unwrap_err()
            .contains("without its step")
    );
    let mut claiming = message(PacketType::SyncDone);
    claiming.claims = vec![(Ipv4Addr::new(198, 18, 1, 20), 1)];
    assert!(
        encode(&claiming, &key())
            .unwrap_err()
            .contains("with claims")
    );
    let mut stateless = message(PacketType::Hello);
    stateless.state = None;
    assert!(
        encode(&stateless, &key())
            .unwrap_err()
            .contains("without a state")
    );
}

/// Re-tags `body` with the test key: a well-authenticated but ill-formed message.
fn signed(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    frame::sign(&mut out, &key());
    out
}

fn body_of(m: &Message) -> Vec<u8> {
    let bytes = encode(m, &key()).unwrap();
    bytes[..bytes.len() - frame::TAG_LEN].to_vec()
}

#[test]
fn bad_input_is_refused_by_reason() {
    let good = encode(&message(PacketType::Heartbeat), &key()).unwrap();
    assert_eq!(
        decode(&good[..MIN_MESSAGE - 1], &key(), CLUSTER),
        Err(DecodeError::Truncated(MIN_MESSAGE - 1))
    );
    assert_eq!(
        decode(&vec![0; MAX_MESSAGE + 1], &key(), CLUSTER),
        Err(DecodeError::Oversized {
            len: MAX_MESSAGE + 1,
            max: MAX_MESSAGE
        })
    );
    assert_eq!(
        decode(&good, &key(), CLUSTER + 1),
        Err(DecodeError::WrongCluster(CLUSTER))
    );
    let other = ClusterKey::new(b"another-key-of-enough-bytes!").unwrap();
    assert_eq!(decode(&good, &other, CLUSTER), Err(DecodeError::BadTag));
    for byte in [0, 13, HEADER_LEN + 5, good.len() - 1] {
        let mut altered = good.clone();
        altered[byte] ^= 1;
        assert_eq!(
            decode(&altered, &key(), CLUSTER),
            Err(DecodeError::BadTag),
            "byte {byte}"
        );
    }
    assert_eq!(
        check_length(MIN_MESSAGE as u32 - 1),
        Err(DecodeError::Truncated(59))
    );
    assert_eq!(
        check_length(MAX_MESSAGE as u32 + 1),
        Err(DecodeError::Oversized {
            len: MAX_MESSAGE + 1,
            max: MAX_MESSAGE
        })
    );
    assert_eq!(check_length(100), Ok(100));

    let body = body_of(&message(PacketType::Heartbeat));
    let malformed = |bytes: Vec<u8>, needle: &str| match decode(&signed(&bytes), &key(), CLUSTER) {
        Err(DecodeError::Malformed(why)) => assert!(why.contains(needle), "{why}"),
        other => panic!("expected malformed ({needle}), got {other:?}"),
    };
    let mut b = body.clone();
    b[12..14].copy_from_slice(&5u16.to_be_bytes());
    malformed(b, "unknown packet type 5");
    let mut b = body.clone();
    b[14..16].copy_from_slice(&2u16.to_be_bytes());
    malformed(b, "function 2");
    let mut b = body.clone();
    b[24..26].copy_from_slice(&0u16.to_be_bytes());
    malformed(b, "sender node id 0");
    // The state value (last byte) out of range.
    let mut b = body.clone();
    *b.last_mut().unwrap() = 9;
    malformed(b, "state 9");
    // Heartbeat without its state field (the last 5 bytes).
    malformed(body[..body.len() - 5].to_vec(), "without a state");
    // Sequence field twice.
    let mut b = body.clone();
    b.extend_from_slice(&body[HEADER_LEN..HEADER_LEN + 12]);
    malformed(b, "appears twice");
    // No instance: header, sequence, timestamp, state.
    let mut b = body[..HEADER_LEN + 24].to_vec();
    b.extend_from_slice(&body[body.len() - 5..]);
    malformed(b, "required field 0x0003 missing");
    let mut b = body.clone();
    b.extend_from_slice(&[0, 0x42, 0]);
    malformed(b, "3 trailing bytes");
    let mut b = body.clone();
    b.extend_from_slice(&[0, 0x42, 0, 48, 1]);
    malformed(b, "runs past the end");
    // An announcement of the wrong length, and one in a heartbeat.
    let mut b = body.clone();
    frame::put_field(&mut b, field::ANNOUNCEMENT, &[1; 10]);
    malformed(b, "wrong length");
    let mut record = Vec::new();
    announcement(1).encode(&mut record);
    let mut b = body.clone();
    frame::put_field(&mut b, field::ANNOUNCEMENT, &record);
    malformed(b, "heartbeat with announcements");
    let mut b = body.clone();
    frame::put_field(&mut b, field::SNAT, &[198, 19, 1]);
    malformed(b, "SNAT field of 3 bytes");
    // Unknown fields are skipped.
    let mut b = body.clone();
    frame::put_field(&mut b, 0x7777, &[1, 2, 3]);
    assert_eq!(
        decode(&signed(&b), &key(), CLUSTER).unwrap(),
        message(PacketType::Heartbeat)
    );
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes, &key(), CLUSTER);
    }

    #[test]
    fn signed_garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut body = body_of(&message(PacketType::Hello))[..HEADER_LEN].to_vec();
        body.extend_from_slice(&tail);
        let _ = decode(&signed(&body), &key(), CLUSTER);
    }
}
