//! Addresses and networks as operators and threat feeds write them.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses `1.2.3.4`, `2001:db8::1` (single hosts, stored as /32 and /128) or a CIDR such as
/// `10.0.0.0/8`. A CIDR with host bits set is refused with the network it probably meant,
/// rather than silently truncated to a network the operator did not write.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty address".into());
    }
    if let Some((addr, len)) = text.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}`: `{addr}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits: u8 = match len.parse::<u8>() {
            Ok(bits) if bits <= max && len.bytes().all(|b| b.is_ascii_digit()) => bits,
            _ => {
                return Err(format!(
                    "`{text}`: prefix length `{len}` is not a number from 0 to {max}"
                ))
            }
        };
        let net = IpNet::new(addr, bits).map_err(|e| format!("`{text}`: {e}"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address or CIDR"))?;
        Ok(IpNet::from(addr))
    }
}

/// Whether `net` is a single host (/32 or /128), kept in the exact-match hash maps.
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// How a network is shown: hosts without their /32 or /128.
pub fn display(net: &IpNet) -> String {
    if is_host(net) {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_networks() {
        assert_eq!(
            parse_net("198.51.100.7").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            parse_net(" 2001:db8::1 ").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            display(&parse_net("198.51.100.7/32").unwrap()),
            "198.51.100.7"
        );
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.4/33",
            "1.2.3.4/-1",
            "1.2.3.4/+8",
            "1.2.3.4/",
            "/8",
            "::1/129",
            "abc",
            "1.2.3.4/8/8",
            "010.0.0.1",
            "1.2.3.4 5",
            "fe80::1%eth0",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?} accepted");
        }
        let err = parse_net("10.1.2.3/8").unwrap_err();
        assert!(
            err.contains("host bits") && err.contains("10.0.0.0/8"),
            "{err}"
        );
    }
}
