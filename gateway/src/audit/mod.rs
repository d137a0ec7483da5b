//! The audit log, JSON Lines, append-only.
//!
//! Every request's lines are written before it is forwarded, and the forward waits for the write.
//! Without fsync each worker thread writes the lines of the requests that became ready together
//! with one `write(2)` on the O_APPEND file ([`WorkerAudit`]). With `audit.fsync = true` one
//! writer thread takes everything queued at once and commits it with one `write` and one `fsync`
//! (group commit), so throughput holds under concurrency. SIGHUP reopens
//! the path (logrotate's `postrotate`); no line is lost across it.
//!
//! [`line`] makes the requests' lines and [`operator`] those of blocks and operators' actions,
//! [`log`] owns the file, [`worker`] batches per worker thread.

mod line;
mod log;
mod operator;
mod worker;

use std::{io, sync::Arc};

pub use line::{
    Peer, RequestContext, refusal_lines, request_lines, response_line, stream_closed_line,
    stream_opened_line,
};
pub use log::AuditLog;
pub use operator::{
    BlockRecord, BlockTarget, OperatorRecord, block_line, operator_line, unblock_line,
};
pub use worker::WorkerAudit;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be written: {0}")]
    Write(Arc<io::Error>),
    #[error("the audit log writer has stopped")]
    Stopped,
}

/// What the gateway decided about a request (the `decision` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forwarded,
    Unauthenticated,
    InvalidKey,
    /// An access token that does not verify.
    InvalidToken,
    /// The identity provider could not be reached to check a token.
    IdpUnavailable,
    /// Authenticated, but not allowed (another caller's session).
    Forbidden,
    /// Authenticated, but posted to no endpoint the gateway serves.
    NotFound,
    RateLimited,
    BadRequest,
    TooLarge,
    /// The audit line could not be written, so the call was refused (only seen in the gateway's
    /// own log, since the audit log was failing).
    AuditFailed,
    /// The fleet's shared limits were unavailable and `on_unavailable = "refuse"`.
    FleetUnavailable,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidKey => "invalid_key",
            Self::InvalidToken => "invalid_token",
            Self::IdpUnavailable => "idp_unavailable",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::AuditFailed => "audit_failed",
            Self::FleetUnavailable => "fleet_unavailable",
        }
    }
}
