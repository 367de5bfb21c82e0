//! Networks and allow-lists: which source addresses a server answers.
//!
//! An [`AllowList`] is a fixed array of [`Ipv4Network`]s (no allocation
//! after it is built), checked per request by the retransmit server.

use std::io;
use std::net::Ipv4Addr;

/// Networks in an allow-list, at most.
pub const ALLOW_NETWORKS_MAX: usize = 32;

/// An IPv4 network: an address and a prefix length (`10.1.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Network {
    network: u32,
    prefix_len: u8,
}

/// Why a network does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkParseError(String);

impl std::fmt::Display for NetworkParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not an IPv4 network (ADDRESS/PREFIX, e.g. 10.1.0.0/16, or one address)",
            self.0
        )
    }
}

impl std::error::Error for NetworkParseError {}

impl Ipv4Network {
    /// `address/prefix_len`, host bits cleared.
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Self {
        assert!(prefix_len <= 32);
        Ipv4Network {
            network: address.to_bits() & Self::mask(prefix_len),
            prefix_len,
        }
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    /// `a.b.c.d/n`, or one address (`/32`).
    pub fn parse(text: &str) -> Result<Self, NetworkParseError> {
        let error = || NetworkParseError(text.to_string());
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, prefix)) => (address, prefix.parse::<u8>().map_err(|_| error())?),
            None => (text, 32),
        };
        let address: Ipv4Addr = address.parse().map_err(|_| error())?;
        if prefix_len > 32 {
            return Err(error());
        }
        Ok(Self::new(address, prefix_len))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        address.to_bits() & Self::mask(self.prefix_len) == self.network
    }
}

impl std::fmt::Display for Ipv4Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            Ipv4Addr::from_bits(self.network),
            self.prefix_len
        )
    }
}

/// The networks whose requests are answered: a fixed array, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowList {
    networks: [Ipv4Network; ALLOW_NETWORKS_MAX],
    len: usize,
}

impl AllowList {
    /// At most [`ALLOW_NETWORKS_MAX`] networks; at least one.
    pub fn new(networks: &[Ipv4Network]) -> Result<Self, String> {
        if networks.is_empty() || networks.len() > ALLOW_NETWORKS_MAX {
            return Err(format!(
                "must name 1 to {ALLOW_NETWORKS_MAX} networks (0.0.0.0/0 allows every address)"
            ));
        }
        let mut list = AllowList {
            networks: [Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 32); ALLOW_NETWORKS_MAX],
            len: networks.len(),
        };
        list.networks[..networks.len()].copy_from_slice(networks);
        Ok(list)
    }

    /// Whether `address` is inside one of the networks.
    pub fn allows(&self, address: Ipv4Addr) -> bool {
        self.networks()
            .iter()
            .any(|network| network.contains(address))
    }

    pub fn networks(&self) -> &[Ipv4Network] {
        &self.networks[..self.len]
    }

    /// The configured networks (`texts`), or by default loopback
    /// (`127.0.0.0/8`) and the stream's own subnet: the address and netmask
    /// of the local interface that holds `interface`, as the kernel reports
    /// them at start-up (`getifaddrs`). When no interface holds that address
    /// (or it is the wildcard), only loopback and that one address. An error
    /// names the entry that is wrong (`Some(index)`) or the list (`None`).
    pub fn from_texts(
        texts: Option<&[String]>,
        interface: Ipv4Addr,
    ) -> Result<Self, (Option<usize>, String)> {
        match texts {
            Some(texts) => {
                let mut networks = Vec::with_capacity(texts.len());
                for (index, text) in texts.iter().enumerate() {
                    networks.push(
                        Ipv4Network::parse(text)
                            .map_err(|error| (Some(index), error.to_string()))?,
                    );
                }
                AllowList::new(&networks).map_err(|reason| (None, reason))
            }
            None => {
                let loopback = Ipv4Network::new(Ipv4Addr::LOCALHOST, 8);
                let stream = if interface.is_unspecified() {
                    loopback
                } else {
                    interface_network(interface)
                        .ok()
                        .flatten()
                        .unwrap_or(Ipv4Network::new(interface, 32))
                };
                AllowList::new(&[loopback, stream]).map_err(|reason| (None, reason))
            }
        }
    }
}

/// The network of the local interface whose IPv4 address is `address`
/// (address and netmask from `getifaddrs`), `None` when no interface has it.
pub fn interface_network(address: Ipv4Addr) -> io::Result<Option<Ipv4Network>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned; it lives
        // until freeifaddrs.
        let entry = unsafe { &*at };
        at = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: a non-null sockaddr from getifaddrs.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET entries hold sockaddr_in address and netmask.
        let (ip, mask) = unsafe {
            (
                *(entry.ifa_addr as *const libc::sockaddr_in),
                *(entry.ifa_netmask as *const libc::sockaddr_in),
            )
        };
        if Ipv4Addr::from_bits(u32::from_be(ip.sin_addr.s_addr)) == address {
            let prefix_len = u32::from_be(mask.sin_addr.s_addr).leading_ones() as u8;
            found = Some(Ipv4Network::new(address, prefix_len));
            break;
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_the_allow_list_checks_sources() {
        let net = Ipv4Network::parse("10.1.2.3/16").unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert!(net.contains(Ipv4Addr::new(10, 1, 255, 1)));
        assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert_eq!(
            Ipv4Network::parse("127.0.0.2").unwrap().to_string(),
            "127.0.0.2/32"
        );
        assert!(Ipv4Network::parse("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(8, 8, 8, 8)));
        for bad in ["10.1.0.0/33", "10.1.0/8", "", "x/8", "10.0.0.0/"] {
            assert!(Ipv4Network::parse(bad).is_err(), "{bad:?}");
        }
        let list = AllowList::new(&[
            Ipv4Network::parse("127.0.0.1").unwrap(),
            Ipv4Network::parse("127.1.0.0/16").unwrap(),
        ])
        .unwrap();
        assert!(list.allows(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(list.allows(Ipv4Addr::new(127, 1, 3, 4)));
        assert!(!list.allows(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(AllowList::new(&[]).is_err());
        // Loopback's own subnet, as the kernel reports it.
        assert_eq!(
            interface_network(Ipv4Addr::LOCALHOST).unwrap(),
            Some(Ipv4Network::new(Ipv4Addr::LOCALHOST, 8))
        );
    }
}
