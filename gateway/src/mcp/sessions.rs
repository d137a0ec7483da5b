//! Binds each `Mcp-Session-Id` to the caller that first used it, so no caller can ride on another
//! caller's session (MCP session ids are bearer-like: whoever has one can use it).

use std::{sync::Arc, time::Instant};

use dashmap::DashMap;

/// Most sessions remembered; past that the least recently used binding is dropped.
const MAX_SESSIONS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this MCP session belongs to another caller")]
pub struct NotOwner;

#[derive(Default)]
pub struct Sessions {
    owners: DashMap<Box<str>, Owner>,
}

struct Owner {
    caller: Arc<str>,
    last_used: Instant,
}

impl Sessions {
    /// Allows `caller` to use `session` if it is theirs or unknown; an unknown session becomes
    /// theirs (covers sessions created before a gateway restart).
    pub fn claim(&self, session: &str, caller: &Arc<str>) -> Result<(), NotOwner> {
        if let Some(mut owner) = self.owners.get_mut(session) {
            if owner.caller != *caller {
                return Err(NotOwner);
            }
            owner.last_used = Instant::now();
            return Ok(());
        }
        self.bind(session, caller);
        Ok(())
    }

    /// Records that the upstream issued `session` to `caller`.
    pub fn bind(&self, session: &str, caller: &Arc<str>) {
        if self.owners.len() >= MAX_SESSIONS {
            self.evict_least_recently_used();
        }
        self.owners.entry(session.into()).or_insert_with(|| Owner {
            caller: Arc::clone(caller),
            last_used: Instant::now(),
        });
    }

    /// The session was ended (DELETE answered with success).
    pub fn forget(&self, session: &str) {
        self.owners.remove(session);
    }

    fn evict_least_recently_used(&self) {
        let oldest = self
            .owners
            .iter()
            .min_by_key(|entry| entry.last_used)
            .map(|entry| entry.key().clone());
        if let Some(oldest) = oldest {
            self.owners.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_stays_with_its_first_caller() {
        let sessions = Sessions::default();
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        sessions.bind("s1", &alice);
        assert_eq!(sessions.claim("s1", &alice), Ok(()));
        assert_eq!(sessions.claim("s1", &bob), Err(NotOwner));
        // Unknown sessions are claimed by their first user.
        assert_eq!(sessions.claim("s2", &bob), Ok(()));
        assert_eq!(sessions.claim("s2", &alice), Err(NotOwner));
        sessions.forget("s1");
        assert_eq!(sessions.claim("s1", &bob), Ok(()));
    }
}
