//! Group 1 and the kernel half of group 3: per-packet cost of each path with
//! `BPF_PROG_TEST_RUN`, in a throw-away namespace whose static routes and neighbours make
//! `bpf_fib_lookup` deterministic.
//!
//! Every path runs through `bench_wrapper` (lb-ebpf/src/bench.rs), which restores the
//! packet before each repeat and tail-calls the program under test, so repeat N sees
//! the same bytes as repeat 1 (or, for first-packet paths, a new source each time). The
//! wrapper's own cost (wrapper → `bench_null`) is measured in the same run and
//! subtracted. Each measurement is then checked: the verdict and output bytes of the
//! last repeat against a single direct run, and the global counters against the number
//! of repeats, so the report says which path the repeats really took.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::maps::{Array, MapData, ProgramArray};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use lb_common::{BENCH_PACKET_MAX, BenchPacket, FlowEntry, FlowKey, bench_names, counters};
use lb_testbed::harness::{
    CLIENT_MAC, EXT_IF, Harness, INT_IF, LB_EXT_MAC, LB_INT_MAC, Neighbour, XDP_PASS, XDP_REDIRECT,
    XDP_TX, harness_netns, parse_config, verdict_name,
};
use lb_testbed::packet::{F_ACK, F_SYN, Tcp, checksums_valid, udp_packet};
use lb_testbed::{CLIENT_IP as CLIENT, Netns, SNAT_IP as SNAT, VIP};
use lb_userspace::{ebpf, sys};

use super::model::{KernelPath, MaglevTiming, ScalePoint, median};

const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);
/// Sources of generated flows: 198.18.128.0 upwards, inside the benchmarking range.
const GENERATED_SRC_BASE: u32 = u32::from_be_bytes([198, 18, 128, 0]);
/// Backends 198.19.0.100.. (64 of them): with 64,512 source ports each, a million new
/// full-NAT flows per run stay far from port exhaustion.
const BACKENDS: u8 = 64;
const BACKEND_BASE: u8 = 100;

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, BACKEND_BASE + i)
}

fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x03, i]
}

/// Port of the service with `syn_proxy = true`.
const SYN_PROXY_PORT: u16 = 443;

/// The options of a Linux client's SYN: MSS 1460, SACK permitted, timestamps, NOP,
/// window scale 7 (20 bytes), which the SYN proxy reads and encodes in its cookie.
const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7,
];

fn config_text(max_flows: u32, backends: u8) -> String {
    let mut text = format!(
        "name = \"lbbench\"\n[interfaces]\nattach = [\"ext0\"]\n\
         [limits]\nmax_flows = {max_flows}\nmax_services = 8\nmax_backends = 1100\n"
    );
    for (name, port, proto, extra) in [
        ("web", 80, "tcp", ""),
        ("dns", 5353, "udp", ""),
        ("web-syn-proxy", SYN_PROXY_PORT, "tcp", "syn_proxy = true\n"),
    ] {
        text.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\n\
             protocol = \"{proto}\"\nsnat_ip = \"{SNAT}\"\n{extra}"
        ));
        for i in 0..backends {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"{}\"\n",
                backend_ip(i)
            ));
        }
    }
    text
}

/// The harness namespace with `ext0` on a /16, so the generated sources
/// (198.18.128.0 upwards) are on-link, and permanent neighbours for the client, the
/// backends and one other host. Deleted on drop.
pub fn bench_netns(name: &str) -> Result<Netns> {
    let mut neighbours = vec![
        Neighbour {
            ip: CLIENT,
            mac: CLIENT_MAC,
            dev: EXT_IF,
        },
        Neighbour {
            ip: OTHER_HOST,
            mac: [0x02, 0, 0, 0, 0, 0x50],
            dev: INT_IF,
        },
    ];
    neighbours.extend((0..BACKENDS).map(|i| Neighbour {
        ip: backend_ip(i),
        mac: backend_mac(i),
        dev: INT_IF,
    }));
    harness_netns(name, 16, &neighbours)
}

/// The shared harness (the production program programmed from `config_text`) plus the
/// bench object whose wrapper tail-calls it.
struct Rig {
    harness: Harness,
    bench: Ebpf,
    target: ProgramArray<MapData>,
    packet: Array<MapData, BenchPacket>,
    sequence: Array<MapData, u32>,
}

fn load_xdp(bench: &mut Ebpf, name: &str) -> Result<()> {
    let program: &mut Xdp = bench
        .program_mut(name)
        .with_context(|| format!("{name} missing from the bench object"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    Ok(())
}

/// Which program the wrapper tail-calls.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Balancer,
    Floor,
    Null,
}

struct Measured {
    ns: Vec<f64>,
    verdict: u32,
    last_out: Vec<u8>,
}

impl Rig {
    fn new(max_flows: u32) -> Result<Rig> {
        let harness = Harness::load(&config_text(max_flows, BACKENDS))?;
        let mut bench = EbpfLoader::new().load(ebpf::bench_object()?)?;
        for name in [bench_names::WRAPPER, bench_names::FLOOR, bench_names::NULL] {
            load_xdp(&mut bench, name)?;
        }
        let take = |bench: &mut Ebpf, name: &str| {
            bench
                .take_map(name)
                .with_context(|| format!("map {name} missing from the bench object"))
        };
        let target = ProgramArray::try_from(take(&mut bench, bench_names::TARGET)?)?;
        let packet = Array::try_from(take(&mut bench, bench_names::PACKET)?)?;
        let sequence = Array::try_from(take(&mut bench, bench_names::SEQUENCE)?)?;
        Ok(Rig {
            harness,
            bench,
            target,
            packet,
            sequence,
        })
    }

    fn bench_prog(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .bench
            .program_mut(name)
            .context("bench program missing")?
            .try_into()?)
    }

    fn set_target(&mut self, target: Target) -> Result<()> {
        let fd = match target {
            Target::Balancer => self.harness.program()?.fd()?.try_clone()?,
            Target::Floor => self.bench_prog(bench_names::FLOOR)?.fd()?.try_clone()?,
            Target::Null => self.bench_prog(bench_names::NULL)?.fd()?.try_clone()?,
        };
        self.target.set(0, &fd, 0)?;
        Ok(())
    }

    fn counter(&self, index: u32) -> Result<u64> {
        self.harness.try_counter(index)
    }

    /// One direct run of the balancer (repeat 1): the reference verdict and output.
    fn direct(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.harness.try_run(packet)
    }

    /// `runs` test runs of `repeat` repeats through the wrapper; ns per repeat each.
    fn measure(
        &mut self,
        target: Target,
        packet: &[u8],
        vary: Option<(u32, u32)>,
        repeat: u32,
        runs: usize,
    ) -> Result<Measured> {
        ensure!(packet.len() <= BENCH_PACKET_MAX, "bench packet too long");
        self.set_target(target)?;
        let mut stored = BenchPacket {
            len: packet.len() as u32,
            ..BenchPacket::default()
        };
        stored.bytes[..packet.len()].copy_from_slice(packet);
        if let Some((count, src_base)) = vary {
            stored.vary_count = count;
            stored.src_base = src_base;
        }
        self.packet.set(0, stored, 0)?;
        let mut ns = Vec::with_capacity(runs);
        let mut verdict = 0;
        let mut last_out = Vec::new();
        for _ in 0..runs {
            self.sequence.set(0, 0, 0)?;
            let mut out = vec![0u8; packet.len() + 256];
            let wrapper = self.bench_prog(bench_names::WRAPPER)?;
            let result = wrapper.test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })?;
            out.truncate(result.data_size_out as usize);
            ns.push(result.duration.as_nanos() as f64);
            verdict = result.return_value;
            last_out = out;
        }
        // The kernel reports whole nanoseconds per repeat; sub-ns resolution is lost.
        Ok(Measured {
            ns,
            verdict,
            last_out,
        })
    }
}

/// Ethernet + IPv4 + TCP (no options, seq 1000, ACK 5000 when `flags` has ACK) with
/// correct checksums.
fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    Tcp {
        src_mac,
        dst_mac,
        src: src.0,
        dst: dst.0,
        ttl: 64,
        sport: src.1,
        dport: dst.1,
        syn: flags & F_SYN != 0,
        ack: (flags & F_ACK != 0).then_some(5000),
        fin: false,
        rst: false,
        seq: 1000,
    }
    .build(payload)
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    udp_packet(src_mac, dst_mac, src.0, src.1, dst.0, dst.1, 64, payload)
}

const SYN: u8 = F_SYN;
const ACK: u8 = F_ACK;
const SYN_ACK: u8 = F_SYN | F_ACK;

pub struct KernelParams {
    pub repeat: u32,
    pub runs: usize,
    pub scale_flows: Vec<u32>,
    pub maglev_backends: Vec<usize>,
}

pub struct KernelResults {
    pub floor_direct_ns: f64,
    pub wrapper_ns: f64,
    pub paths: Vec<KernelPath>,
    pub syn_proxy: String,
    pub scale: Vec<ScalePoint>,
    pub maglev: Vec<MaglevTiming>,
}

fn path(
    name: &str,
    measured: &Measured,
    wrapper_ns: f64,
    floor_ns: f64,
    took: String,
) -> KernelPath {
    let raw = median(&measured.ns);
    let net = (raw - wrapper_ns).max(0.0);
    KernelPath {
        name: name.to_string(),
        runs_ns: measured.ns.clone(),
        raw_ns: raw,
        net_ns: net,
        floor_ratio: if floor_ns > 0.0 { net / floor_ns } else { 0.0 },
        verdict: verdict_name(measured.verdict).to_string(),
        took,
    }
}

/// Counter deltas around `f`.
fn deltas<T>(rig: &mut Rig, f: impl FnOnce(&mut Rig) -> Result<T>) -> Result<(T, [u64; 3])> {
    let idx = [
        counters::FLOW_HITS,
        counters::NEW_FLOWS,
        counters::PASS_NOT_OURS,
    ];
    let before = idx.map(|i| rig.counter(i));
    let value = f(rig)?;
    let mut d = [0u64; 3];
    for (k, i) in idx.iter().enumerate() {
        d[k] = rig.counter(*i)? - before[k].as_ref().map_err(|e| anyhow!("{e}"))?;
    }
    Ok((value, d))
}

/// Runs group 1 (and the test_run half of group 3) inside namespace `ns`.
pub fn run(params: &KernelParams) -> Result<KernelResults> {
    let total = u64::from(params.repeat) * params.runs as u64;
    let (repeat, runs) = (params.repeat, params.runs);

    // Rig for everything but new flows: room for the scale fill is set per scale point.
    let mut rig = Rig::new(1 << 16)?;

    // Floor, direct: MAC swap twice is the identity, so repeats need no restore.
    let syn_in = tcp_frame(CLIENT_MAC, LB_EXT_MAC, (CLIENT, 40000), (VIP, 80), SYN, &[]);
    let floor_direct = {
        let mut ns_runs = Vec::new();
        let mut verdict = 0;
        for _ in 0..runs {
            let mut out = vec![0u8; syn_in.len() + 256];
            let result = rig
                .bench_prog(bench_names::FLOOR)?
                .test_run(TestRunOptions {
                    data_in: Some(&syn_in),
                    data_out: Some(&mut out),
                    repeat,
                    ..TestRunOptions::default()
                })?;
            ns_runs.push(result.duration.as_nanos() as f64);
            verdict = result.return_value;
        }
        ensure!(
            verdict == XDP_TX,
            "floor program returned {}",
            verdict_name(verdict)
        );
        ns_runs
    };
    let floor_ns = median(&floor_direct);

    let null = rig.measure(Target::Null, &syn_in, None, repeat, runs)?;
    ensure!(
        null.verdict == XDP_TX,
        "wrapper → null returned {}",
        verdict_name(null.verdict)
    );
    let wrapper_ns = median(&null.ns);

    let mut paths = Vec::new();
    let floor_wrapped = rig.measure(Target::Floor, &syn_in, None, repeat, runs)?;
    let mut swapped = syn_in.clone();
    swapped[..6].copy_from_slice(&syn_in[6..12]);
    swapped[6..12].copy_from_slice(&syn_in[..6]);
    ensure!(
        floor_wrapped.verdict == XDP_TX && floor_wrapped.last_out == swapped,
        "floor via wrapper did not swap MACs"
    );
    paths.push(path(
        "floor via wrapper (parse, MAC swap, XDP_TX)",
        &floor_wrapped,
        wrapper_ns,
        floor_ns,
        "XDP_TX, MACs swapped once (restore works)".into(),
    ));

    // Non-VIP pass.
    let other = tcp_frame(
        CLIENT_MAC,
        LB_EXT_MAC,
        (CLIENT, 40000),
        (OTHER_HOST, 80),
        ACK,
        b"x",
    );
    let (m, d) = deltas(&mut rig, |rig| {
        rig.measure(Target::Balancer, &other, None, repeat, runs)
    })?;
    ensure!(
        m.verdict == XDP_PASS && m.last_out == other,
        "non-VIP packet not passed untouched"
    );
    ensure!(
        d[2] == total,
        "pass_not_ours counted {} of {total} repeats",
        d[2]
    );
    paths.push(path(
        "non-VIP pass",
        &m,
        wrapper_ns,
        floor_ns,
        format!("XDP_PASS untouched; pass_not_ours +{} = repeats", d[2]),
    ));

    // Established TCP, both directions: handshake once, then measure a data packet.
    let (verdict, syn_out) = rig.direct(&syn_in)?;
    ensure!(verdict == XDP_REDIRECT, "SYN: {}", verdict_name(verdict));
    let backend = Ipv4Addr::new(syn_out[30], syn_out[31], syn_out[32], syn_out[33]);
    let sport = u16::from_be_bytes([syn_out[34], syn_out[35]]);
    let bmac = backend_mac(backend.octets()[3] - BACKEND_BASE);
    let syn_ack = tcp_frame(bmac, LB_INT_MAC, (backend, 80), (SNAT, sport), SYN_ACK, &[]);
    let (verdict, _) = rig.direct(&syn_ack)?;
    ensure!(
        verdict == XDP_REDIRECT,
        "SYN-ACK: {}",
        verdict_name(verdict)
    );
    let payload = [0x42u8; 64];
    let fwd = tcp_frame(
        CLIENT_MAC,
        LB_EXT_MAC,
        (CLIENT, 40000),
        (VIP, 80),
        ACK,
        &payload,
    );
    let rev = tcp_frame(
        bmac,
        LB_INT_MAC,
        (backend, 80),
        (SNAT, sport),
        ACK,
        &payload,
    );
    // UDP: the first datagram makes the flow, the measured repeats hit it.
    let udp = udp_frame(
        CLIENT_MAC,
        LB_EXT_MAC,
        (CLIENT, 40001),
        (VIP, 5353),
        &payload,
    );
    let (verdict, _) = rig.direct(&udp)?;
    ensure!(
        verdict == XDP_REDIRECT,
        "UDP first datagram: {}",
        verdict_name(verdict)
    );
    for (name, packet) in [
        ("established TCP forward", &fwd),
        ("established TCP reverse", &rev),
        ("established UDP (64-byte payload)", &udp),
    ] {
        let (_, expected) = rig.direct(packet)?;
        let (m, d) = deltas(&mut rig, |rig| {
            rig.measure(Target::Balancer, packet, None, repeat, runs)
        })?;
        ensure!(
            m.verdict == XDP_REDIRECT && m.last_out == expected,
            "{name}: last repeat differs from a single run"
        );
        ensure!(
            d[0] == total && d[1] == 0,
            "{name}: flow_hits +{} new_flows +{}",
            d[0],
            d[1]
        );
        paths.push(path(
            name,
            &m,
            wrapper_ns,
            floor_ns,
            format!(
                "XDP_REDIRECT, last output = single run; flow_hits +{} = repeats",
                d[0]
            ),
        ));
    }

    drop(rig);

    // First packets: every repeat a new source (vary), fresh maps per run so each run
    // starts from an empty table.
    for (name, packet) in [
        ("first packet of a TCP flow (SYN)", &syn_in),
        ("first UDP datagram of a flow", &udp),
    ] {
        let mut runs_ns = Vec::new();
        let mut last = None;
        let mut lost_total = 0u64;
        for _ in 0..runs {
            let mut rig = Rig::new((repeat.saturating_mul(4)).max(1 << 16))?;
            let (m, d) = deltas(&mut rig, |rig| {
                rig.measure(
                    Target::Balancer,
                    packet,
                    Some((repeat, GENERATED_SRC_BASE)),
                    repeat,
                    1,
                )
            })?;
            ensure!(
                m.verdict == XDP_REDIRECT,
                "{name}: {}",
                verdict_name(m.verdict)
            );
            // A repeat whose 8 random source-port probes all collide is dropped
            // (drop_snat_exhausted); allow one in a thousand and report the count.
            let lost = u64::from(repeat) - d[1].min(u64::from(repeat));
            ensure!(
                d[0] == 0 && lost * 1000 <= u64::from(repeat),
                "{name}: new_flows +{} flow_hits +{} for {repeat} repeats",
                d[1],
                d[0]
            );
            let dst = Ipv4Addr::new(
                m.last_out[30],
                m.last_out[31],
                m.last_out[32],
                m.last_out[33],
            );
            let src = Ipv4Addr::new(
                m.last_out[26],
                m.last_out[27],
                m.last_out[28],
                m.last_out[29],
            );
            ensure!(
                src == SNAT && (0..BACKENDS).any(|i| backend_ip(i) == dst),
                "{name}: bad rewrite"
            );
            // The wrapper's new source came with updated checksums, so the rewritten
            // packet is valid too.
            checksums_valid(&m.last_out).map_err(|e| anyhow!("{name}: last output: {e}"))?;
            let flows = rig.harness.flow_count() as u64;
            ensure!(
                flows == 2 * d[1],
                "{name}: {flows} flow entries for {} new flows",
                d[1]
            );
            lost_total += lost;
            runs_ns.extend(m.ns.iter().copied());
            last = Some((m.verdict, m.last_out, flows));
        }
        let (verdict, last_out, flows) = last.context("no runs")?;
        let m = Measured {
            ns: runs_ns,
            verdict,
            last_out,
        };
        paths.push(path(
            name,
            &m,
            wrapper_ns,
            floor_ns,
            format!(
                "XDP_REDIRECT to a backend from the SNAT address; new_flows = repeats except {lost_total} of {} dropped over all runs; {flows} entries after the last run",
                u64::from(repeat) * runs as u64
            ),
        ));
    }

    paths.push(first_syn_announced(&syn_in, runs, wrapper_ns, floor_ns)?);

    let syn_proxy = "the SYN path is measured above (a Linux client's SYN, with options, answered with a cookie SYN-ACK; no state). The cookie-ACK path is not: its cookie depends on the time and a secret, so no stored packet can repeat it.".to_string();
    paths.push(syn_proxy_syn(params, wrapper_ns, floor_ns)?);
    let scale = scale(params, wrapper_ns)?;
    let maglev = maglev(&params.maglev_backends)?;
    Ok(KernelResults {
        floor_direct_ns: floor_ns,
        wrapper_ns,
        paths,
        syn_proxy,
        scale,
        maglev,
    })
}

/// Repeats of the flow-sharing row: fewer than `FLOW_EVENTS` holds (about 40,000), since
/// nothing drains the ring during a run and a full ring only counts a lost event.
const ANNOUNCED_REPEAT: u32 = 30_000;

/// The first SYN with announcements on (docs/scale-out.md, "Flow records": one
/// `FLOW_EVENTS` record per new flow), measured beside the same SYN with them off at the
/// same repeats and table size, so the note gives the ratio.
fn first_syn_announced(
    syn_in: &[u8],
    runs: usize,
    wrapper_ns: f64,
    floor_ns: f64,
) -> Result<KernelPath> {
    let name = "first SYN, announcements on";
    let measured = |announce: bool| -> Result<(Measured, u64)> {
        let mut runs_ns = Vec::new();
        let mut last = None;
        let mut events = 0;
        for _ in 0..runs {
            let mut rig = Rig::new(ANNOUNCED_REPEAT.saturating_mul(4).max(1 << 16))?;
            let settings = lb_common::Settings {
                node_id: 1,
                announce: announce.into(),
                ..rig.harness.settings()?
            };
            rig.harness.set_settings(settings)?;
            let (m, d) = deltas(&mut rig, |rig| {
                rig.measure(
                    Target::Balancer,
                    syn_in,
                    Some((ANNOUNCED_REPEAT, GENERATED_SRC_BASE)),
                    ANNOUNCED_REPEAT,
                    1,
                )
            })?;
            ensure!(
                m.verdict == XDP_REDIRECT && d[0] == 0,
                "{name}: {} with flow_hits +{}",
                verdict_name(m.verdict),
                d[0]
            );
            ensure!(
                rig.counter(counters::FLOW_EVENTS_LOST)? == 0,
                "{name}: the ring ran full"
            );
            events = rig.harness.flow_events().len() as u64;
            ensure!(
                !announce || events == d[1],
                "{name}: {events} events for {} new flows",
                d[1]
            );
            runs_ns.extend(m.ns.iter().copied());
            last = Some(m);
        }
        let last = last.context("no runs")?;
        Ok((
            Measured {
                ns: runs_ns,
                ..last
            },
            events,
        ))
    };
    let (off, _) = measured(false)?;
    let (on, events) = measured(true)?;
    let off_net = (median(&off.ns) - wrapper_ns).max(0.0);
    let on_net = (median(&on.ns) - wrapper_ns).max(0.0);
    let ratio = if off_net > 0.0 { on_net / off_net } else { 0.0 };
    Ok(path(
        name,
        &on,
        wrapper_ns,
        floor_ns,
        format!(
            "XDP_REDIRECT, one FLOW_EVENTS record per new flow ({events} after the last run, none lost); {ANNOUNCED_REPEAT} repeats a run (what the ring holds undrained): the same SYN with announcements off at these repeats takes {off_net:.0} ns, ratio {ratio:.2}"
        ),
    ))
}

/// The SYN proxy's answer to a SYN: every repeat a new client (as in a flood), each
/// answered with a cookie SYN-ACK out of the ingress interface, no entry made.
fn syn_proxy_syn(params: &KernelParams, wrapper_ns: f64, floor_ns: f64) -> Result<KernelPath> {
    let name = "SYN proxy: SYN answered with a cookie SYN-ACK";
    let syn = lb_testbed::packet::Segment {
        src_mac: CLIENT_MAC,
        dst_mac: LB_EXT_MAC,
        src: CLIENT,
        dst: VIP,
        ttl: 64,
        sport: 40000,
        dport: SYN_PROXY_PORT,
        seq: 1000,
        ack: 0,
        flags: SYN,
        window: 64240,
        options: LINUX_SYN_OPTIONS.to_vec(),
        payload: Vec::new(),
    }
    .bytes();
    let mut rig = Rig::new(1 << 16)?;
    let sent_before = rig.counter(counters::SYNPROXY_SYNACK_SENT)?;
    let (m, d) = deltas(&mut rig, |rig| {
        rig.measure(
            Target::Balancer,
            &syn,
            Some((params.repeat, GENERATED_SRC_BASE)),
            params.repeat,
            params.runs,
        )
    })?;
    let sent = rig.counter(counters::SYNPROXY_SYNACK_SENT)? - sent_before;
    let total = u64::from(params.repeat) * params.runs as u64;
    ensure!(
        m.verdict == XDP_TX || m.verdict == XDP_REDIRECT,
        "{name}: {}",
        verdict_name(m.verdict)
    );
    ensure!(
        sent == total && d[1] == 0 && rig.harness.flow_count() == 0,
        "{name}: synproxy_synack_sent +{sent}, new_flows +{} for {total} repeats",
        d[1]
    );
    checksums_valid(&m.last_out).map_err(|e| anyhow!("{name}: last output: {e}"))?;
    Ok(path(
        name,
        &m,
        wrapper_ns,
        floor_ns,
        format!(
            "{}; synproxy_synack_sent +{sent} = repeats, no flow entry",
            verdict_name(m.verdict)
        ),
    ))
}

fn scale(params: &KernelParams, wrapper_ns: f64) -> Result<Vec<ScalePoint>> {
    let mut points = Vec::new();
    for &flows in &params.scale_flows {
        // Table capacity with headroom, so the LRU never evicts the flows we measure.
        let capacity = (flows + flows / 4).max(4096);
        let mut rig = Rig::new(capacity)?;
        let fill_start = Instant::now();
        let backend = backend_ip(0);
        // Steady state: every entry already holds its next hop (as after its first
        // hit) and a last-seen the measurement never refreshes, so each repeat is a
        // pure hit (the once-a-second refresh is the first-packet-like exception).
        let int0 = sys::ifindex(INT_IF)?;
        for j in 0..flows {
            let src = GENERATED_SRC_BASE + j / lb_common::BENCH_PORTS_PER_ADDR;
            let port = (lb_common::BENCH_PORT_BASE + j % lb_common::BENCH_PORTS_PER_ADDR) as u16;
            let key = FlowKey::new(Ipv4Addr::from(src), port, VIP, 80, lb_common::IPPROTO_TCP);
            let mut entry = FlowEntry {
                service_id: 0,
                backend_id: 0,
                seq_delta: 0,
                ts_delta: 0,
                state: lb_common::FLOW_STATE_ESTABLISHED,
                direction: lb_common::FLOW_DIR_CLIENT_TO_SERVER,
                synproxy: 0,
                wscales: 0,
                proxy_isn: 0,
                created_ns: 0,
                last_seen_ns: u64::MAX / 2,
                tx_ifindex: int0,
                tx_dmac: backend_mac(0),
                tx_smac: LB_INT_MAC,
                ..FlowEntry::default()
            };
            entry.set_rewrite(
                SocketAddrV4::new(SNAT, (j % 60000 + 1024) as u16),
                SocketAddrV4::new(backend, 80),
            );
            rig.harness.set_flow(key, entry)?;
        }
        let fill_s = fill_start.elapsed().as_secs_f64();
        let packet = tcp_frame(
            CLIENT_MAC,
            LB_EXT_MAC,
            (CLIENT, 1),
            (VIP, 80),
            ACK,
            &[0x42; 64],
        );
        // Each repeat hits the next of the first `working_set` entries, so a run hits
        // each of them repeat / working_set times: cache and TLB misses included. The
        // same number of repeats on every row, enough for each run to repeat within a
        // few per cent. The largest table is measured a second time with the smallest
        // row's working set: what the table's size costs apart from the spread of the
        // entries a run touches (docs/bench/README.md, "Where the time goes").
        let mut working_sets = vec![flows];
        let smallest = params.scale_flows.first().copied().unwrap_or(flows);
        if params.scale_flows.last() == Some(&flows) && smallest < flows {
            working_sets.push(smallest);
        }
        for working_set in working_sets {
            let repeat = params.repeat;
            let (m, d) = deltas(&mut rig, |rig| {
                rig.measure(
                    Target::Balancer,
                    &packet,
                    Some((working_set, GENERATED_SRC_BASE)),
                    repeat,
                    params.runs,
                )
            })?;
            ensure!(
                m.verdict == XDP_REDIRECT,
                "scale {flows}: {}",
                verdict_name(m.verdict)
            );
            let total = u64::from(repeat) * params.runs as u64;
            ensure!(
                d[0] == total && d[1] == 0,
                "scale {flows}: flow_hits +{} new_flows +{}",
                d[0],
                d[1]
            );
            let bytes = rig.harness.flow_table_bytes()?;
            points.push(ScalePoint {
                flows,
                working_set,
                capacity,
                raw_ns: median(&m.ns),
                net_ns: (median(&m.ns) - wrapper_ns).max(0.0),
                runs_ns: m.ns,
                map_bytes: bytes,
                bytes_per_entry: bytes as f64 / f64::from(capacity),
                fill_s,
            });
        }
    }
    Ok(points)
}

fn maglev(sizes: &[usize]) -> Result<Vec<MaglevTiming>> {
    let mut out = Vec::new();
    for &n in sizes {
        let mut text = String::from(
            "name = \"lbbench\"\n[interfaces]\nattach = [\"ext0\"]\n[limits]\nmax_flows = 1024\nmax_services = 2\nmax_backends = 2000\n\
             [[service]]\nname = \"web\"\nvip = \"198.18.1.10\"\nport = 80\nsnat_ip = \"198.19.1.1\"\n",
        );
        for i in 0..n {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"198.19.{}.{}\"\n",
                4 + i / 250,
                1 + i % 250
            ));
        }
        let config = parse_config(&text)?;
        let start = Instant::now();
        let ring = {
            let keys: Vec<String> = config.services[0]
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect();
            let input: Vec<lb_userspace::maglev::MaglevBackend<'_>> = keys
                .iter()
                .enumerate()
                .map(|(i, key)| lb_userspace::maglev::MaglevBackend {
                    key,
                    weight: 1,
                    id: i as u32,
                })
                .collect();
            let weights: Vec<u32> = input.iter().map(|b| b.weight).collect();
            lb_userspace::maglev::build_ring(&input, lb_userspace::maglev::ring_size_for(&weights))
        };
        let build_s = start.elapsed().as_secs_f64();
        ensure!(
            lb_userspace::maglev::RING_SIZES.contains(&(ring.len() as u32)),
            "ring size"
        );
        // The config's limits are the sizes this measurement always used (2 services,
        // 2000 backends, 1024 flows).
        let mut harness = Harness::load_unprogrammed(config.clone())?;
        let start = Instant::now();
        let summary = harness.apply(config)?;
        let apply_s = start.elapsed().as_secs_f64();
        out.push(MaglevTiming {
            backends: n,
            build_s,
            build_and_install_s: apply_s,
            ring_size: ring.len() as u32,
            slots_written: summary.ring_slots_written as u64,
        });
    }
    if out.is_empty() {
        bail!("no Maglev sizes");
    }
    Ok(out)
}
