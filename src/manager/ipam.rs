//! Address arithmetic for overlay networks, with no I/O: subnets (given, or carved from
//! the cluster's default pool), the addresses of tasks and service VIPs, and VXLAN
//! network identifiers. It lives with the allocator (the manager may not depend on the
//! node-side `shoal-net` crate); the allocator rebuilds each pool from the store, so
//! what is in use is always what the store says.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// VXLAN network identifiers handed out to overlays (below 4097 is left alone, as
/// Swarm does; 2^24 - 1 is the largest VNI).
pub const VNI_FIRST: u32 = 4097;
pub const VNI_LAST: u32 = (1 << 24) - 1;

/// Swarm's defaults: overlays come from 10.0.0.0/8 in /24s.
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_SUBNET_SIZE: u8 = 24;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    #[error("{0}")]
    Invalid(String),
    /// A network's range or gateway (`field`) that does not fit its subnet.
    #[error("{why}")]
    Field { field: &'static str, why: String },
    #[error("no address left in {range} ({usable} usable addresses, all in use)")]
    Exhausted { range: Subnet, usable: u64 },
    #[error("no free /{size} subnet left in the default address pool {pools}")]
    PoolExhausted { pools: String, size: u8 },
    #[error("no VXLAN network identifier left")]
    VniExhausted,
}

/// An IPv4 subnet, `a.b.c.d/n` with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Subnet, IpamError> {
        if prefix > 32 {
            return Err(IpamError::Invalid(format!(
                "{base}/{prefix}: the prefix length is at most 32"
            )));
        }
        let s = Subnet {
            base: u32::from(base),
            prefix,
        };
        if s.base & !s.mask() != 0 {
            let fixed = Ipv4Addr::from(s.base & s.mask());
            return Err(IpamError::Invalid(format!(
                "{base}/{prefix} has host bits set: did you mean {fixed}/{prefix}?"
            )));
        }
        Ok(s)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    fn last(&self) -> u32 {
        self.base | !self.mask()
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == self.base
    }

    /// Whether `o` lies wholly inside this subnet.
    pub fn covers(&self, o: &Subnet) -> bool {
        o.prefix >= self.prefix && self.contains(o.network())
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        self.covers(o) || o.covers(self)
    }

    /// The addresses tasks may get: all but the network and broadcast addresses (a /31
    /// or /32 has none to spare and is refused for networks).
    fn usable(&self) -> (u32, u32) {
        (self.base + 1, self.last() - 1)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Subnet, IpamError> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            IpamError::Invalid(format!("{s:?} is not a subnet: write it as a.b.c.d/n"))
        })?;
        if a.contains(':') {
            return Err(IpamError::Invalid(format!(
                "{s}: IPv6 networks are not supported yet (IPv4 only)"
            )));
        }
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| IpamError::Invalid(format!("{s:?}: {a:?} is not an IPv4 address")))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| IpamError::Invalid(format!("{s:?}: {p:?} is not a prefix length")))?;
        Subnet::new(addr, prefix)
    }
}

/// Ranges no overlay may use, with why: what the kernel treats as special, and the
/// range shoal's own uplinks (network namespace to host) are carved from.
const RESERVED: [(&str, &str); 6] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, broadcast included)"),
    (
        shoal_net::overlay::UPLINK_RANGE,
        "shoal's own uplinks (198.18.0.0/15)",
    ),
];

/// Why `s` cannot be an overlay's subnet or pool, if it cannot.
pub fn reserved(s: &Subnet) -> Option<String> {
    RESERVED.iter().find_map(|(r, why)| {
        let r: Subnet = r.parse().ok()?;
        r.overlaps(s).then(|| format!("{s} overlaps {why}"))
    })
}

/// An IPv4 address, or why `s` is none.
pub fn parse_addr(s: &str) -> Result<Ipv4Addr, String> {
    if s.contains(':') {
        return Err(format!("{s}: IPv6 is not supported yet (IPv4 only)"));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

/// One network's addresses: its subnet, the range tasks and VIPs get addresses from, its
/// gateway, and what is in use.
#[derive(Clone, Debug)]
pub struct Pool {
    pub subnet: Subnet,
    pub range: Subnet,
    pub gateway: Ipv4Addr,
    used: BTreeSet<u32>,
}

impl Pool {
    /// Checks a network's addressing as `network create` gives it: the range and the
    /// gateway must be inside the subnet; the gateway defaults to the subnet's first
    /// address.
    pub fn new(subnet: &str, range: &str, gateway: &str) -> Result<Pool, IpamError> {
        let subnet: Subnet = subnet.parse()?;
        if subnet.prefix > 30 {
            return Err(IpamError::Invalid(format!(
                "subnet {subnet} is too small: a network needs at least a /30"
            )));
        }
        let range = if range.is_empty() {
            subnet
        } else {
            let r: Subnet = range.parse().map_err(|e: IpamError| IpamError::Field {
                field: "range",
                why: e.to_string(),
            })?;
            if !subnet.covers(&r) {
                return Err(IpamError::Field {
                    field: "range",
                    why: format!("{r} is not inside the subnet {subnet}"),
                });
            }
            r
        };
        let gateway = if gateway.is_empty() {
            Ipv4Addr::from(subnet.base + 1)
        } else {
            let g = parse_addr(gateway).map_err(|why| IpamError::Field {
                field: "gateway",
                why,
            })?;
            let (first, last) = subnet.usable();
            if !(first..=last).contains(&u32::from(g)) {
                return Err(IpamError::Field {
                    field: "gateway",
                    why: format!("{g} is not a usable address of the subnet {subnet}"),
                });
            }
            g
        };
        let mut used = BTreeSet::new();
        used.insert(u32::from(gateway));
        Ok(Pool {
            subnet,
            range,
            gateway,
            used,
        })
    }

    /// Marks an address (from the store) as in use. False if it is not this network's
    /// or was already taken (the caller then gives that holder a new one).
    pub fn take(&mut self, a: Ipv4Addr) -> bool {
        let (first, last) = self.subnet.usable();
        let n = u32::from(a);
        (first..=last).contains(&n) && self.used.insert(n)
    }

    /// Gives back an address taken in this pass (the gateway stays taken).
    pub fn release(&mut self, a: Ipv4Addr) {
        if a != self.gateway {
            self.used.remove(&u32::from(a));
        }
    }

    /// A free address of the range: the first after the highest in use, wrapping, so that
    /// an address just given back is not handed out again at once (a stale entry
    /// somewhere then points at nobody rather than at somebody else).
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let (sf, sl) = self.subnet.usable();
        let first = self.range.base.max(sf);
        let last = self.range.last().min(sl);
        let start = self
            .used
            .range(first..=last)
            .next_back()
            .map_or(first, |h| if *h >= last { first } else { h + 1 });
        let mut n = start;
        loop {
            if !self.used.contains(&n) {
                self.used.insert(n);
                return Ok(Ipv4Addr::from(n));
            }
            n = if n >= last { first } else { n + 1 };
            if n == start {
                return Err(IpamError::Exhausted {
                    range: self.range,
                    usable: u64::from(last - first + 1),
                });
            }
        }
    }

    /// `a.b.c.d/n`: an address with this network's prefix length, as attachments hold it.
    pub fn with_prefix(&self, a: Ipv4Addr) -> String {
        format!("{a}/{}", self.subnet.prefix)
    }
}

/// The first `/size` block of the pools that overlaps none of `taken`.
pub fn carve(pools: &[Subnet], size: u8, taken: &[Subnet]) -> Result<Subnet, IpamError> {
    for p in pools {
        if size < p.prefix || size > 30 {
            continue;
        }
        let step = 1u64 << (32 - size);
        let mut at = u64::from(p.base);
        let end = u64::from(p.last());
        while at <= end {
            let s = Subnet {
                base: at as u32,
                prefix: size,
            };
            match taken
                .iter()
                .filter(|t| t.overlaps(&s))
                .map(|t| t.last())
                .max()
            {
                // skip past whatever is in the way
                Some(l) => at = (u64::from(l) + 1).div_ceil(step) * step,
                None => return Ok(s),
            }
        }
    }
    Err(IpamError::PoolExhausted {
        pools: pools
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        size,
    })
}

/// The lowest VNI not in use.
pub fn next_vni(used: &BTreeSet<u32>) -> Result<u32, IpamError> {
    let mut want = VNI_FIRST;
    for v in used.range(VNI_FIRST..) {
        if *v != want {
            break;
        }
        want += 1;
    }
    if want > VNI_LAST {
        return Err(IpamError::VniExhausted);
    }
    Ok(want)
}

/// The address part of `a.b.c.d/n` (or of a bare address), as text.
pub fn host_part(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or("")
}

/// The address part of `a.b.c.d/n` (or of a bare address).
pub fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    host_part(cidr).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    /// What `release` promises, and where it stops: an address given back below the
    /// highest in use waits until the range wraps; the highest one given back is the
    /// first after what is left in use, so it comes back at once (the pool keeps no
    /// memory between passes: it is rebuilt from the store).
    #[test]
    fn released_addresses_come_back_after_those_above_the_highest_in_use() {
        let mut p = Pool::new("10.9.0.0/29", "", "").unwrap();
        let a = |n: u8| Ipv4Addr::new(10, 9, 0, n);
        // .1 is the gateway
        assert_eq!(
            (
                p.allocate().unwrap(),
                p.allocate().unwrap(),
                p.allocate().unwrap()
            ),
            (a(2), a(3), a(4))
        );
        p.release(a(3));
        assert_eq!(p.allocate().unwrap(), a(5), "not .3, given back just now");
        assert_eq!(p.allocate().unwrap(), a(6));
        assert_eq!(p.allocate().unwrap(), a(3), "after the range wrapped");
        assert!(p.allocate().is_err(), "the /29 is full");
        p.release(a(6));
        p.release(a(1));
        assert_eq!(
            p.allocate().unwrap(),
            a(6),
            "the highest, given back, is next"
        );
    }

    #[test]
    fn subnets_parse_and_bad_ones_say_why() {
        assert_eq!(sub("10.0.1.0/24").to_string(), "10.0.1.0/24");
        for (bad, why) in [
            ("10.0.1.5/24", "did you mean 10.0.1.0/24"),
            ("10.0.1.0", "a.b.c.d/n"),
            ("10.0.1.0/33", "at most 32"),
            ("fd00::/64", "IPv6"),
            ("10.0.x.0/24", "not an IPv4 address"),
        ] {
            let e = bad.parse::<Subnet>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(sub("10.0.0.0/8").covers(&sub("10.3.0.0/16")));
        assert!(!sub("10.3.0.0/16").covers(&sub("10.0.0.0/8")));
        assert!(sub("10.3.0.0/16").overlaps(&sub("10.0.0.0/8")));
        assert!(!sub("10.0.1.0/24").overlaps(&sub("10.0.2.0/24")));
    }

    #[test]
    fn pools_check_range_and_gateway() {
        let p = Pool::new("10.1.0.0/16", "", "").unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(10, 1, 0, 1));
        for (s, r, g, why) in [
            ("10.1.0.0/16", "10.2.0.0/24", "", "not inside the subnet"),
            ("10.1.0.0/16", "", "10.2.0.1", "not a usable address"),
            ("10.1.0.0/16", "", "10.1.255.255", "not a usable address"),
            ("10.1.0.0/31", "", "", "at least a /30"),
        ] {
            let e = Pool::new(s, r, g).unwrap_err().to_string();
            assert!(e.contains(why), "{s} {r} {g}: {e}");
        }
    }

    #[test]
    fn addresses_are_unique_move_on_and_run_out_with_a_reason() {
        let mut p = Pool::new("10.0.9.0/29", "", "").unwrap();
        // .1 is the gateway; .2 … .6 are for tasks; .0 and .7 never
        let got: Vec<Ipv4Addr> = (0..5).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 0, 9, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 0, 9, 6));
        let e = p.allocate().unwrap_err();
        assert!(e.to_string().contains("all in use"), "{e}");
        // an address given back is reused only once the others have had their turn
        let mut p = Pool::new("10.0.9.0/24", "", "").unwrap();
        assert!(p.take(Ipv4Addr::new(10, 0, 9, 5)));
        assert!(!p.take(Ipv4Addr::new(10, 0, 9, 5)), "taken twice");
        assert!(!p.take(Ipv4Addr::new(10, 0, 8, 5)), "not this network's");
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 9, 6));
    }

    #[test]
    fn large_networks_and_ranges_work() {
        // more than a /24 (moby/moby#30820)
        let mut p = Pool::new("10.8.0.0/16", "10.8.4.0/22", "").unwrap();
        let mut seen = BTreeSet::new();
        for _ in 0..1024 {
            let a = p.allocate().unwrap();
            assert!(p.range.contains(a));
            assert!(seen.insert(a), "{a} twice");
        }
        assert!(p.allocate().is_err());
        assert_eq!(p.with_prefix(Ipv4Addr::new(10, 8, 4, 2)), "10.8.4.2/16");
    }

    #[test]
    fn subnets_are_carved_around_those_taken() {
        let pool = [sub("10.0.0.0/8")];
        assert_eq!(carve(&pool, 24, &[]).unwrap(), sub("10.0.0.0/24"));
        let taken = [sub("10.0.0.0/24"), sub("10.0.1.0/24"), sub("10.0.2.0/23")];
        assert_eq!(carve(&pool, 24, &taken).unwrap(), sub("10.0.4.0/24"));
        // a user's big subnet in the way is skipped whole
        let taken = [sub("10.0.0.0/12")];
        assert_eq!(carve(&pool, 24, &taken).unwrap(), sub("10.16.0.0/24"));
        let e = carve(&[sub("10.0.0.0/23")], 24, &[sub("10.0.0.0/23")]).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/23"), "{e}");
    }

    #[test]
    fn vnis_fill_gaps() {
        let used: BTreeSet<u32> = [4097, 4098, 4100].into();
        assert_eq!(next_vni(&used).unwrap(), 4099);
        assert_eq!(next_vni(&BTreeSet::new()).unwrap(), VNI_FIRST);
    }
}
