//! Conversions between the controller's std types (host byte order) and the map types'
//! wire form (addresses and ports in network byte order). The controller builds and
//! reads map keys and values only through these, so no byte swap lives anywhere else.

use core::net::{Ipv4Addr, SocketAddrV4};

use crate::{Backend, EligibilityKey, FlowEntry, FlowKey, ServiceKey, SessionKey};

/// An address as the maps hold it: network byte order in a u32.
pub fn addr_to_wire(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// An address the maps hold, back in std form.
pub fn addr_from_wire(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// A port as the maps hold it: network byte order.
pub fn port_to_wire(port: u16) -> u16 {
    port.to_be()
}

/// A port the maps hold, in host byte order.
pub fn port_from_wire(raw: u16) -> u16 {
    u16::from_be(raw)
}

fn endpoint(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr_from_wire(addr), port_from_wire(port))
}

impl ServiceKey {
    pub fn new(vip: Ipv4Addr, port: u16, proto: u8) -> ServiceKey {
        ServiceKey {
            vip: addr_to_wire(vip),
            port: port_to_wire(port),
            proto,
            _pad: 0,
        }
    }

    /// The (VIP, port) a client addresses.
    pub fn vip(&self) -> SocketAddrV4 {
        endpoint(self.vip, self.port)
    }
}

impl Backend {
    pub fn new(addr: Ipv4Addr, port: u16, state: u8) -> Backend {
        Backend {
            ip: addr_to_wire(addr),
            port: port_to_wire(port),
            state,
            _pad: 0,
        }
    }

    /// Where packets go; `None` for an unused slot of the BACKENDS array.
    pub fn address(&self) -> Option<SocketAddrV4> {
        (self.ip != 0).then(|| endpoint(self.ip, self.port))
    }
}

/// ELIGIBILITY's prefix length for a client prefix of `client_len` bits: the service id
/// is matched in full first.
pub const fn eligibility_prefix_len(client_len: u8) -> u32 {
    32 + client_len as u32
}

/// The client prefix length of an ELIGIBILITY prefix length.
pub const fn eligibility_client_len(prefix_len: u32) -> u8 {
    prefix_len.saturating_sub(32) as u8
}

impl EligibilityKey {
    pub fn new(service_id: u32, client: Ipv4Addr) -> EligibilityKey {
        EligibilityKey {
            service_id_be: service_id.to_be(),
            addr: addr_to_wire(client),
        }
    }

    pub fn service_id(&self) -> u32 {
        u32::from_be(self.service_id_be)
    }

    pub fn client(&self) -> Ipv4Addr {
        addr_from_wire(self.addr)
    }
}

impl SessionKey {
    pub fn new(service_id: u32, client: Ipv4Addr) -> SessionKey {
        SessionKey {
            service_id,
            client_ip: addr_to_wire(client),
        }
    }

    pub fn client(&self) -> Ipv4Addr {
        addr_from_wire(self.client_ip)
    }
}

impl FlowKey {
    pub fn new(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src_ip: addr_to_wire(src),
            dst_ip: addr_to_wire(dst),
            src_port: port_to_wire(src_port),
            dst_port: port_to_wire(dst_port),
            proto,
            _pad: [0; 3],
        }
    }

    pub fn source(&self) -> SocketAddrV4 {
        endpoint(self.src_ip, self.src_port)
    }

    pub fn destination(&self) -> SocketAddrV4 {
        endpoint(self.dst_ip, self.dst_port)
    }
}

impl FlowEntry {
    /// Sets the rewrite: the source and destination the packet leaves with.
    pub fn set_rewrite(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        self.new_src_ip = addr_to_wire(*src.ip());
        self.new_src_port = port_to_wire(src.port());
        self.new_dst_ip = addr_to_wire(*dst.ip());
        self.new_dst_port = port_to_wire(dst.port());
    }

    /// Source the packet leaves with.
    pub fn new_source(&self) -> SocketAddrV4 {
        endpoint(self.new_src_ip, self.new_src_port)
    }

    /// Destination the packet leaves with.
    pub fn new_destination(&self) -> SocketAddrV4 {
        endpoint(self.new_dst_ip, self.new_dst_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_network_byte_order_and_read_back() {
        let vip = Ipv4Addr::new(198, 18, 1, 10);
        let key = ServiceKey::new(vip, 80, crate::IPPROTO_TCP);
        assert_eq!(key.vip.to_ne_bytes(), [198, 18, 1, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.vip(), SocketAddrV4::new(vip, 80));

        let client = Ipv4Addr::new(198, 18, 0, 2);
        let flow = FlowKey::new(client, 40000, vip, 80, crate::IPPROTO_TCP);
        assert_eq!(flow.source(), SocketAddrV4::new(client, 40000));
        assert_eq!(flow.destination(), SocketAddrV4::new(vip, 80));

        let eligibility = EligibilityKey::new(3, client);
        assert_eq!(eligibility.service_id_be.to_ne_bytes(), [0, 0, 0, 3]);
        assert_eq!(
            (eligibility.service_id(), eligibility.client()),
            (3, client)
        );
        assert_eq!(eligibility_client_len(eligibility_prefix_len(24)), 24);

        assert_eq!(SessionKey::new(1, client).client(), client);
        assert_eq!(Backend::default().address(), None);
        let backend = Backend::new(client, 8080, crate::BACKEND_STATE_ACTIVE);
        assert_eq!(backend.address(), Some(SocketAddrV4::new(client, 8080)));
    }
}
