//! The MCP edge gateway: a reverse proxy that authenticates, rate-limits and audits every MCP call,
//! and an XDP program that drops abusive sources in the kernel.

pub mod xdp;
