//! `[xdp]` and `[blocking]`: how the gateway protects itself, in the kernel and in its feedback
//! loop.

use std::time::Duration;

use gateway_ebpf::{MAX_BURST, MAX_PORTS, MAX_RATE, XdpConfig};
use ipnet::IpNet;

use super::{
    ConfigError,
    file::{BlockingSection, Interfaces, XdpRateSection, XdpSection},
    invalid,
    settings::{BlockingPolicy, Escalation, XdpAttachment, XdpPolicy},
};

/// `[xdp]`: where the program attaches (a restart's business) and what it enforces (a reload's).
pub(super) fn xdp_settings(
    section: &XdpSection,
    listen_port: u16,
) -> Result<(XdpAttachment, XdpPolicy), ConfigError> {
    let interfaces = interfaces(section)?;
    let ports = if section.ports.is_empty() {
        vec![listen_port]
    } else {
        section.ports.clone()
    };
    if ports.len() > MAX_PORTS || ports.contains(&0) {
        return Err(invalid(
            "xdp.ports",
            format!("1 to {MAX_PORTS} ports, none of them 0"),
        ));
    }
    let allow = section
        .allow
        .iter()
        .enumerate()
        .map(|(index, text)| {
            parse_prefix(text).ok_or_else(|| {
                invalid(
                    format!("xdp.allow[{index}]"),
                    format!("{text:?} is not an address or CIDR prefix"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_rates(&section.rate)?;
    let pin_dir = (!section.pin_path.as_os_str().is_empty()).then(|| section.pin_path.clone());
    Ok((
        XdpAttachment {
            interfaces,
            mode: section.mode,
            pin_dir,
            log: section.log,
        },
        XdpPolicy {
            allow,
            program: program_config(section, &ports),
        },
    ))
}

/// The interfaces to attach to: none when XDP is off, at least one when it is on.
fn interfaces(section: &XdpSection) -> Result<Vec<String>, ConfigError> {
    let interfaces = match (&section.interface, section.enabled) {
        (_, false) | (None, true) => Vec::new(),
        (Some(Interfaces::One(interface)), true) => vec![interface.clone()],
        (Some(Interfaces::Many(interfaces)), true) => interfaces.clone(),
    };
    if section.enabled && (interfaces.is_empty() || interfaces.iter().any(String::is_empty)) {
        return Err(invalid(
            "xdp.interface",
            "required when xdp.enabled = true: a name (\"eth0\") or a list of names",
        ));
    }
    Ok(interfaces)
}

/// `[xdp.rate]` within what the program's fixed-point token buckets can hold.
fn check_rates(rate: &XdpRateSection) -> Result<(), ConfigError> {
    for (name, value, max) in [
        ("packets_per_sec", rate.packets_per_sec, MAX_RATE),
        ("syn_per_sec", rate.syn_per_sec, MAX_RATE),
        ("burst", rate.burst, MAX_BURST),
        ("syn_burst", rate.syn_burst, MAX_BURST),
    ] {
        if value > max {
            return Err(invalid(
                format!("xdp.rate.{name}"),
                format!("at most {max}"),
            ));
        }
    }
    for (name, rate_value, burst) in [
        ("burst", rate.packets_per_sec, rate.burst),
        ("syn_burst", rate.syn_per_sec, rate.syn_burst),
    ] {
        if rate_value > 0 && burst == 0 {
            return Err(invalid(
                format!("xdp.rate.{name}"),
                "must be at least 1 when its rate is set",
            ));
        }
    }
    if !(1..=128).contains(&rate.ipv6_prefix_len) {
        return Err(invalid(
            "xdp.rate.ipv6_prefix_len",
            "must be between 1 and 128",
        ));
    }
    Ok(())
}

/// What the program's CONFIG map gets (`ports` already checked to fit).
fn program_config(section: &XdpSection, ports: &[u16]) -> XdpConfig {
    let rate = &section.rate;
    let mut program = XdpConfig {
        flags: if section.dry_run {
            XdpConfig::FLAG_DRY_RUN
        } else {
            0
        },
        ipv6_prefix_len: rate.ipv6_prefix_len,
        packets_per_sec: rate.packets_per_sec,
        burst: rate.burst,
        syn_per_sec: rate.syn_per_sec,
        syn_burst: rate.syn_burst,
        new_sources_per_sec: rate.new_sources_per_sec,
        port_count: ports.len() as u32,
        ..XdpConfig::default()
    };
    program.ports[..ports.len()].copy_from_slice(ports);
    program
}

/// An address or a CIDR prefix (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
pub fn parse_prefix(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|net| net.trunc())
}

pub(super) fn blocking_policy(section: &BlockingSection) -> Result<BlockingPolicy, ConfigError> {
    for (name, value) in [
        ("auth_failures", section.auth_failures),
        ("rate_limited", section.rate_limited),
        ("malformed", section.malformed),
        ("packet_rate_events", section.packet_rate_events),
        ("refused_connections", section.refused_connections),
        ("forbidden_calls", section.forbidden_calls),
    ] {
        if value == 0 {
            return Err(invalid(format!("blocking.{name}"), "must be at least 1"));
        }
    }
    if section.window_secs == 0 {
        return Err(invalid("blocking.window_secs", "must be at least 1"));
    }
    if section.block_secs == 0 {
        return Err(invalid("blocking.block_secs", "must be at least 1"));
    }
    if section.max_block_secs < section.block_secs {
        return Err(invalid(
            "blocking.max_block_secs",
            "must not be less than block_secs",
        ));
    }
    if !(1..=128).contains(&section.ipv6_prefix_len) {
        return Err(invalid(
            "blocking.ipv6_prefix_len",
            "must be between 1 and 128",
        ));
    }
    let escalation = &section.escalation;
    let ipv4_escalation = escalation_level(
        "ipv4",
        escalation.ipv4_blocks,
        escalation.ipv4_prefix_len,
        32,
    )?;
    let ipv6_escalation = escalation_level(
        "ipv6",
        escalation.ipv6_blocks,
        escalation.ipv6_prefix_len,
        section.ipv6_prefix_len,
    )?;
    Ok(BlockingPolicy {
        enabled: section.enabled,
        auth_failures: section.auth_failures,
        rate_limited: section.rate_limited,
        malformed: section.malformed,
        packet_rate_events: section.packet_rate_events,
        refused_connections: section.refused_connections,
        forbidden_calls: section.forbidden_calls,
        window: Duration::from_secs(section.window_secs),
        block: Duration::from_secs(section.block_secs),
        max_block: Duration::from_secs(section.max_block_secs),
        ipv6_prefix_len: section.ipv6_prefix_len as u8,
        ipv4_escalation,
        ipv6_escalation,
    })
}

/// One family's `[blocking.escalation]`: off with 0 blocks; else a network wider than the blocks
/// it gathers (`narrowest`: the length of those blocks).
fn escalation_level(
    family: &str,
    blocks: u32,
    prefix_len: u32,
    narrowest: u32,
) -> Result<Option<Escalation>, ConfigError> {
    if blocks == 0 {
        return Ok(None);
    }
    if blocks < 2 {
        return Err(invalid(
            format!("blocking.escalation.{family}_blocks"),
            "must be 0 (off) or at least 2",
        ));
    }
    if !(1..narrowest).contains(&prefix_len) {
        return Err(invalid(
            format!("blocking.escalation.{family}_prefix_len"),
            format!(
                "must be between 1 and {} (wider than the blocks it gathers)",
                narrowest - 1
            ),
        ));
    }
    Ok(Some(Escalation {
        prefix_len: prefix_len as u8,
        blocks: blocks as usize,
    }))
}
