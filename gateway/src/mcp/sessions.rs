//! Binds each `Mcp-Session-Id` the upstream issues to the caller it issued it to, so no caller can
//! ride on another caller's session (MCP session ids are bearer-like: whoever has one can use it).
//!
//! Only ids the upstream minted (on the response that carries them) are remembered. A request with
//! an id the gateway does not know gets 404, as the MCP transport specification prescribes for a
//! session the server does not know (ended, expired, or from before a restart): the client then
//! starts a new session with `initialize`. So a made-up id costs no memory, and a session lost by
//! this gateway can never be picked up by another caller.
//!
//! The table is bounded twice: each caller holds at most `max_per_caller` sessions (a new one
//! ends that caller's oldest, so a caller who opens sessions in a loop only churns its own), and
//! all callers together at most `capacity` (then the least recently used session goes, which the
//! per-caller bound keeps rare). Every operation is O(1) (amortized for the per-caller queue).
//! Measured before this design (each unknown id claimed, a full table scanned for the oldest on
//! every claim): one key sending fresh ids took the gateway from about 65,000 to about 1,700
//! requests/s for every caller.

use std::{
    collections::{HashMap, VecDeque},
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use lru::LruCache;

use super::sealed::SessionSeal;

/// Why a request's session id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("this MCP session belongs to another caller")]
    NotOwner,
    #[error("unknown MCP session: start a new one with initialize")]
    Unknown,
}

pub struct Sessions {
    table: Mutex<Table>,
    max_per_caller: usize,
}

struct Table {
    /// Session id -> caller, least recently used first out.
    owners: LruCache<Box<str>, Arc<str>>,
    /// Each caller's sessions in the order they were issued; ids that ended meanwhile are skipped
    /// when met, and dropped when the queue outgrows twice the quota.
    issued: HashMap<Arc<str>, Issued>,
}

#[derive(Default)]
struct Issued {
    open: usize,
    order: VecDeque<Box<str>>,
}

impl Sessions {
    pub fn new(capacity: usize, max_per_caller: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            table: Mutex::new(Table {
                owners: LruCache::new(capacity),
                issued: HashMap::new(),
            }),
            max_per_caller: max_per_caller.max(1),
        }
    }

    /// Allows `caller` to use `session` if the upstream issued it to them.
    pub fn claim(&self, session: &str, caller: &Arc<str>) -> Result<(), SessionError> {
        match self.table().owners.get(session) {
            Some(owner) if owner == caller => Ok(()),
            Some(_) => Err(SessionError::NotOwner),
            None => Err(SessionError::Unknown),
        }
    }

    /// Records that the upstream issued `session` to `caller`. An id already bound stays with
    /// its first caller.
    pub fn bind(&self, session: &str, caller: &Arc<str>) {
        let mut table = self.table();
        if table.owners.contains(session) {
            return;
        }
        let max_per_caller = self.max_per_caller;
        // At its quota, the caller's oldest session still open ends.
        while table
            .issued
            .get(caller)
            .is_some_and(|issued| issued.open >= max_per_caller)
        {
            let oldest = table
                .issued
                .get_mut(caller)
                .and_then(|issued| issued.order.pop_front());
            match oldest {
                Some(oldest) => table.remove_if_owned(&oldest, caller),
                None => break,
            }
        }
        if let Some((_, evicted_owner)) = table
            .owners
            .push(session.into(), Arc::clone(caller))
            .filter(|(id, _)| **id != *session)
        {
            table.closed(&evicted_owner);
        }
        let issued = table.issued.entry(Arc::clone(caller)).or_default();
        issued.open += 1;
        issued.order.push_back(session.into());
        table.compact(caller, max_per_caller);
    }

    /// The session was ended (DELETE answered with success).
    pub fn forget(&self, session: &str) {
        let mut table = self.table();
        if let Some(owner) = table.owners.pop(session) {
            table.closed(&owner);
        }
    }

    /// Sessions bound now, and how many of them are `caller`'s.
    #[cfg(test)]
    pub fn count(&self, caller: &str) -> (usize, usize) {
        let table = self.table();
        let own = table.issued.get(caller).map_or(0, |issued| issued.open);
        (table.owners.len(), own)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Table {
    /// Ends `session` if it is still `caller`'s (it may have ended or been evicted already).
    fn remove_if_owned(&mut self, session: &str, caller: &Arc<str>) {
        if self.owners.peek(session) == Some(caller) {
            self.owners.pop(session);
            self.closed(caller);
        }
    }

    fn closed(&mut self, owner: &Arc<str>) {
        if let Some(issued) = self.issued.get_mut(owner) {
            issued.open = issued.open.saturating_sub(1);
            if issued.open == 0 {
                self.issued.remove(owner);
            }
        }
    }

    /// Drops the ids of ended sessions from `caller`'s queue once it holds twice its quota, so
    /// the queue stays O(quota) however sessions end.
    fn compact(&mut self, caller: &Arc<str>, max_per_caller: usize) {
        let Some(issued) = self.issued.get_mut(caller) else {
            return;
        };
        if issued.order.len() <= 2 * max_per_caller {
            return;
        }
        let owners = &self.owners;
        issued
            .order
            .retain(|id| owners.peek(&**id).is_some_and(|owner| owner == caller));
    }
}

/// Who may use which session: this gateway's own table, or (in a fleet) ids sealed for their
/// caller that every node opens alike ([`SessionSeal`]).
pub enum SessionOwners {
    Table(Sessions),
    Sealed(Arc<SessionSeal>),
}

impl SessionOwners {
    /// Allows `caller` to use the session the client named `session`; `Some(id)` when the
    /// upstream knows it by another id, which the request must carry instead.
    pub fn claim(&self, session: &str, caller: &Arc<str>) -> Result<Option<String>, SessionError> {
        match self {
            Self::Table(table) => table.claim(session, caller).map(|()| None),
            Self::Sealed(seal) => seal.open(session, caller).map(Some),
        }
    }

    /// The upstream issued `session` to `caller`; `Some(id)` when the client must see another id.
    pub fn issued(&self, session: &str, caller: &Arc<str>) -> Option<String> {
        match self {
            Self::Table(table) => {
                table.bind(session, caller);
                None
            }
            Self::Sealed(seal) => Some(seal.seal(caller, session)),
        }
    }

    /// The session was ended or is unknown to the upstream (a sealed id holds no state).
    pub fn forget(&self, session: &str) {
        if let Self::Table(table) = self {
            table.forget(session);
        }
    }

    pub fn seal(&self) -> Option<&Arc<SessionSeal>> {
        match self {
            Self::Sealed(seal) => Some(seal),
            Self::Table(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> (Arc<str>, Arc<str>) {
        ("alice".into(), "bob".into())
    }

    #[test]
    fn a_session_is_usable_only_by_the_caller_it_was_issued_to() {
        let sessions = Sessions::new(100, 10);
        let (alice, bob) = callers();
        sessions.bind("s1", &alice);
        assert_eq!(sessions.claim("s1", &alice), Ok(()));
        assert_eq!(sessions.claim("s1", &bob), Err(SessionError::NotOwner));
        sessions.bind("s1", &bob);
        assert_eq!(
            sessions.claim("s1", &bob),
            Err(SessionError::NotOwner),
            "a bound id stays with its first caller"
        );
        sessions.forget("s1");
        assert_eq!(sessions.claim("s1", &alice), Err(SessionError::Unknown));
    }

    #[test]
    fn an_id_never_issued_is_unknown_and_costs_nothing() {
        let sessions = Sessions::new(100, 10);
        let (alice, _) = callers();
        for i in 0..1_000 {
            assert_eq!(
                sessions.claim(&format!("made-up-{i}"), &alice),
                Err(SessionError::Unknown)
            );
        }
        assert_eq!(sessions.count("alice"), (0, 0));
    }

    #[test]
    fn a_caller_over_its_quota_ends_its_own_oldest_session_not_anothers() {
        let sessions = Sessions::new(100, 3);
        let (alice, bob) = callers();
        sessions.bind("bob-1", &bob);
        for i in 0..1_000 {
            sessions.bind(&format!("alice-{i}"), &alice);
        }
        assert_eq!(sessions.count("alice"), (4, 3));
        assert_eq!(sessions.claim("bob-1", &bob), Ok(()), "bob's session stays");
        assert_eq!(sessions.claim("alice-999", &alice), Ok(()));
        assert_eq!(sessions.claim("alice-997", &alice), Ok(()));
        assert_eq!(
            sessions.claim("alice-996", &alice),
            Err(SessionError::Unknown)
        );
        let table = sessions.table();
        assert!(
            table.issued["alice"].order.len() <= 2 * 3 + 1,
            "queue stays bounded"
        );
    }

    #[test]
    fn a_full_table_lets_the_least_recently_used_session_go() {
        let sessions = Sessions::new(3, 10);
        let (alice, bob) = callers();
        sessions.bind("a1", &alice);
        sessions.bind("b1", &bob);
        sessions.bind("a2", &alice);
        assert_eq!(
            sessions.claim("a1", &alice),
            Ok(()),
            "a1 used: b1 is now oldest"
        );
        sessions.bind("a3", &alice);
        assert_eq!(sessions.claim("b1", &bob), Err(SessionError::Unknown));
        assert_eq!(sessions.count("bob"), (3, 0));
        assert_eq!(sessions.count("alice"), (3, 3));
    }

    #[test]
    fn ended_sessions_free_their_callers_quota() {
        let sessions = Sessions::new(100, 2);
        let (alice, _) = callers();
        sessions.bind("a1", &alice);
        sessions.bind("a2", &alice);
        sessions.forget("a1");
        sessions.bind("a3", &alice);
        assert_eq!(sessions.claim("a2", &alice), Ok(()), "a1's end made room");
        assert_eq!(sessions.claim("a3", &alice), Ok(()));
    }
}
