//! TCP flow state: no flow without a SYN, established on the client's ACK, a FIN half
//! closes, the other side's FIN or any RST closes, a new SYN replaces a closed flow.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_without_syn_and_without_flow_is_dropped() {
    with_harness(|h| {
        let ack = Tcp {
            syn: false,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&ack.build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert!(h.flows().is_empty());
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fin_closes_and_a_new_syn_replaces_the_flow() {
    with_harness(|h| {
        let first_port = open_full_nat(h);
        let fin = Tcp {
            syn: false,
            fin: true,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&fin.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        let reverse = h
            .flow(&flow_key(SERVER1, 8080, SNAT, first_port, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING);
        assert_eq!(reverse.state, FLOW_STATE_CLOSING, "mirrored to the peer");

        // The client reuses its port for a new connection.
        open_full_nat(h);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_SYN_SEEN);
        assert_eq!(h.flows().len(), 2, "the old pair is gone");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn rst_from_the_server_closes_the_flow() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let rst = Tcp {
            syn: false,
            ack: Some(1001),
            rst: true,
            seq: 0,
            ..server1_segment(port)
        };
        let (verdict, _) = h.run(&rst.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING);
    });
}

/// The states of the forward (client's) and the reverse (server's) entry of the
/// client:40000 connection whose SNAT port is `port`.
fn pair_states(h: &Harness, port: u16) -> (u8, u8) {
    let forward = h
        .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
        .expect("forward entry");
    let reverse = h
        .flow(&flow_key(SERVER1, 8080, SNAT, port, IPPROTO_TCP))
        .expect("reverse entry");
    (forward.state, reverse.state)
}

/// Both entries of the connection are in `state` (a change is mirrored to the peer).
#[track_caller]
fn assert_pair_state(h: &Harness, port: u16, state: u8) {
    assert_eq!(
        pair_states(h, port),
        (state, state),
        "both entries of the pair"
    );
}

/// A client segment (seq 1001, ACK of the server's SYN at 5000) on the connection.
fn client_segment(fin: bool, rst: bool) -> Tcp {
    Tcp {
        syn: false,
        ack: Some(5001),
        seq: 1001,
        fin,
        rst,
        ..Tcp::syn(CLIENT, 40000, VIP, 80)
    }
}

/// A server segment (seq 5001, ACK of the client's SYN) on the connection.
fn server_segment(port: u16, fin: bool, rst: bool) -> Tcp {
    Tcp {
        syn: false,
        ack: Some(1001),
        seq: 5001,
        fin,
        rst,
        ..server1_segment(port)
    }
}

/// Runs `packet` through the program: it must be forwarded.
fn forwarded(h: &mut Harness, packet: &Tcp) {
    let (verdict, _) = h.run(&packet.build(b"data"));
    assert_eq!(verdict, XDP_REDIRECT);
}

/// Client SYN, server SYN-ACK, client ACK: returns the SNAT port.
fn establish(h: &mut Harness) -> u16 {
    let port = open_full_nat(h);
    let syn_ack = server1_syn_ack(port);
    let (verdict, _) = h.run(&syn_ack.build(&[]));
    assert_eq!(verdict, XDP_REDIRECT);
    let (verdict, _) = h.run(&client_segment(false, false).build(&[]));
    assert_eq!(verdict, XDP_REDIRECT);
    assert_pair_state(h, port, FLOW_STATE_ESTABLISHED);
    port
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_pair_is_half_open_until_the_clients_ack() {
    with_harness(|h| {
        let port = open_full_nat(h);
        assert_pair_state(h, port, FLOW_STATE_SYN_SEEN);
        let syn_ack = server1_syn_ack(port);
        forwarded(h, &syn_ack);
        // The server answered, the client did not yet: a spoofed SYN stops here and
        // keeps the short half-open timeout.
        assert_pair_state(h, port, FLOW_STATE_SYN_ACK_SEEN);
        // A retransmitted SYN and SYN-ACK change nothing.
        forwarded(h, &Tcp::syn(CLIENT, 40000, VIP, 80));
        forwarded(h, &syn_ack);
        assert_pair_state(h, port, FLOW_STATE_SYN_ACK_SEEN);
        // The client's ACK completes the handshake.
        forwarded(h, &client_segment(false, false));
        assert_pair_state(h, port, FLOW_STATE_ESTABLISHED);
        assert_eq!(h.flows().len(), 2);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_client_fin_half_closes_and_the_servers_fin_closes() {
    with_harness(|h| {
        let port = establish(h);
        forwarded(h, &client_segment(true, false));
        assert_pair_state(h, port, FLOW_STATE_HALF_CLOSED_CLIENT);
        // The server keeps sending; the client retransmits its FIN and ACKs the data.
        forwarded(h, &server_segment(port, false, false));
        forwarded(h, &client_segment(true, false));
        forwarded(h, &client_segment(false, false));
        assert_pair_state(h, port, FLOW_STATE_HALF_CLOSED_CLIENT);
        forwarded(h, &server_segment(port, true, false));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
        // The last ACK leaves it closing.
        forwarded(h, &client_segment(false, false));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_server_fin_half_closes_and_the_clients_fin_closes() {
    with_harness(|h| {
        let port = establish(h);
        forwarded(h, &server_segment(port, true, false));
        assert_pair_state(h, port, FLOW_STATE_HALF_CLOSED_SERVER);
        forwarded(h, &client_segment(false, false));
        forwarded(h, &server_segment(port, true, false));
        assert_pair_state(h, port, FLOW_STATE_HALF_CLOSED_SERVER);
        forwarded(h, &client_segment(true, false));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_rst_closes_from_any_state() {
    with_harness(|h| {
        // Established, RST from the client.
        let port = establish(h);
        forwarded(h, &client_segment(false, true));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
    });
    with_harness(|h| {
        // Half closed by the client, RST from the server.
        let port = establish(h);
        forwarded(h, &client_segment(true, false));
        forwarded(h, &server_segment(port, false, true));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
    });
    with_harness(|h| {
        // Half-open: the server refuses with RST after its SYN-ACK.
        let port = open_full_nat(h);
        let syn_ack = server1_syn_ack(port);
        forwarded(h, &syn_ack);
        forwarded(h, &server_segment(port, false, true));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
        // A late client ACK does not reopen it.
        forwarded(h, &client_segment(false, false));
        assert_pair_state(h, port, FLOW_STATE_CLOSING);
    });
}
