//! Golden bytes (laid out word by word as docs/cluster-protocol.md draws the header; tags
//! computed independently with Python's `hmac`), round trips and a never-panic decoder
//! run over random, truncated and mutated input.

use proptest::prelude::*;

use super::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const CLUSTER: u16 = 7;
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const MANAGEMENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 12);
const TS: u64 = 1_700_000_000_000;

fn key() -> ClusterKey {
    ClusterKey::new(KEY).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn header(packet_type: PacketType, src: Ipv4Addr, dst: Ipv4Addr) -> Header {
    Header {
        source: src,
        destination: dst,
        priority: 0,
        cluster_id: CLUSTER,
        packet_type,
        function: Function::of(packet_type),
        router: Ipv4Addr::UNSPECIFIED,
        management: Ipv4Addr::UNSPECIFIED,
        source_port: 0,
        destination_port: 0,
    }
}

fn http(health: Health) -> ServiceOffer {
    ServiceOffer {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        health,
    }
}

fn check_golden(message: &Message, expected: &[u8]) {
    let encoded = encode(message, &key()).unwrap();
    assert_eq!(
        encoded,
        expected,
        "encoding of {}",
        message.header.packet_type.name()
    );
    assert_eq!(decode(expected, &key(), CLUSTER).unwrap(), *message);
}

#[test]
fn golden_join() {
    // Fig 7: router IP, management node IP and ports are N/A, hence zero.
    let message = Message {
        header: Header {
            priority: 10,
            ..header(PacketType::Join, NODE, Ipv4Addr::BROADCAST)
        },
        fields: Fields {
            sequence: 1,
            timestamp_ms: TS,
            instance: 0x1122_3344_5566_7788,
            services: vec![http(Health::Up)],
            capacity: Some(4),
            load_permille: Some(250),
            connections: Some(3),
            ..Fields::default()
        },
    };
    let expected = hex("
        c6 12 02 0b  ff ff ff ff  00 0a 00 07  00 01 00 01
        00 00 00 00  00 00 00 00  00 00 00 00
        0001 0008 0000000000000001  0002 0008 0000018bcfe56800  0003 0008 1122334455667788
        0010 0008 06 01 0050 68747470  0020 0004 00000004  0021 0004 000000fa
        0022 0004 00000003
        2ba0a87c31063a76b734b045a9aa152b19bff777207af1b242407f320f05982e");
    check_golden(&message, &expected);
}

#[test]
fn golden_router_reply() {
    // Fig 8: priority, management node IP and ports are N/A.
    let message = Message {
        header: Header {
            router: ROUTER,
            ..header(PacketType::RouterReply, ROUTER, NODE)
        },
        fields: Fields {
            sequence: 5,
            timestamp_ms: TS + 1,
            instance: 0x99aa_bbcc_ddee_ff00,
            ack_instance: Some(0x1122_3344_5566_7788),
            heartbeat_ms: Some(1000),
            ..Fields::default()
        },
    };
    let expected = hex("
        c6 12 02 02  c6 12 02 0b  00 00 00 07  00 02 00 02
        c6 12 02 02  00 00 00 00  00 00 00 00
        0001 0008 0000000000000005  0002 0008 0000018bcfe56801  0003 0008 99aabbccddeeff00
        0030 0008 1122334455667788  0031 0004 000003e8
        bb0b5f8da987a57714f4850dfd2d62674089b01ef4492cce7d54e481528ee759");
    check_golden(&message, &expected);
}

#[test]
fn golden_router_to_nodes() {
    // Fig 9: priority and ports are N/A.
    let message = Message {
        header: Header {
            router: ROUTER,
            management: MANAGEMENT,
            ..header(PacketType::RouterToNodes, ROUTER, NODE)
        },
        fields: Fields {
            sequence: 6,
            timestamp_ms: TS + 2,
            instance: 0x99aa_bbcc_ddee_ff00,
            ..Fields::default()
        },
    };
    let expected = hex("
        c6 12 02 02  c6 12 02 0b  00 00 00 07  00 03 00 02
        c6 12 02 02  c6 12 02 0c  00 00 00 00
        0001 0008 0000000000000006  0002 0008 0000018bcfe56802  0003 0008 99aabbccddeeff00
        2a444c444af38895be15292d7594a384b5cae2e156b6a18416398d20de800665");
    check_golden(&message, &expected);
}

#[test]
fn golden_heartbeat() {
    let message = Message {
        header: Header {
            priority: 10,
            router: ROUTER,
            management: MANAGEMENT,
            ..header(PacketType::Heartbeat, NODE, ROUTER)
        },
        fields: Fields {
            sequence: 2,
            timestamp_ms: TS + 1024,
            instance: 0x1122_3344_5566_7788,
            services: vec![
                http(Health::Up),
                ServiceOffer {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    health: Health::Down,
                },
            ],
            capacity: Some(4),
            load_permille: Some(400),
            connections: Some(17),
            ..Fields::default()
        },
    };
    let expected = hex("
        c6 12 02 0b  c6 12 02 02  00 0a 00 07  00 04 00 01
        c6 12 02 02  c6 12 02 0c  00 00 00 00
        0001 0008 0000000000000002  0002 0008 0000018bcfe56c00  0003 0008 1122334455667788
        0010 0008 06 01 0050 68747470  0010 0007 11 02 0035 646e73
        0020 0004 00000004  0021 0004 00000190  0022 0004 00000011
        52c69698e344f5ab20d8ab524fbc0294c695298074411d4d3bebc803f6454e90");
    check_golden(&message, &expected);
}

#[test]
fn golden_leave() {
    let message = Message {
        header: Header {
            priority: 10,
            router: ROUTER,
            management: MANAGEMENT,
            ..header(PacketType::Leave, NODE, ROUTER)
        },
        fields: Fields {
            sequence: 3,
            timestamp_ms: TS + 2048,
            instance: 0x1122_3344_5566_7788,
            ..Fields::default()
        },
    };
    let expected = hex("
        c6 12 02 0b  c6 12 02 02  00 0a 00 07  00 05 00 01
        c6 12 02 02  c6 12 02 0c  00 00 00 00
        0001 0008 0000000000000003  0002 0008 0000018bcfe57000  0003 0008 1122334455667788
        71c3789fcab66e519a1a23a2b502c3f6f74b1c5c081ebcdc5345ded5755cc947");
    check_golden(&message, &expected);
}

fn leave_bytes() -> Vec<u8> {
    let message = Message {
        header: header(PacketType::Leave, NODE, ROUTER),
        fields: Fields {
            sequence: 3,
            timestamp_ms: TS,
            instance: 1,
            ..Fields::default()
        },
    };
    encode(&message, &key()).unwrap()
}

/// Re-tags `body` with the test key: a well-authenticated but ill-formed message.
fn signed(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    frame::sign(&mut out, &key());
    out
}

#[test]
fn rejections_by_reason() {
    let good = leave_bytes();
    assert!(decode(&good, &key(), CLUSTER).is_ok());
    assert_eq!(
        decode(&good[..MIN_DATAGRAM - 1], &key(), CLUSTER),
        Err(DecodeError::Truncated(MIN_DATAGRAM - 1))
    );
    assert_eq!(
        decode(&vec![0; MAX_DATAGRAM + 1], &key(), CLUSTER),
        Err(DecodeError::Oversized {
            len: MAX_DATAGRAM + 1,
            max: MAX_DATAGRAM
        })
    );
    assert_eq!(
        decode(&good, &key(), CLUSTER + 1),
        Err(DecodeError::WrongCluster(CLUSTER))
    );
    let other_key = ClusterKey::new(b"another-cluster-key-of-32-bytes!").unwrap();
    assert_eq!(decode(&good, &other_key, CLUSTER), Err(DecodeError::BadTag));
    // One flipped bit anywhere (header, field or tag) breaks the tag.
    for byte in [0, 13, HEADER_LEN + 5, good.len() - 1] {
        let mut bad = good.clone();
        bad[byte] ^= 0x01;
        let err = decode(&bad, &key(), CLUSTER).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadTag | DecodeError::WrongCluster(_)),
            "byte {byte}: {err:?}"
        );
    }
    // Cut short by whole fields: the tag no longer matches.
    assert_eq!(
        decode(&good[..good.len() - 4], &key(), CLUSTER),
        Err(DecodeError::BadTag)
    );
}

#[test]
fn authentic_but_malformed() {
    let body = &leave_bytes()[..leave_bytes().len() - TAG_LEN];
    let malformed = |bytes: Vec<u8>| match decode(&signed(&bytes), &key(), CLUSTER) {
        Err(DecodeError::Malformed(why)) => why,
        other => panic!("expected Malformed, got {other:?}"),
    };
    // Unknown packet type.
    let mut b = body.to_vec();
    b[12..14].copy_from_slice(&9u16.to_be_bytes());
    assert!(malformed(b).contains("packet type 9"));
    // A node's packet type claiming the router function.
    let mut b = body.to_vec();
    b[14..16].copy_from_slice(&(Function::Router as u16).to_be_bytes());
    assert!(malformed(b).contains("function"));
    // A field running past the end.
    let mut b = body.to_vec();
    b.extend_from_slice(&hex("0020 0010 0000"));
    assert!(malformed(b).contains("runs past the end"));
    // Trailing bytes shorter than a field header.
    let mut b = body.to_vec();
    b.extend_from_slice(&[0, 1]);
    assert!(malformed(b).contains("trailing"));
    // A duplicated single field.
    let mut b = body.to_vec();
    b.extend_from_slice(&hex("0001 0008 0000000000000009"));
    assert!(malformed(b).contains("twice"));
    // A wrong field width.
    let mut b = body[..HEADER_LEN].to_vec();
    b.extend_from_slice(&hex("0001 0004 00000001"));
    assert!(malformed(b).contains("must be 8 bytes"));
    // Required fields missing.
    let b = body[..HEADER_LEN].to_vec();
    assert!(malformed(b).contains("required field"));
    // A join without services, capacity or load.
    let mut b = body.to_vec();
    b[12..14].copy_from_slice(&(PacketType::Join as u16).to_be_bytes());
    assert!(malformed(b).contains("join without services"));
    // Bad service entries.
    for (entry, why) in [
        ("0010 0008 01 01 0050 68747470", "protocol 1"),
        ("0010 0008 06 07 0050 68747470", "health 7"),
        ("0010 0008 06 01 0000 68747470", "port 0"),
        ("0010 0008 06 01 0050 68 74 20 70", "may hold only"),
        ("0010 0004 06 01 0050", "service field of 4 bytes"),
    ] {
        let mut b = body.to_vec();
        b.extend_from_slice(&hex(entry));
        let got = malformed(b);
        assert!(got.contains(why), "{entry}: {got}");
    }
    let mut b = body.to_vec();
    b.extend_from_slice(&hex(
        "0010 0008 06 01 0050 68747470 0010 0008 06 01 0051 68747470",
    ));
    assert!(malformed(b).contains("listed twice"));
    // Unknown field types are skipped.
    let mut b = body.to_vec();
    b.extend_from_slice(&hex("7777 0002 abcd"));
    assert!(decode(&signed(&b), &key(), CLUSTER).is_ok());
}

#[test]
fn encode_refuses_what_decode_would_reject() {
    let mut message = decode(&leave_bytes(), &key(), CLUSTER).unwrap();
    message.header.function = Function::Router;
    assert!(encode(&message, &key()).unwrap_err().contains("function"));
    message.header.function = Function::ClusterNode;
    message.header.packet_type = PacketType::Join;
    assert!(
        encode(&message, &key())
            .unwrap_err()
            .contains("without services")
    );
    message.fields.services = (0..=MAX_SERVICES)
        .map(|i| ServiceOffer {
            name: format!("s{i}"),
            ..http(Health::Up)
        })
        .collect();
    assert!(
        encode(&message, &key())
            .unwrap_err()
            .contains("services, at most")
    );
    message.fields.services = vec![ServiceOffer {
        name: "no spaces".into(),
        ..http(Health::Up)
    }];
    assert!(
        encode(&message, &key())
            .unwrap_err()
            .contains("may hold only")
    );
}

#[test]
fn keys() {
    assert!(
        ClusterKey::new(b"short")
            .unwrap_err()
            .contains("at least 16")
    );
    let dir = std::env::temp_dir().join(format!("lb-key-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, b"0123456789abcdef0123456789abcdef\n").unwrap();
    let from_file = ClusterKey::from_file(&path).unwrap();
    // The trailing newline is not part of the key: the golden join still verifies.
    let join = encode(
        &Message {
            header: header(PacketType::Leave, NODE, ROUTER),
            fields: Fields::default(),
        },
        &from_file,
    )
    .unwrap();
    assert!(decode(&join, &key(), CLUSTER).is_ok());
    std::fs::write(&path, b"tiny\n").unwrap();
    let err = ClusterKey::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("key file") && err.contains("at least 16"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        ClusterKey::from_file(&dir.join("missing"))
            .unwrap_err()
            .to_string()
            .contains("cannot read key file")
    );
}

fn arb_ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn arb_service() -> impl Strategy<Value = ServiceOffer> {
    (
        "[A-Za-z0-9_.-]{1,32}",
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        1u16..,
        prop_oneof![Just(Health::Unknown), Just(Health::Up), Just(Health::Down)],
    )
        .prop_map(|(name, protocol, port, health)| ServiceOffer {
            name,
            protocol,
            port,
            health,
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let packet_type = prop_oneof![
        Just(PacketType::Join),
        Just(PacketType::RouterReply),
        Just(PacketType::RouterToNodes),
        Just(PacketType::Heartbeat),
        Just(PacketType::Leave),
    ];
    (
        packet_type,
        (arb_ip(), arb_ip(), arb_ip(), arb_ip()),
        any::<(u16, u16, u16)>(),
        any::<(u64, u64, u64)>(),
        prop::collection::vec(arb_service(), 1..=MAX_SERVICES),
        (1u32.., any::<u32>(), any::<Option<u32>>()),
        (any::<u64>(), any::<Option<u32>>()),
    )
        .prop_map(
            |(
                packet_type,
                (source, destination, router, management),
                (priority, source_port, destination_port),
                (sequence, timestamp_ms, instance),
                mut services,
                (capacity, load, connections),
                (ack, heartbeat_ms),
            )| {
                let mut names = std::collections::HashSet::new();
                services.retain(|s| names.insert(s.name.clone()));
                let node = packet_type.from_node();
                let reports = matches!(packet_type, PacketType::Join | PacketType::Heartbeat);
                Message {
                    header: Header {
                        source,
                        destination,
                        priority: if node { priority } else { 0 },
                        cluster_id: CLUSTER,
                        packet_type,
                        function: Function::of(packet_type),
                        router,
                        management,
                        source_port,
                        destination_port,
                    },
                    fields: Fields {
                        sequence,
                        timestamp_ms,
                        instance,
                        services: if reports { services } else { Vec::new() },
                        capacity: reports.then_some(capacity),
                        load_permille: reports.then_some(load),
                        connections: if reports { connections } else { None },
                        ack_instance: (packet_type == PacketType::RouterReply).then_some(ack),
                        heartbeat_ms,
                    },
                }
            },
        )
}

proptest! {
    #[test]
    fn round_trip(message in arb_message()) {
        let bytes = encode(&message, &key()).unwrap();
        prop_assert!(bytes.len() <= MAX_DATAGRAM);
        prop_assert_eq!(decode(&bytes, &key(), CLUSTER).unwrap(), message);
    }

    #[test]
    fn truncated_valid_messages_are_rejected(message in arb_message(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&message, &key()).unwrap();
        let len = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..len], &key(), CLUSTER).is_err());
    }

    #[test]
    fn random_input_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=MAX_DATAGRAM + 16)) {
        let _ = decode(&bytes, &key(), CLUSTER);
        let _ = peek_cluster_id(&bytes);
        let _ = peek_packet_type(&bytes);
    }

    /// Random bodies with a valid tag reach the field parser: it must reject or accept,
    /// never panic. Bodies start with a valid-looking header half the time.
    #[test]
    fn authentic_random_bodies_never_panic(
        header_words in prop::collection::vec(any::<u8>(), HEADER_LEN),
        fields in prop::collection::vec(any::<u8>(), 0..512),
        plausible in any::<bool>(),
    ) {
        let mut body = header_words;
        body[10..12].copy_from_slice(&CLUSTER.to_be_bytes());
        if plausible {
            let packet_type = 1 + u16::from(body[0] % 5);
            body[12..14].copy_from_slice(&packet_type.to_be_bytes());
            let function = Function::of(PacketType::from_u16(packet_type).unwrap()) as u16;
            body[14..16].copy_from_slice(&function.to_be_bytes());
        }
        body.extend_from_slice(&fields);
        let datagram = signed(&body);
        match decode(&datagram, &key(), CLUSTER) {
            Ok(message) => {
                // Whatever was accepted re-encodes within limits.
                prop_assert!(encode(&message, &key()).is_ok());
            }
            Err(DecodeError::Malformed(_)) | Err(DecodeError::Oversized { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// Mutating any byte of a valid message never panics and never passes the tag.
    #[test]
    fn mutated_messages_are_rejected(message in arb_message(), at in any::<prop::sample::Index>(), xor in 1u8..) {
        let mut bytes = encode(&message, &key()).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(decode(&bytes, &key(), CLUSTER).is_err());
    }
}
