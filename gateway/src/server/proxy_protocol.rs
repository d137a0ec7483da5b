//! The PROXY protocol (HAProxy's, v1 text and v2 binary), for nodes behind an L4 load balancer.
//!
//! Behind a balancer every TCP connection comes from the balancer, so audit lines, limits,
//! offenses and blocks would all land on its address. With `proxy_protocol = true` the balancer
//! starts each connection with a header that names the client, and that client address is the one
//! the gateway audits, limits, counts offenses against and refuses at accept. Only the balancers
//! of `proxy_protocol_from` may say who the client is: a connection from any other address is
//! refused before anything is read (and counts as malformed against that address, which is real),
//! and a balancer's connection without a valid header is refused.
//!
//! The header is read to its last byte and no further, so what follows it (the client's TLS
//! handshake or HTTP request, often in the same segment) stays in the socket for the layers above,
//! with no buffer to carry along. Parsing is the `ppp` crate's.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use ppp::{
    HeaderResult, PartialResult,
    v1::Addresses as V1Addresses,
    v2::{Addresses as V2Addresses, Command},
};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// The longest v2 header accepted: 16 bytes, the addresses (at most 216) and the balancer's TLVs
/// (AWS and GCP send under 100 bytes).
const MAX_HEADER_BYTES: usize = 1024;
/// A balancer sends the header as soon as it connects: a connection without one this long is
/// closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may send PROXY protocol headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    balancers: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {HEADER_TIMEOUT:?}")]
    Timeout,
    #[error("the connection closed before a whole PROXY protocol header arrived")]
    Closed,
    #[error("not a valid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyProtocol {
    pub fn new(balancers: Vec<IpNet>) -> Self {
        Self { balancers }
    }

    /// Whether `source` is one of the balancers.
    pub fn trusts(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.balancers.iter().any(|net| net.contains(&source))
    }

    /// Reads and consumes the header on a balancer's connection `peer`; returns the client's
    /// address, or `peer` itself for the balancer's own connections (v2 `LOCAL`, v1 `UNKNOWN`:
    /// health checks).
    pub async fn read_header(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, HeaderError> {
        tokio::time::timeout(HEADER_TIMEOUT, read_header(stream))
            .await
            .map_err(|_| HeaderError::Timeout)?
            .map(|client| client.unwrap_or(peer))
    }
}

/// The v2 signature: the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The shortest header of either version: `PROXY UNKNOWN\r\n` (a v2 header is 16 bytes or more).
const SHORTEST_HEADER: usize = 15;
/// The longest v1 header (the protocol's own limit).
const V1_MAX: usize = 107;

/// Reads exactly the header's bytes, whatever the segments it arrives in: a v2 header says its
/// length in its first 16 bytes; a v1 header ends at its first line feed, which is looked for in
/// what has arrived (`peek`) so that the rest stays unread.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut header = Vec::with_capacity(V1_MAX);
    header.resize(SHORTEST_HEADER, 0);
    read_exact(stream, &mut header).await?;
    if header.starts_with(V2_SIGNATURE) {
        header.resize(16, 0);
        read_exact(stream, &mut header[SHORTEST_HEADER..]).await?;
        let length = 16 + usize::from(u16::from_be_bytes([header[14], header[15]]));
        if length > MAX_HEADER_BYTES {
            return Err(HeaderError::TooLong);
        }
        header.resize(length, 0);
        read_exact(stream, &mut header[16..]).await?;
    } else if header.starts_with(b"PROXY ") {
        let mut arrived = [0u8; V1_MAX];
        while !header.contains(&b'\n') {
            let room = V1_MAX - header.len();
            if room == 0 {
                return Err(HeaderError::TooLong);
            }
            let seen = stream.peek(&mut arrived[..room]).await?;
            if seen == 0 {
                return Err(HeaderError::Closed);
            }
            let take = arrived[..seen]
                .iter()
                .position(|&byte| byte == b'\n')
                .map_or(seen, |end| end + 1);
            let start = header.len();
            header.resize(start + take, 0);
            read_exact(stream, &mut header[start..]).await?;
        }
    } else {
        return Err(HeaderError::Invalid(
            "neither a v1 nor a v2 PROXY protocol header".into(),
        ));
    }
    client_of(HeaderResult::parse(&header))
}

async fn read_exact(stream: &mut TcpStream, buffer: &mut [u8]) -> Result<(), HeaderError> {
    match stream.read_exact(buffer).await {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(HeaderError::Closed),
        Err(err) => Err(err.into()),
    }
}

/// The client's address a whole header carries, if it carries one.
fn client_of(header: HeaderResult<'_>) -> Result<Option<SocketAddr>, HeaderError> {
    if header.is_incomplete() {
        return Err(HeaderError::Invalid("incomplete".into()));
    }
    match header {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                V1Addresses::Tcp4(ip) => Some((ip.source_address, ip.source_port).into()),
                V1Addresses::Tcp6(ip) => Some((ip.source_address, ip.source_port).into()),
                V1Addresses::Unknown => None,
            };
            Ok(client)
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (Command::Proxy, V2Addresses::IPv4(ip)) => {
                    Some((ip.source_address, ip.source_port).into())
                }
                (Command::Proxy, V2Addresses::IPv6(ip)) => {
                    Some((ip.source_address, ip.source_port).into())
                }
                _ => None,
            };
            Ok(client)
        }
        HeaderResult::V1(Err(err)) => Err(HeaderError::Invalid(err.to_string())),
        HeaderResult::V2(Err(err)) => Err(HeaderError::Invalid(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A loopback connection on which `parts` are written, with a pause between, and then closed;
    /// returns what `read_header` made of it and the bytes left after the header.
    async fn read(parts: &[&[u8]]) -> (Result<SocketAddr, HeaderError>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, peer) = listener.accept().await.unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|part| part.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for part in parts {
                client.write_all(&part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let protocol = ProxyProtocol::new(vec!["127.0.0.1/32".parse().unwrap()]);
        let result = protocol.read_header(&mut server, peer).await;
        writer.await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (result, rest)
    }

    /// A v2 PROXY header for TCP over IPv4 from `client`.
    fn v2(client: [u8; 4], port: u16) -> Vec<u8> {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12]);
        header.extend_from_slice(&client);
        header.extend_from_slice(&[192, 0, 2, 1]);
        header.extend_from_slice(&port.to_be_bytes());
        header.extend_from_slice(&443u16.to_be_bytes());
        header
    }

    #[tokio::test]
    async fn a_v1_header_gives_the_client_address_and_leaves_the_request_unread() {
        let (client, rest) =
            read(&[b"PROXY TCP4 198.51.100.7 192.0.2.1 51234 443\r\nGET / HTTP/1.1\r\n"]).await;
        assert_eq!(client.unwrap(), "198.51.100.7:51234".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (client, _) = read(&[b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"]).await;
        assert_eq!(client.unwrap(), "[2001:db8::7]:51234".parse().unwrap());
    }

    #[tokio::test]
    async fn a_v2_header_split_across_segments_is_read_whole() {
        let header = v2([203, 0, 113, 9], 40000);
        let (first, second) = header.split_at(10);
        let (client, rest) = read(&[first, second, b"hello"]).await;
        assert_eq!(client.unwrap(), "203.0.113.9:40000".parse().unwrap());
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn a_local_header_is_the_balancers_own_connection() {
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        let (client, _) = read(&[&local]).await;
        assert_eq!(client.unwrap().ip(), IpAddr::from([127, 0, 0, 1]));
    }

    #[tokio::test]
    async fn a_connection_without_a_valid_header_is_refused() {
        let (result, _) = read(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert!(matches!(result, Err(HeaderError::Invalid(_))), "{result:?}");
        let (result, _) = read(&[b"PROXY TCP4 198.51.100.7"]).await;
        assert!(matches!(result, Err(HeaderError::Closed)), "{result:?}");
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_HEADER_BYTES + 10, b'1');
        let (result, _) = read(&[&long]).await;
        assert!(result.is_err(), "{result:?}");
    }

    #[test]
    fn only_the_configured_balancers_are_trusted() {
        let protocol = ProxyProtocol::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(protocol.trusts("10.1.2.3".parse().unwrap()));
        assert!(protocol.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(protocol.trusts("2001:db8::5".parse().unwrap()));
        assert!(!protocol.trusts("192.0.2.1".parse().unwrap()));
    }
}
