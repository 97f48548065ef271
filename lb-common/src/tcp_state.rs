//! The TCP state machine of a flow-table pair, shared so that the controller's tests
//! exercise exactly what the data path runs.
//!
//! `SYN_SEEN` (client SYN) → `SYN_ACK_SEEN` (server SYN+ACK: still half-open) →
//! `ESTABLISHED` (the client's ACK completes the handshake) → `HALF_CLOSED_CLIENT` or
//! `HALF_CLOSED_SERVER` (that side's FIN; the other side may still send) → `CLOSING` (the
//! other side's FIN, or an RST at any point). `CLOSING` is final.
//!
//! A DNAT connection's replies go straight to the client by the servers' routes, and
//! with peers they may reach another instance than its owner (docs/scale-out.md): the
//! owner then never sees the SYN+ACK, and the client's ACK that completes the
//! handshake arrives before a peer's report of it. For those connections
//! ([`next_with_bypass`]) the client's ACK after its SYN establishes the connection.

use crate::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_STATE_CLOSING, FLOW_STATE_ESTABLISHED,
    FLOW_STATE_HALF_CLOSED_CLIENT, FLOW_STATE_HALF_CLOSED_SERVER, FLOW_STATE_SYN_ACK_SEEN,
    FLOW_STATE_SYN_SEEN,
};

/// TCP header flag bits (the low byte of the flags field).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether a packet with `flags` on an entry in `state` may change the state at all: the
/// cheap test the fast path makes first, so that a plain segment of an established
/// connection costs no more than it did before state tracking grew.
#[inline(always)]
pub fn may_change(state: u8, flags: u8) -> bool {
    state != FLOW_STATE_ESTABLISHED || flags & (TCP_FIN | TCP_RST) != 0
}

/// The state a TCP segment with `flags`, seen on an entry of `direction`, moves its
/// connection to from `state`. Only TCP states reach it (the SYN proxy's opening state
/// and the controller's reset mark are handled before).
#[inline(always)]
pub fn next(state: u8, direction: u8, flags: u8) -> u8 {
    let from_client = direction == FLOW_DIR_CLIENT_TO_SERVER;
    if state == FLOW_STATE_CLOSING || flags & TCP_RST != 0 {
        return FLOW_STATE_CLOSING;
    }
    if flags & TCP_FIN != 0 {
        return match state {
            FLOW_STATE_ESTABLISHED if from_client => FLOW_STATE_HALF_CLOSED_CLIENT,
            FLOW_STATE_ESTABLISHED => FLOW_STATE_HALF_CLOSED_SERVER,
            // The client's FIN+ACK can be the ACK that completes the handshake.
            FLOW_STATE_SYN_ACK_SEEN if from_client && flags & TCP_ACK != 0 => {
                FLOW_STATE_HALF_CLOSED_CLIENT
            }
            // A retransmitted FIN of the side that already closed.
            FLOW_STATE_HALF_CLOSED_CLIENT if from_client => FLOW_STATE_HALF_CLOSED_CLIENT,
            FLOW_STATE_HALF_CLOSED_SERVER if !from_client => FLOW_STATE_HALF_CLOSED_SERVER,
            // The other side's FIN, or a FIN before the handshake completed (nothing to
            // keep open: a spoofed SYN then FIN gets the short timeout).
            _ => FLOW_STATE_CLOSING,
        };
    }
    match state {
        FLOW_STATE_SYN_SEEN if !from_client && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
            FLOW_STATE_SYN_ACK_SEEN
        }
        FLOW_STATE_SYN_ACK_SEEN if from_client && flags & (TCP_SYN | TCP_ACK) == TCP_ACK => {
            FLOW_STATE_ESTABLISHED
        }
        _ => state,
    }
}

/// [`next`] for an entry whose replies may bypass this balancer (a DNAT connection's
/// client → server entry): there, the client's plain ACK in `SYN_SEEN` completes the
/// handshake whose SYN+ACK went another way. The price: a spoofed SYN and ACK pair keeps
/// a DNAT entry for the established timeout rather than the SYN timeout.
#[inline(always)]
pub fn next_with_bypass(state: u8, direction: u8, flags: u8, replies_bypass: bool) -> u8 {
    if replies_bypass
        && state == FLOW_STATE_SYN_SEEN
        && direction == FLOW_DIR_CLIENT_TO_SERVER
        && flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_ACK
    {
        return FLOW_STATE_ESTABLISHED;
    }
    next(state, direction, flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FLOW_DIR_CLIENT_TO_SERVER as CLIENT;
    use crate::FLOW_DIR_SERVER_TO_CLIENT as SERVER;

    /// Runs segments through the machine from a client SYN, checking `may_change`
    /// never hides a change.
    fn run(segments: &[(u8, u8)]) -> u8 {
        let mut state = FLOW_STATE_SYN_SEEN;
        for &(direction, flags) in segments {
            let after = next(state, direction, flags);
            assert!(may_change(state, flags) || after == state);
            state = after;
        }
        state
    }

    const SYN_ACK: (u8, u8) = (SERVER, TCP_SYN | TCP_ACK);
    const ACK: (u8, u8) = (CLIENT, TCP_ACK);

    #[test]
    fn the_handshake_completes_on_the_clients_ack() {
        assert_eq!(run(&[(CLIENT, TCP_SYN)]), FLOW_STATE_SYN_SEEN);
        assert_eq!(run(&[SYN_ACK]), FLOW_STATE_SYN_ACK_SEEN);
        // Retransmitted SYN and SYN+ACK keep it half-open.
        assert_eq!(
            run(&[SYN_ACK, (CLIENT, TCP_SYN), SYN_ACK]),
            FLOW_STATE_SYN_ACK_SEEN
        );
        assert_eq!(run(&[SYN_ACK, ACK]), FLOW_STATE_ESTABLISHED);
        // A client ACK before any SYN+ACK does not establish.
        assert_eq!(run(&[ACK]), FLOW_STATE_SYN_SEEN);
        // Nor does a server ACK without SYN.
        assert_eq!(run(&[(SERVER, TCP_ACK)]), FLOW_STATE_SYN_SEEN);
        assert_eq!(run(&[SYN_ACK, (SERVER, TCP_ACK)]), FLOW_STATE_SYN_ACK_SEEN);
    }

    #[test]
    fn a_fin_half_closes_and_the_other_sides_fin_closes() {
        let fin = |side| (side, TCP_FIN | TCP_ACK);
        let data = |side| (side, TCP_ACK);
        assert_eq!(
            run(&[SYN_ACK, ACK, fin(CLIENT)]),
            FLOW_STATE_HALF_CLOSED_CLIENT
        );
        assert_eq!(
            run(&[
                SYN_ACK,
                ACK,
                fin(CLIENT),
                data(SERVER),
                fin(CLIENT),
                data(CLIENT)
            ]),
            FLOW_STATE_HALF_CLOSED_CLIENT
        );
        assert_eq!(
            run(&[SYN_ACK, ACK, fin(CLIENT), fin(SERVER)]),
            FLOW_STATE_CLOSING
        );
        assert_eq!(
            run(&[SYN_ACK, ACK, fin(SERVER), data(CLIENT), fin(SERVER)]),
            FLOW_STATE_HALF_CLOSED_SERVER
        );
        assert_eq!(
            run(&[SYN_ACK, ACK, fin(SERVER), fin(CLIENT), data(CLIENT)]),
            FLOW_STATE_CLOSING
        );
        // The client's FIN+ACK completing the handshake.
        assert_eq!(run(&[SYN_ACK, fin(CLIENT)]), FLOW_STATE_HALF_CLOSED_CLIENT);
        // A FIN before the handshake completed.
        assert_eq!(run(&[fin(CLIENT)]), FLOW_STATE_CLOSING);
        assert_eq!(run(&[SYN_ACK, fin(SERVER)]), FLOW_STATE_CLOSING);
    }

    #[test]
    fn any_rst_closes_and_closing_is_final() {
        let rst = |side| (side, TCP_RST);
        for prefix in [
            &[][..],
            &[SYN_ACK],
            &[SYN_ACK, ACK],
            &[SYN_ACK, ACK, (CLIENT, TCP_FIN)],
            &[SYN_ACK, ACK, (SERVER, TCP_FIN)],
        ] {
            for side in [CLIENT, SERVER] {
                let mut segments = prefix.to_vec();
                segments.push(rst(side));
                assert_eq!(run(&segments), FLOW_STATE_CLOSING, "{segments:?}");
                segments.extend([SYN_ACK, ACK, (CLIENT, TCP_SYN)]);
                assert_eq!(run(&segments), FLOW_STATE_CLOSING, "{segments:?}");
            }
        }
    }

    #[test]
    fn plain_established_segments_skip_the_machine() {
        assert!(!may_change(FLOW_STATE_ESTABLISHED, TCP_ACK));
        assert!(!may_change(FLOW_STATE_ESTABLISHED, TCP_ACK | TCP_SYN));
        assert!(may_change(FLOW_STATE_ESTABLISHED, TCP_ACK | TCP_FIN));
        assert!(may_change(FLOW_STATE_ESTABLISHED, TCP_RST));
    }

    #[test]
    fn a_client_ack_after_its_syn_establishes_only_where_replies_bypass() {
        assert_eq!(
            next_with_bypass(FLOW_STATE_SYN_SEEN, CLIENT, TCP_ACK, true),
            FLOW_STATE_ESTABLISHED
        );
        assert_eq!(
            next_with_bypass(FLOW_STATE_SYN_SEEN, CLIENT, TCP_ACK, false),
            FLOW_STATE_SYN_SEEN
        );
        // Only the client's plain ACK, only from SYN_SEEN.
        assert_eq!(
            next_with_bypass(FLOW_STATE_SYN_SEEN, SERVER, TCP_ACK, true),
            FLOW_STATE_SYN_SEEN
        );
        assert_eq!(
            next_with_bypass(FLOW_STATE_SYN_SEEN, CLIENT, TCP_ACK | TCP_RST, true),
            FLOW_STATE_CLOSING
        );
        assert_eq!(
            next_with_bypass(FLOW_STATE_SYN_ACK_SEEN, CLIENT, TCP_ACK, true),
            FLOW_STATE_ESTABLISHED
        );
        assert!(may_change(FLOW_STATE_SYN_SEEN, TCP_ACK));
    }
}
