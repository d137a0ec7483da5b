//! Open client connections by source, so that a block also ends the connections a source already
//! has.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use super::block_set::host_address;

/// Open connections by source address, so a block can end them: dropping only the packets of a
/// live TCP connection would leave both ends retransmitting for minutes.
#[derive(Default)]
pub struct Connections {
    by_source: DashMap<IpAddr, Vec<(u64, CancellationToken)>>,
    next_id: AtomicU64,
}

/// A registered connection; unregisters itself when dropped.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    source: IpAddr,
    id: u64,
    closed: CancellationToken,
}

impl ConnectionGuard {
    /// Cancelled when the connection's source gets blocked, or when its parent token is.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections
            .by_source
            .remove_if_mut(&self.source, |_, open| {
                open.retain(|(id, _)| *id != self.id);
                open.is_empty()
            });
    }
}

impl Connections {
    /// Registers a connection of `source`, unless it already has `max` open; its token is a
    /// child of `parent` (the server's shutdown), so the connection waits on one token for both.
    pub fn register(
        self: &Arc<Self>,
        source: IpAddr,
        parent: &CancellationToken,
        max: usize,
    ) -> Option<ConnectionGuard> {
        let source = source.to_canonical();
        let mut open = self.by_source.entry(source).or_default();
        if open.len() >= max {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = parent.child_token();
        open.push((id, closed.clone()));
        Some(ConnectionGuard {
            connections: Arc::clone(self),
            source,
            id,
            closed,
        })
    }

    /// Ends every open connection of `source`; returns how many.
    pub fn close_all(&self, source: IpAddr) -> usize {
        match self.by_source.remove(&source.to_canonical()) {
            Some((_, open)) => {
                open.iter().for_each(|(_, token)| token.cancel());
                open.len()
            }
            None => 0,
        }
    }

    /// Ends every open connection of a source inside `target` (an address or a prefix); returns
    /// how many.
    pub fn close_within(&self, target: IpNet) -> usize {
        if let Some(source) = host_address(target) {
            return self.close_all(source);
        }
        let sources: Vec<IpAddr> = self
            .by_source
            .iter()
            .map(|entry| *entry.key())
            .filter(|source| target.contains(source))
            .collect();
        sources
            .into_iter()
            .map(|source| self.close_all(source))
            .sum()
    }

    pub fn open_count(&self, source: IpAddr) -> usize {
        self.by_source
            .get(&source.to_canonical())
            .map_or(0, |open| open.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_guards_unregister() {
        let connections = Arc::new(Connections::default());
        let source: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let parent = CancellationToken::new();
        let first = connections.register(source, &parent, 2).unwrap();
        let second = connections
            .register("192.0.2.1".parse().unwrap(), &parent, 2)
            .unwrap();
        assert!(
            connections.register(source, &parent, 2).is_none(),
            "a third is over the limit"
        );
        assert_eq!(
            connections.open_count(source),
            2,
            "v4-mapped and plain IPv4 are one source"
        );
        drop(first);
        assert_eq!(connections.open_count(source), 1);
        assert_eq!(connections.close_all(source), 1);
        assert!(second.closed().is_cancelled());
    }
}
