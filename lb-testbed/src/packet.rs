//! Packets for the data-plane tests and the bench, built and parsed with etherparse so
//! checksums and offsets come from an independent implementation, never from the
//! program's own arithmetic.

use std::net::Ipv4Addr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket,
    TcpHeader, TcpOptionElement, TransportSlice,
};
use lb_common::FlowKey;

use crate::harness::{CLIENT_MAC, LB_EXT_MAC};

/// TCP flag bits as they sit in the header's flags byte.
pub const F_FIN: u8 = 0x01;
pub const F_SYN: u8 = 0x02;
pub const F_RST: u8 = 0x04;
pub const F_PSH: u8 = 0x08;
pub const F_ACK: u8 = 0x10;
pub const F_URG: u8 = 0x20;
pub const F_ECE: u8 = 0x40;
pub const F_CWR: u8 = 0x80;

/// A flow-table key in network byte order, as the program stores it.
pub fn flow_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(src, sport, dst, dport, proto)
}

/// A TCP/IPv4 frame as a client or server stack sends it: no TCP options, window
/// 64240, IP id 0 and DF set.
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub syn: bool,
    pub ack: Option<u32>,
    pub fin: bool,
    pub rst: bool,
    pub seq: u32,
}

impl Tcp {
    /// A client SYN (seq 1000, TTL 64) from the client's MAC to the LB's external one.
    pub fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Tcp {
        Tcp {
            src_mac: CLIENT_MAC,
            dst_mac: LB_EXT_MAC,
            src,
            dst,
            ttl: 64,
            sport,
            dport,
            syn: true,
            ack: None,
            fin: false,
            rst: false,
            seq: 1000,
        }
    }

    /// The frame, built as the [`Segment`] with these fields, window 64240 and no options.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        Segment {
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            src: self.src,
            dst: self.dst,
            ttl: self.ttl,
            sport: self.sport,
            dport: self.dport,
            seq: self.seq,
            ack: self.ack.unwrap_or(0),
            flags: flag(self.syn, F_SYN)
                | flag(self.ack.is_some(), F_ACK)
                | flag(self.fin, F_FIN)
                | flag(self.rst, F_RST),
            window: 64240,
            options: Vec::new(),
            payload: payload.to_vec(),
        }
        .bytes()
    }
}

/// A TCP/IPv4 frame with exact options, window and flags, DF set and IP id 0: the way
/// the balancer emits the segments it writes itself (SYN proxy, resets).
#[derive(Clone, Debug)]
pub struct Segment {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// `F_*` bits.
    pub flags: u8,
    pub window: u16,
    /// Raw option bytes, a multiple of 4 long.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Segment {
    pub fn bytes(&self) -> Vec<u8> {
        let mut ip = Ipv4Header::new(
            0,
            self.ttl,
            IpNumber::TCP,
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("IPv4 header");
        ip.dont_fragment = true;
        let mut tcp = TcpHeader::new(self.sport, self.dport, self.seq, self.window);
        tcp.acknowledgment_number = self.ack;
        tcp.fin = self.flags & F_FIN != 0;
        tcp.syn = self.flags & F_SYN != 0;
        tcp.rst = self.flags & F_RST != 0;
        tcp.psh = self.flags & F_PSH != 0;
        tcp.ack = self.flags & F_ACK != 0;
        tcp.set_options_raw(&self.options).expect("TCP options");
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
            .tcp_header(tcp)
            .write(&mut out, &self.payload)
            .expect("build a TCP segment");
        out
    }
}

#[allow(clippy::too_many_arguments)]
pub fn udp_packet(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("build a UDP frame");
    out
}

/// The TCP part of a TCP/IPv4 frame, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTcp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub seq: u32,
    pub ack: u32,
    /// The flags byte, `F_*` bits.
    pub flags: u8,
    pub options: Vec<u8>,
    /// The timestamps option's (TSval, TSecr), if present.
    pub timestamp: Option<(u32, u32)>,
    pub payload: Vec<u8>,
    /// The whole TCP header and payload as on the wire.
    pub bytes: Vec<u8>,
}

impl ParsedTcp {
    /// Parses `frame`; panics if it is not Ethernet + IPv4 + TCP.
    pub fn of(frame: &[u8]) -> ParsedTcp {
        let sliced = SlicedPacket::from_ethernet(frame).expect("parse the frame");
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4");
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            panic!("not TCP");
        };
        let flag = |set: bool, bit: u8| if set { bit } else { 0 };
        ParsedTcp {
            src: ip.header().source_addr(),
            dst: ip.header().destination_addr(),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            flags: flag(tcp.fin(), F_FIN)
                | flag(tcp.syn(), F_SYN)
                | flag(tcp.rst(), F_RST)
                | flag(tcp.psh(), F_PSH)
                | flag(tcp.ack(), F_ACK)
                | flag(tcp.urg(), F_URG)
                | flag(tcp.ece(), F_ECE)
                | flag(tcp.cwr(), F_CWR),
            options: tcp.options().to_vec(),
            timestamp: tcp.options_iterator().find_map(|option| match option {
                Ok(TcpOptionElement::Timestamp(tsval, tsecr)) => Some((tsval, tsecr)),
                _ => None,
            }),
            payload: tcp.payload().to_vec(),
            bytes: tcp.slice().to_vec(),
        }
    }
}

/// Independent check that the IPv4 and L4 checksums of `packet` are right.
pub fn assert_checksums_valid(packet: &[u8]) {
    if let Err(problem) = checksums_valid(packet) {
        panic!("{problem}");
    }
}

/// The IPv4 and TCP/UDP checksums of `packet` recomputed and compared; the first wrong
/// one, or why the packet could not be checked.
pub fn checksums_valid(packet: &[u8]) -> Result<(), String> {
    let sliced = SlicedPacket::from_ethernet(packet).map_err(|e| format!("parse output: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        return Err("not IPv4".into());
    };
    let header = ip.header().to_header();
    let expected = header.calc_header_checksum();
    if header.header_checksum != expected {
        return Err(format!(
            "IPv4 checksum {:#06x}, expected {expected:#06x}",
            header.header_checksum
        ));
    }
    let (name, got, expected) = match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => (
            "TCP",
            tcp.checksum(),
            tcp.to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .map_err(|e| e.to_string())?,
        ),
        Some(TransportSlice::Udp(udp)) => (
            "UDP",
            udp.checksum(),
            udp.to_header()
                .calc_checksum_ipv4(&header, udp.payload())
                .map_err(|e| e.to_string())?,
        ),
        _ => return Err("no TCP/UDP".into()),
    };
    if got != expected {
        return Err(format!(
            "{name} checksum {got:#06x}, expected {expected:#06x}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segment builder's bytes, checked by hand once: DF, id 0, the options and
    /// the flags land where a reader of the wire format expects them.
    #[test]
    fn segment_layout_and_round_trip() {
        let seg = Segment {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 1, 10),
            ttl: 64,
            sport: 40000,
            dport: 443,
            seq: 0x0102_0304,
            ack: 0x0a0b_0c0d,
            flags: F_SYN | F_ACK,
            window: 65535,
            options: vec![2, 4, 5, 0xb4, 1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9],
            payload: b"xy".to_vec(),
        };
        let bytes = seg.bytes();
        assert_eq!(bytes.len(), 14 + 20 + 36 + 2);
        assert_eq!(&bytes[12..14], &[0x08, 0x00]);
        assert_eq!(&bytes[18..22], &[0, 0, 0x40, 0], "IP id 0, DF");
        assert_eq!(bytes[46] >> 4, 9, "data offset with four option words");
        assert_eq!(bytes[47], F_SYN | F_ACK);
        assert_checksums_valid(&bytes);
        let parsed = ParsedTcp::of(&bytes);
        assert_eq!(parsed.seq, seg.seq);
        assert_eq!(parsed.ack, seg.ack);
        assert_eq!(parsed.flags, seg.flags);
        assert_eq!(parsed.options, seg.options);
        assert_eq!(parsed.timestamp, Some((7, 9)));
        assert_eq!(parsed.payload, seg.payload);
        assert_eq!(parsed.bytes, bytes[34..]);
    }
}
