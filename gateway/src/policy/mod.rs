//! Who may call, and how often: with how requests are served, the part of the configuration that
//! may change while the gateway runs.
//!
//! A [`Policy`] is one immutable value, and so is the [`Snapshot`] that holds it with the
//! [`ServingSettings`]. Requests read a snapshot; a reload builds a new one and swaps it in
//! ([`PolicyStore::replace`]), so a request sees either the old configuration or the new one,
//! never a mix. State that must outlive a policy (limiter windows, sessions) lives
//! outside it, keyed by caller name, so a reload resets nobody's window. Each caller's grants
//! (see `authz/`) are part of it.

mod authenticate;
pub mod keys;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hyper::{HeaderMap, StatusCode};

pub use crate::digest::{DigestMap, Sha256Digest};
pub use authenticate::{AuthError, AuthMethod, Authenticator, Caller, bearer_token};

use crate::{
    authz::Grants,
    config::{OAuthSettings, PolicySettings, PolicySummary, RateLimit, ServingSettings},
    lock,
    oauth::{KeySets, OAuth},
    tls::ClientCertificate,
};

/// The users, their keys and the limits, as one value.
pub struct Policy {
    authenticator: Authenticator,
    default_limit: RateLimit,
    tool_limits: HashMap<String, RateLimit>,
    rate_limit_status: StatusCode,
    longest_window: Duration,
    /// Some rule reads tool annotations: `tools/list` answers are read to learn them.
    reads_annotations: bool,
    /// Access tokens, when `[oauth]` is configured.
    oauth: Option<Arc<OAuth>>,
    /// What a reload compares a file's policy with.
    summary: PolicySummary,
}

impl Policy {
    /// Takes the settings: the users live on only in the authenticator (a second copy would
    /// double their memory, about 10 MiB with 100,000 users).
    pub fn new(settings: PolicySettings) -> Self {
        Self::with_key_sets(settings, &KeySets::default())
    }

    /// A policy whose OAuth issuers take their signing keys from `key_sets` (the ones the
    /// policy before it used, where the source is unchanged).
    pub fn with_key_sets(settings: PolicySettings, key_sets: &KeySets) -> Self {
        let longest_window = settings.longest_window();
        let summary = PolicySummary::of(&settings);
        let oauth = settings
            .oauth
            .as_ref()
            .map(|oauth| Arc::new(OAuth::new(OAuthSettings::clone(oauth), key_sets)));
        let groups_read_hints = settings.oauth.as_ref().is_some_and(|oauth| {
            Grants::new(oauth.groups.values().cloned().collect(), false).uses_hints()
        });
        let reads_annotations = groups_read_hints
            || settings.users.iter().any(|user| {
                user.grants
                    .as_ref()
                    .is_some_and(|grants| grants.uses_hints())
            });
        Self {
            authenticator: Authenticator::new(&settings.users),
            default_limit: settings.default_limit,
            tool_limits: settings.tool_limits,
            rate_limit_status: settings.rate_limit_status,
            longest_window,
            reads_annotations,
            oauth,
            summary,
        }
    }

    /// The resource server, when `[oauth]` is configured.
    pub fn oauth(&self) -> Option<&OAuth> {
        self.oauth.as_deref()
    }

    /// What a reload compares a file's policy with.
    pub fn summary(&self) -> &PolicySummary {
        &self.summary
    }

    /// Whether some rule reads the annotations of tools.
    pub fn reads_annotations(&self) -> bool {
        self.reads_annotations
    }

    /// The caller whose key the request carries, or whose certificate the connection presented.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientCertificate>,
    ) -> Result<(&Caller, AuthMethod), AuthError> {
        self.authenticator.authenticate(headers, certificate)
    }

    /// Every user.
    pub fn callers(&self) -> impl Iterator<Item = &Caller> {
        self.authenticator.callers()
    }

    /// The caller's own limit, or the default.
    pub fn limit_of(&self, caller: &Caller) -> RateLimit {
        caller.limit.unwrap_or(self.default_limit)
    }

    /// The limit on one caller's calls of `tool`, if that tool has one.
    pub fn tool_limit(&self, tool: &str) -> Option<RateLimit> {
        self.tool_limits.get(tool).copied()
    }

    pub fn has_tool_limits(&self) -> bool {
        !self.tool_limits.is_empty()
    }

    /// The HTTP status of a rate-limited answer (429, or 200 for clients that break on others).
    pub fn rate_limit_status(&self) -> StatusCode {
        self.rate_limit_status
    }

    /// The longest window of any limit: limiter state idle for this long can be dropped.
    pub fn longest_window(&self) -> Duration {
        self.longest_window
    }
}

/// What a reload swaps, in one step: how requests are served and who may call.
pub struct Snapshot {
    pub serving: ServingSettings,
    pub policy: Policy,
}

/// The current policy (or [`Snapshot`]), shared by all workers.
pub struct PolicyStore<T = Snapshot> {
    current: RwLock<Arc<T>>,
    /// Bumped by every swap, after the new policy is in place: what workers check per request.
    generation: AtomicU64,
}

impl<T> PolicyStore<T> {
    pub fn new(policy: T) -> Self {
        Self {
            current: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
        }
    }

    /// Swaps in a new policy. Requests under way finish with the one they started with.
    pub fn replace(&self, policy: T) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A request's hold on a policy: the worker's own reference to it.
pub type PolicySnapshot<T = Snapshot> = Arc<Arc<T>>;

/// One worker's copy of the current policy.
///
/// A request holds its policy for as long as it runs. Taking it from the store each time would
/// count every request on the lock and the reference count that all workers share, moving their
/// cache lines between CPUs, and cost about 115 instructions per request (callgrind, with
/// arc-swap's `load` in place of the lock). A worker instead keeps its own reference, wrapped
/// once in an `Arc` of its own, and counts requests on that; per request it only reads the
/// store's generation, to notice a swap.
pub struct WorkerPolicy<T = Snapshot> {
    cached: Mutex<Option<(u64, PolicySnapshot<T>)>>,
}

impl<T> Default for WorkerPolicy<T> {
    fn default() -> Self {
        Self {
            cached: Mutex::new(None),
        }
    }
}

impl<T> WorkerPolicy<T> {
    /// The current policy of `store`, for one request.
    pub fn snapshot(&self, store: &PolicyStore<T>) -> PolicySnapshot<T> {
        // Read before the policy: a swap in between only makes the next request refresh again.
        let generation = store.generation.load(Ordering::Acquire);
        let mut cached = lock(&self.cached);
        if let Some((seen, snapshot)) = &*cached
            && *seen == generation
        {
            return Arc::clone(snapshot);
        }
        let snapshot = Arc::new(store.current());
        *cached = Some((generation, Arc::clone(&snapshot)));
        snapshot
    }
}

/// Policies for tests: users `name` with key `"{name}-key"`.
#[cfg(test)]
pub(crate) mod test_support {
    use std::num::NonZeroU32;

    use hyper::header::{AUTHORIZATION, HeaderValue};

    use super::*;
    use crate::config::User;

    pub fn settings(users: &[&str], requests: u32) -> PolicySettings {
        PolicySettings {
            users: users
                .iter()
                .map(|name| User {
                    name: (*name).into(),
                    key_digest: Some(Sha256Digest::of(format!("{name}-key").as_bytes())),
                    tls_subject: None,
                    limit: None,
                    grants: None,
                    expires_at: None,
                    disabled: false,
                })
                .collect(),
            default_limit: RateLimit {
                requests: NonZeroU32::new(requests).unwrap(),
                window: Duration::from_secs(60),
            },
            tool_limits: HashMap::new(),
            rate_limit_status: StatusCode::TOO_MANY_REQUESTS,
            oauth: None,
        }
    }

    /// The headers of a request with `name`'s key.
    pub fn bearer(name: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {name}-key")).unwrap(),
        );
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::{
        test_support::{bearer, settings},
        *,
    };

    #[test]
    fn a_swapped_policy_reaches_new_requests_while_old_ones_keep_theirs() {
        let store = PolicyStore::new(Policy::new(settings(&["alice"], 10)));
        let worker = WorkerPolicy::default();
        let before = worker.snapshot(&store);
        assert!(before.authenticate(&bearer("alice"), None).is_ok());
        assert!(
            Arc::ptr_eq(&before, &worker.snapshot(&store)),
            "one copy per worker until the policy changes"
        );

        // Alice's key is revoked and Bob's added.
        store.replace(Policy::new(settings(&["bob"], 10)));
        let after = worker.snapshot(&store);
        assert!(after.authenticate(&bearer("alice"), None).is_err());
        assert!(after.authenticate(&bearer("bob"), None).is_ok());
        // The request that started before the swap finishes with the policy it had.
        assert!(before.authenticate(&bearer("alice"), None).is_ok());
    }
}
