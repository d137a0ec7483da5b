//! What the gateway understands of MCP: the JSON-RPC messages of a request ([`jsonrpc`]), the
//! protocol era it belongs to ([`era`]), MCP's headers ([`headers`]), which caller owns which
//! session ([`sessions`]) and which task ([`tasks`]), which browser origins may call
//! ([`origin`]), the endpoints of the legacy HTTP+SSE transport ([`legacy_sse`]), and the events
//! of an SSE stream ([`sse`]).

pub mod era;
pub mod headers;
pub mod jsonrpc;
pub mod legacy_sse;
pub mod origin;
pub mod sealed;
pub mod sessions;
pub mod sse;
pub mod tasks;
