//! A client's identity from its address (`identify_by: ip`): an IPv4 client is its
//! address, an IPv6 client its network of `ipv6_prefix_length` bits (64 by default).
//! One subscriber is handed a whole /64 and picks any address in it at will, so
//! counting addresses would give each IPv6 client 2^64 buckets.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The identity for the host's `source.address` (`1.2.3.4:5678`, `[2001:db8::1]:5678`
/// or a bare address): `ip:1.2.3.4`, `ip:2001:db8:1:2::/64`. An IPv4 address mapped
/// into IPv6 is the IPv4 client. Anything else is kept as the host wrote it, without a
/// port, so an odd address still identifies someone.
pub fn identity(address: &str, ipv6_prefix_length: u8) -> String {
    let ip = address
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse::<IpAddr>());
    match ip {
        Ok(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let bits = u32::from(ipv6_prefix_length.clamp(1, 128));
                let mask = u128::MAX << (128 - bits);
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                format!("ip:{net}/{bits}")
            }
        },
        Err(_) => {
            let bare = address.rsplit_once(':').map_or(address, |(ip, _)| ip);
            format!("ip:{bare}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        for (addr, bits, want) in [
            ("10.0.0.1:5000", 64, "ip:10.0.0.1"),
            ("10.0.0.1", 64, "ip:10.0.0.1"),
            ("[2001:db8:1:2::1]:5000", 64, "ip:2001:db8:1:2::/64"),
            ("[2001:db8:1:2:ffff:1:2:3]:5000", 64, "ip:2001:db8:1:2::/64"),
            ("[2001:db8:1:2:ffff:1:2:3]:5000", 56, "ip:2001:db8:1::/56"),
            ("[2001:db8::7]:5000", 128, "ip:2001:db8::7/128"),
            ("2001:db8::7", 48, "ip:2001:db8::/48"),
            ("[::ffff:10.0.0.1]:5000", 64, "ip:10.0.0.1"),
            ("unix:/tmp/socket", 64, "ip:unix"),
            ("", 64, "ip:"),
        ] {
            assert_eq!(identity(addr, bits), want, "{addr} /{bits}");
        }
    }

    proptest! {
        #[test]
        fn one_identity_per_network(a in any::<u128>(), b in any::<u128>(), bits in 1u8..=128, port in any::<u16>()) {
            let (a, b) = (Ipv6Addr::from(a), Ipv6Addr::from(b));
            prop_assume!(a.to_ipv4_mapped().is_none() && b.to_ipv4_mapped().is_none());
            let same_net = (u128::from(a) ^ u128::from(b)) >> (128 - u32::from(bits)) == 0;
            let of = |ip: Ipv6Addr| identity(&SocketAddr::from((ip, port)).to_string(), bits);
            prop_assert_eq!(of(a) == of(b), same_net);
        }

        #[test]
        fn any_text_is_an_identity(s in "\\PC{0,64}") {
            prop_assert!(identity(&s, 64).starts_with("ip:"));
        }
    }
}
