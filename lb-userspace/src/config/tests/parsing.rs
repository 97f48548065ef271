//! Well-formed files: the values and defaults they give, the form of errors, positions.

use super::*;

const FULL: &str = r#"# Every key, none at its default.
name = "edge-1"

[interfaces]
attach = ["lb-ext", "lb-int"]
xdp_mode = "native"

[control]
socket = "/run/edge/api.sock"

[timeouts]
tcp_syn = 5
tcp_established = 7200
tcp_half_closed = 600
tcp_closing = 20
udp = 30

[limits]
max_flows = 2000
max_services = 8
max_backends = 16

[snat]
port_min = 20000
port_max = 29999

[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
protocol = "tcp"
mode = "full-nat"
snat_ip = "198.19.1.1"

[[service.backend]]
address = "198.19.0.11"
port = 8080
weight = 2

[[service.backend]]
address = "198.19.0.12"

[[service]]
name = "dns"
vip = "198.18.1.10"
port = 53
protocol = "udp"
mode = "dnat"
backend = [
  { address = "198.19.0.21", weight = 0 },
  { address = "198.19.0.22", port = 5353 },
]
"#;

#[test]
fn full_config_parses_into_expected_struct() {
    let config = parse(FULL).unwrap();
    let expected = Config {
        name: "edge-1".into(),
        attach: vec!["lb-ext".into(), "lb-int".into()],
        xdp_mode: XdpMode::Native,
        socket: "/run/edge/api.sock".into(),
        metrics: None,
        timeouts: Timeouts {
            tcp_syn: Duration::from_secs(5),
            tcp_established: Duration::from_secs(7200),
            tcp_half_closed: Duration::from_secs(600),
            tcp_closing: Duration::from_secs(20),
            udp: Duration::from_secs(30),
        },
        limits: Limits {
            max_flows: 2000,
            max_services: 8,
            max_backends: 16,
            max_ring_slots: lb_common::DEFAULT_MAX_RING_SLOTS,
        },
        snat_port_min: 20000,
        snat_port_max: 29999,
        services: vec![
            ServiceConfig {
                name: "web".into(),
                vip: Ipv4Addr::new(198, 18, 1, 10),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::FullNat,
                snat_ips: vec![Ipv4Addr::new(198, 19, 1, 1)],
                syn_proxy: false,
                syn_cookies: SynCookies::Auto,
                syn_cookie_threshold: crate::domain::DEFAULT_SYN_COOKIE_THRESHOLD,
                backends: vec![
                    BackendConfig {
                        address: Ipv4Addr::new(198, 19, 0, 11),
                        port: 8080,
                        weight: 2,
                    },
                    BackendConfig {
                        address: Ipv4Addr::new(198, 19, 0, 12),
                        port: 80,
                        weight: 1,
                    },
                ],
                allow: None,
                deny: DenyAction::Drop,
                affinity_timeout: None,
                health_check: None,
                on_backend_down: BackendDown::Keep,
                unknown_segment: UnknownSegment::Drop,
            },
            ServiceConfig {
                name: "dns".into(),
                vip: Ipv4Addr::new(198, 18, 1, 10),
                port: 53,
                protocol: Protocol::Udp,
                mode: Mode::Dnat,
                snat_ips: Vec::new(),
                syn_proxy: false,
                syn_cookies: SynCookies::Off,
                syn_cookie_threshold: crate::domain::DEFAULT_SYN_COOKIE_THRESHOLD,
                backends: vec![
                    BackendConfig {
                        address: Ipv4Addr::new(198, 19, 0, 21),
                        port: 53,
                        weight: 0,
                    },
                    BackendConfig {
                        address: Ipv4Addr::new(198, 19, 0, 22),
                        port: 5353,
                        weight: 1,
                    },
                ],
                allow: None,
                deny: DenyAction::Drop,
                affinity_timeout: None,
                health_check: None,
                on_backend_down: BackendDown::Keep,
                unknown_segment: UnknownSegment::Drop,
            },
        ],
        cluster: None,
        peers: None,
        bgp: None,
        origin: Origin::default(),
    };
    assert_eq!(config, expected);
    let line = first_line_of(FULL, "attach = ");
    assert_eq!(
        config.origin.attach,
        [Position { line, column: 11 }, Position { line, column: 21 }]
    );
    assert_eq!(config.services[1].protocol.number(), 17);
    assert_eq!(config.services[0].protocol.number(), 6);
}

#[test]
fn operator_keys_parse() {
    let text = with_service_keys(
        "allow = [\"10.0.0.0/8\", \"198.18.0.2\", \"10.0.0.0/8\"]\ndeny = \"reset\"\n\
         affinity_timeout = 30\non_backend_down = \"reset\"\n\
         health_check = { type = \"http\", path = \"/health\", status_min = 200, \
         status_max = 204, interval_ms = 2000, timeout_ms = 1000, rise = 3, fall = 4 }",
    );
    let config = parse(&text).unwrap();
    let service = &config.services[0];
    assert_eq!(
        service.allow.as_deref().unwrap(),
        [
            Prefix {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                len: 8
            },
            Prefix {
                addr: Ipv4Addr::new(198, 18, 0, 2),
                len: 32
            },
        ]
    );
    assert_eq!(service.deny, DenyAction::Reset);
    assert_eq!(service.affinity_timeout, Some(Duration::from_secs(30)));
    assert_eq!(service.on_backend_down, BackendDown::Reset);
    // Not among the keys above: the default.
    assert_eq!(service.unknown_segment, UnknownSegment::Drop);
    let check = service.health_check.as_ref().unwrap();
    assert_eq!(
        check.probe,
        HealthProbe::Http {
            path: "/health".into(),
            status_min: 200,
            status_max: 204
        }
    );
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((check.rise, check.fall, check.port), (3, 4, None));
    let tcp = parse(&with_service_keys("health_check = { type = \"tcp\" }")).unwrap();
    let check = tcp.services[0].health_check.clone().unwrap();
    assert_eq!(check.probe, HealthProbe::Tcp);
    assert_eq!(
        (check.interval.as_millis(), check.timeout.as_millis()),
        (1000, 500)
    );
    assert_eq!((check.rise, check.fall), (2, 3));
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse("[interfaces]\nattach = [\"eth0\"]\n").unwrap();
    assert_eq!(config.name, "lb");
    assert_eq!(config.attach, ["eth0"]);
    assert_eq!(config.xdp_mode, XdpMode::Auto);
    assert_eq!(config.socket, Path::new("/run/lb/lb.sock"));
    assert_eq!(config.timeouts.tcp_syn, Duration::from_secs(30));
    assert_eq!(config.timeouts.tcp_established, Duration::from_secs(3600));
    assert_eq!(config.timeouts.tcp_half_closed, Duration::from_secs(3600));
    assert_eq!(config.timeouts.tcp_closing, Duration::from_secs(10));
    assert_eq!(config.timeouts.udp, Duration::from_secs(60));
    assert_eq!(
        config.limits,
        Limits {
            max_flows: 1_048_576,
            max_services: 64,
            max_backends: 4096,
            max_ring_slots: 64 * 2 * 65_537
        }
    );
    assert_eq!((config.snat_port_min, config.snat_port_max), (1024, 65535));
    assert!(config.services.is_empty());
}

#[test]
fn defaults_apply_inside_tables() {
    let text = with_service("[timeouts]\nudp = 5\n[limits]\nmax_flows = 10\n");
    let config = parse(&text).unwrap();
    assert_eq!(config.timeouts.udp, Duration::from_secs(5));
    assert_eq!(config.timeouts.tcp_syn, Duration::from_secs(30));
    assert_eq!(config.limits.max_flows, 10);
    assert_eq!(config.limits.max_services, 64);
    let service = &config.services[0];
    assert_eq!(
        (service.protocol, service.mode),
        (Protocol::Tcp, Mode::FullNat)
    );
    assert_eq!(
        service.backends,
        [BackendConfig {
            address: Ipv4Addr::new(198, 19, 0, 11),
            port: 80,
            weight: 1
        }]
    );
}

#[test]
fn socket_defaults_to_the_instance_name() {
    let config = parse("name = \"edge_2\"\n[interfaces]\nattach = [\"eth0\"]\n").unwrap();
    assert_eq!(config.socket, Path::new("/run/lb/edge_2.sock"));
}

#[test]
fn layout_does_not_make_configs_different() {
    let compact = parse("[interfaces]\nattach = [\"a\", \"b\"]\n").unwrap();
    let spread = parse("\n\n[interfaces]\nattach = [\n  \"a\",\n  \"b\",\n]\n").unwrap();
    assert_eq!(compact, spread);
}

#[test]
fn error_display_is_path_line_column_message() {
    let text = "[interfaces]\nattach = [\"eth0\"]\n  bogus = 1\n";
    let error = assert_refused(text, "bogus", "");
    assert_eq!(
        error.to_string(),
        format!(
            "/etc/lb/test.toml:{}:3: unknown field `bogus`, expected `attach` or `xdp_mode`",
            first_line_of(text, "bogus")
        )
    );
}

#[test]
fn load_reads_the_file() {
    let path = std::env::temp_dir().join(format!("lb-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, FULL).unwrap();
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap(), parse(FULL).unwrap());
}

#[test]
fn unreadable_file_has_no_position() {
    let path = Path::new("/nonexistent/lb.toml");
    let error = Config::load(path).unwrap_err();
    assert_eq!((error.line, error.column), (0, 0));
    assert_eq!(error.path, path);
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/lb.toml:0:0: cannot read")
    );
}

#[test]
fn columns_count_characters() {
    let text = "# é\nname = \"é\" # ü\n";
    assert_eq!(position(text, 0), Position { line: 1, column: 1 });
    assert_eq!(
        position(text, text.find("name").unwrap()),
        Position { line: 2, column: 1 }
    );
    assert_eq!(
        position(text, text.find('#').unwrap()),
        Position { line: 1, column: 1 }
    );
    let comment = text.rfind('#').unwrap();
    assert_eq!(
        position(text, comment),
        Position {
            line: 2,
            column: 12
        }
    );
    // Past the end, or inside a character: clamped, never a panic.
    assert_eq!(position(text, 1000).line, 3);
    assert_eq!(position(text, 3), Position { line: 1, column: 3 });
    assert_eq!(
        assert_refused(
            "[interfaces]\nattach = [\"é\", \"é\"]\n",
            "attach",
            "listed twice"
        )
        .column,
        16
    );
}
