//! Header layouts and bounds-checked access to the packet.
//!
//! Every access goes through `ptr_at`, whose explicit comparison with `data_end` is what
//! the verifier needs to see before the program may touch the bytes.

use aya_ebpf::programs::XdpContext;

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
pub const TCP_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
/// Offset of the L4 header: IPv4 options are refused for balancer traffic, so it is fixed.
pub const L4_OFFSET: usize = ETH_HDR_LEN + IPV4_HDR_LEN;

/// EtherType IPv4 as it sits in memory (network byte order read as a native u16).
pub const ETH_P_IP_WIRE: u16 = 0x0800u16.to_be();
/// EtherTypes of a VLAN tag (802.1Q, 802.1ad) as they sit in memory.
pub const ETH_P_8021Q_WIRE: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD_WIRE: u16 = 0x88a8u16.to_be();

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4Hdr {
    /// Either "more fragments" or a non-zero fragment offset (DF is fine).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag_off & 0x3fffu16.to_be() != 0
    }
}

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset in the high nibble.
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

pub use lb_common::tcp_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

/// Pointer to a `T` at `offset` bytes into the packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
