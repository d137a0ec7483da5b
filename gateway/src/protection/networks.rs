//! Which network a block covers. An IPv4 address is one host, but every IPv6 customer holds at
//! least a /64 (2^64 addresses), so an IPv6 offender is its /64 (`blocking.ipv6_prefix_len`): an
//! attacker who rotates addresses inside it adds to one count and lands in one block. When blocks
//! pile up inside a wider network ([`Escalation`]), that network is blocked instead. The
//! allowlist wins over all of this: a block that would cover an allowlisted address is narrowed to
//! the parts of its network outside the allowlist.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use crate::config::{BlockingPolicy, Escalation};

/// Most prefixes one block is narrowed into: a /48 around one allowlisted /128 takes 80, so this
/// leaves room for a few allowlisted holes and bounds the map entries a single decision adds.
pub const MAX_PIECES: usize = 256;

/// The network whose offenses are counted together and which a block covers: the address for
/// IPv4, its `/ipv6_prefix_len` for IPv6.
pub fn offender_of(source: IpAddr, policy: &BlockingPolicy) -> IpNet {
    let source = source.to_canonical();
    match source {
        IpAddr::V4(_) => IpNet::from(source),
        IpAddr::V6(_) => IpNet::new(source, policy.ipv6_prefix_len)
            .map_or(IpNet::from(source), |net| net.trunc()),
    }
}

/// The wider network `target` escalates to, and how many blocks inside it it takes, when
/// escalation is on for its family and `target` is narrower.
pub fn wider_network(target: IpNet, policy: &BlockingPolicy) -> Option<(IpNet, Escalation)> {
    let escalation = match target {
        IpNet::V4(_) => policy.ipv4_escalation,
        IpNet::V6(_) => policy.ipv6_escalation,
    }?;
    if target.prefix_len() <= escalation.prefix_len {
        return None;
    }
    let wide = IpNet::new(target.addr(), escalation.prefix_len)
        .ok()?
        .trunc();
    Some((wide, escalation))
}

/// How many offenders' blocks `blocks` hold: the pieces of one block narrowed around the
/// allowlist count once, so one offender next to an allowlisted address does not escalate alone.
pub fn offenders_among(blocks: &[(IpNet, u64)], policy: &BlockingPolicy) -> usize {
    let offenders: BTreeSet<IpNet> = blocks
        .iter()
        .map(|(target, _)| {
            let offender_len = match target {
                IpNet::V4(_) => 32,
                IpNet::V6(_) => policy.ipv6_prefix_len,
            };
            if target.prefix_len() > offender_len {
                IpNet::new(target.addr(), offender_len).map_or(*target, |net| net.trunc())
            } else {
                *target
            }
        })
        .collect();
    offenders.len()
}

/// The largest prefixes inside `target` that overlap no allowlisted prefix: `[target]` when
/// nothing allowlisted is inside it, nothing when it lies inside the allowlist, and `None` when
/// more than [`MAX_PIECES`] would be needed.
pub fn outside_allowlist(target: IpNet, allow: &[IpNet]) -> Option<Vec<IpNet>> {
    let mut pieces = Vec::new();
    let mut pending = vec![target.trunc()];
    while let Some(net) = pending.pop() {
        if allow.iter().any(|allowed| allowed.contains(&net)) {
            continue;
        }
        if !allow.iter().any(|allowed| net.contains(allowed)) {
            pieces.push(net);
            if pieces.len() > MAX_PIECES {
                return None;
            }
            continue;
        }
        // An allowlisted prefix lies strictly inside `net`: keep both halves apart.
        let halves = net.subnets(net.prefix_len() + 1).ok()?;
        pending.extend(halves);
    }
    pieces.sort();
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn policy(toml: &str) -> BlockingPolicy {
        let toml = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1/\"\n{toml}\n[[users]]\nname = \"alice\"\n\
             key_sha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        let config = Config::from_toml(&toml).unwrap();
        config.validate(None, None).unwrap().serving.blocking
    }

    #[test]
    fn an_ipv6_offender_is_its_64_and_an_ipv4_offender_its_address() {
        let policy = policy("");
        let of = |ip: &str| offender_of(ip.parse().unwrap(), &policy);
        assert_eq!(of("fd00:7::2"), net("fd00:7::/64"));
        assert_eq!(of("fd00:7::ffff:3"), net("fd00:7::/64"));
        assert_eq!(of("192.0.2.7"), net("192.0.2.7/32"));
        assert_eq!(of("::ffff:192.0.2.7"), net("192.0.2.7/32"));
        let policy = super::tests::policy("[blocking]\nipv6_prefix_len = 56");
        assert_eq!(
            offender_of("fd00:7:0:12::1".parse().unwrap(), &policy),
            net("fd00:7::/56")
        );
    }

    #[test]
    fn escalation_is_on_for_ipv6_and_off_for_ipv4_by_default() {
        let policy = policy("");
        let (wide, escalation) = wider_network(net("fd00:7:0:5::/64"), &policy).unwrap();
        assert_eq!(wide, net("fd00:7::/48"));
        assert_eq!(escalation.blocks, 8);
        assert_eq!(wider_network(net("fd00:7::/48"), &policy), None);
        assert_eq!(wider_network(net("192.0.2.7/32"), &policy), None);

        let policy =
            super::tests::policy("[blocking.escalation]\nipv4_blocks = 3\nipv4_prefix_len = 24");
        let (wide, escalation) = wider_network(net("192.0.2.7/32"), &policy).unwrap();
        assert_eq!(wide, net("192.0.2.0/24"));
        assert_eq!(escalation.blocks, 3);
    }

    #[test]
    fn a_block_around_an_allowlisted_network_is_narrowed_to_the_rest() {
        assert_eq!(
            outside_allowlist(net("fd00:7::/48"), &[net("fd01::/16")]),
            Some(vec![net("fd00:7::/48")]),
            "nothing allowlisted inside"
        );
        assert_eq!(
            outside_allowlist(net("fd00:7::/64"), &[net("fd00::/16")]),
            Some(vec![]),
            "inside the allowlist"
        );
        let pieces = outside_allowlist(net("fd00:7::/48"), &[net("fd00:7:0:9::/64")]).unwrap();
        assert_eq!(pieces.len(), 16, "one sibling per bit from /49 to /64");
        assert!(
            pieces
                .iter()
                .all(|piece| !piece.contains(&net("fd00:7:0:9::/64")))
        );
        assert!(
            pieces
                .iter()
                .any(|piece| piece.contains(&net("fd00:7:0:8::/64")))
        );
        assert!(
            pieces
                .iter()
                .any(|piece| piece.contains(&net("fd00:7:0:ffff::/64")))
        );
        let covered: u128 = pieces
            .iter()
            .map(|piece| 1u128 << (64 - piece.prefix_len().min(64)))
            .sum();
        assert_eq!(covered, (1 << 16) - 1, "every /64 of the /48 but one");
        assert_eq!(
            outside_allowlist(
                net("10.0.0.0/8"),
                &[net("10.1.2.3/32"), net("10.200.0.0/16")]
            )
            .unwrap()
            .len(),
            23 + 7,
            "a /32 and a /16 in either half of the /8"
        );
        let many: Vec<IpNet> = (0..200u8)
            .map(|i| IpNet::from(IpAddr::from([10, 0, i, 0])))
            .collect();
        assert_eq!(
            outside_allowlist(net("10.0.0.0/16"), &many),
            None,
            "too many holes"
        );
    }
}
