//! Address and port rewriting with incremental checksum updates.

use lb_common::FlowEntry;

use crate::{
    csum::CsumDelta,
    parse::{Ipv4Hdr, TcpHdr, UdpHdr},
};

/// The L4 header of a packet being rewritten; both were bounds-checked by the caller.
#[derive(Clone, Copy)]
pub enum L4 {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
}

/// Rewrites source and destination address and port to those of `entry`, fixing the
/// IPv4 header checksum and the TCP/UDP checksum (whose pseudo-header covers the
/// addresses).
///
/// # Safety
/// `ip` and the pointer in `l4` must point at bounds-checked headers of the packet.
#[inline(always)]
pub unsafe fn rewrite(ip: *mut Ipv4Hdr, l4: L4, entry: &FlowEntry) {
    // SAFETY: the caller guarantees the headers are inside the packet.
    unsafe {
        // The L4 pseudo-header sums the old addresses out, so read them first.
        let old_src = (*ip).saddr;
        let old_dst = (*ip).daddr;
        rewrite_ip(ip, entry);

        match l4 {
            L4::Tcp(tcp) => {
                let delta = CsumDelta::from_check((*tcp).check)
                    .replace32(old_src, entry.new_src_ip)
                    .replace32(old_dst, entry.new_dst_ip)
                    .replace16((*tcp).source, entry.new_src_port)
                    .replace16((*tcp).dest, entry.new_dst_port);
                (*tcp).source = entry.new_src_port;
                (*tcp).dest = entry.new_dst_port;
                (*tcp).check = delta.finish();
            }
            L4::Udp(udp) => {
                let old_check = (*udp).check;
                let delta = CsumDelta::from_check(old_check)
                    .replace32(old_src, entry.new_src_ip)
                    .replace32(old_dst, entry.new_dst_ip)
                    .replace16((*udp).source, entry.new_src_port)
                    .replace16((*udp).dest, entry.new_dst_port);
                (*udp).source = entry.new_src_port;
                (*udp).dest = entry.new_dst_port;
                // A zero UDP checksum means "none" and stays so; a computed zero is sent
                // as all ones (RFC 768).
                if old_check != 0 {
                    let check = delta.finish();
                    (*udp).check = if check == 0 { 0xffff } else { check };
                }
            }
        }
    }
}

/// Rewrites only the addresses, fixing the IPv4 header checksum: for a later fragment,
/// which has no L4 header (its datagram's L4 checksum was fixed in the first fragment).
///
/// # Safety
/// `ip` must point at a bounds-checked IPv4 header.
#[inline(always)]
pub unsafe fn rewrite_ip(ip: *mut Ipv4Hdr, entry: &FlowEntry) {
    // SAFETY: the caller guarantees the header is inside the packet.
    unsafe {
        let old_src = (*ip).saddr;
        let old_dst = (*ip).daddr;
        (*ip).saddr = entry.new_src_ip;
        (*ip).daddr = entry.new_dst_ip;
        (*ip).check = CsumDelta::from_check((*ip).check)
            .replace32(old_src, entry.new_src_ip)
            .replace32(old_dst, entry.new_dst_ip)
            .finish();
    }
}

/// Decrements the TTL and patches the header checksum.
///
/// # Safety
/// `ip` must point at a bounds-checked IPv4 header.
#[inline(always)]
pub unsafe fn decrement_ttl(ip: *mut Ipv4Hdr) {
    // SAFETY: the caller guarantees the header is inside the packet. TTL and protocol
    // form one 16-bit word of the checksum, read here as it sits in memory.
    unsafe {
        let word = (core::ptr::addr_of_mut!((*ip).ttl)).cast::<u16>();
        let old = word.read_unaligned();
        (*ip).ttl -= 1;
        let new = word.read_unaligned();
        (*ip).check = CsumDelta::from_check((*ip).check)
            .replace16(old, new)
            .finish();
    }
}
