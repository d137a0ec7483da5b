//! What the XDP program reports: its log records and its rate-limit events, read from ring
//! buffers as they become readable.

use aya::maps::{MapData, RingBuf};
use gateway_ebpf::RateEvent;
use tokio::io::{Interest, unix::AsyncFd};

use super::ProgramLogger;

/// The program's ring buffer of rate events, registered with the runtime.
pub type RateEvents = AsyncFd<RingBuf<MapData>>;

/// Registers the rate events ring buffer with the runtime.
pub fn poll_rate_events(ring: RingBuf<MapData>) -> std::io::Result<RateEvents> {
    // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged for as long as the
    // AsyncFd owns the RingBuf.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
}

/// Passes the XDP program's log records on as they arrive.
pub async fn forward_program_logs(logger: ProgramLogger) {
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd owns the logger.
    let logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(logger) => logger,
        Err(err) => {
            tracing::error!(error = %err, "cannot poll the XDP program's log");
            return;
        }
    };
    let mut logger = logger;
    loop {
        match logger.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(err) => {
                tracing::error!(error = %err, "the XDP program's log failed");
                return;
            }
        }
    }
}

/// Waits for the XDP program's next rate events (never completes without a ring buffer).
pub async fn next_rate_events(events: &mut Option<AsyncFd<RingBuf<MapData>>>) -> Vec<RateEvent> {
    let Some(events) = events.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = match events.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::error!(error = %err, "XDP events ring buffer failed");
                return std::future::pending().await;
            }
        };
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() == std::mem::size_of::<RateEvent>() {
                // SAFETY: the program writes whole RateEvents; read_unaligned copes with alignment.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RateEvent>()) });
            }
        }
        guard.clear_ready();
        if !batch.is_empty() {
            return batch;
        }
    }
}
