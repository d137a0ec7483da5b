//! The request path, in one place. [`Gateway::chain`] reads top to bottom:
//!
//! `check URI and Origin -> authenticate -> read body -> parse -> check ownership -> authorize ->
//! limit -> in-flight slot -> audit -> forward (list answers filtered for the caller)`
//!
//! and every step refuses with the one error type, [`Refusal`]. Every step a client can make
//! expensive is bounded by `[limits]` (URI, body, batch, JSON depth, argument keys, requests in
//! flight). [`Gateway::finish`] then closes
//! every request, whatever its outcome: it writes the response line of a forwarded request, or
//! reports the offense and writes the audit lines of a refused one, and makes the answer. Metrics
//! attach there.
//!
//! A request reads one [`Snapshot`] of the policy and the serving settings from start to end, so a
//! reload never mixes two configurations in one request; limiter windows and sessions live
//! outside it and survive it. Which endpoint a request is for is decided first, from the
//! snapshot (`endpoint.rs`); `read.rs` reads it within its bounds and `forward.rs` sends it on.

mod answer;
mod call;
mod endpoint;
mod forward;
mod identify;
mod read;
mod refusal;
mod stream;
mod worker;

use std::{sync::Arc, time::Instant};

use hyper::{
    Request, Response, StatusCode, Uri, body::Incoming, header::HeaderValue,
    http::uri::PathAndQuery,
};

pub use call::Call;
pub use endpoint::Endpoint;
pub use refusal::{ProxyBody, Refusal};
pub use worker::Worker;

use endpoint::{endpoint, not_served};
use forward::Upstreamed;
use read::{check_uri, parse_messages, read_body};

use crate::{
    audit::{self, AuditLog, Decision, Peer},
    authz::{self, ToolCatalog},
    config::{NodeSettings, PolicySettings, RateLimit, ServingSettings, Settings},
    fleet::{self, NodeLimiter},
    limit::{InFlight, Limiter, NotAdmitted},
    mcp::{
        jsonrpc::{Kind, code},
        legacy_sse::{Endpoints, SEALED_ENDPOINT},
        sealed::SessionSeal,
        sessions::{SessionError, SessionOwners, Sessions},
        tasks::{SharedTasks, TaskOwners},
    },
    metrics::{self, Metrics, RequestRecord},
    oauth::{KeySets, Minted},
    policy::{Caller, Policy, PolicyStore, Snapshot},
    protection::Protection,
    upstream::REQUEST_ID,
};

/// Everything a request needs, shared by all connections. `L` counts the limits: this node's
/// own or the fleet's ([`NodeLimiter`]).
pub struct Gateway<L: Limiter = NodeLimiter> {
    settings: NodeSettings,
    /// The policy and the serving settings, swapped together by a reload.
    in_force: PolicyStore,
    /// OAuth issuers' signing keys, kept across reloads.
    key_sets: KeySets,
    /// Per caller.
    caller_limiter: L,
    /// Per caller and tool, for the tools with a limit of their own.
    tool_limiter: L,
    /// Requests of each caller being forwarded now.
    in_flight: InFlight,
    /// `subscriptions/listen` streams of each caller open now.
    listen_streams: InFlight,
    audit: AuditLog,
    sessions: SessionOwners,
    /// Which caller started which task.
    tasks: Arc<TaskOwners>,
    /// Message endpoints of open legacy SSE streams, by caller.
    legacy_endpoints: Arc<Endpoints>,
    /// Tool annotations the upstream listed, for rules that read them.
    catalog: Arc<ToolCatalog>,
    protection: Protection,
    metrics: Metrics,
    /// Whether the fleet's Redis answers, when this node is in a fleet.
    fleet: Option<Arc<fleet::Health>>,
}

impl Gateway {
    /// A gateway that counts limits in this process.
    pub fn new(settings: Settings, audit: AuditLog, protection: Protection) -> Self {
        Self::with_limiters(
            settings,
            NodeLimiter::default(),
            NodeLimiter::default(),
            audit,
            protection,
        )
    }
}

impl<L: Limiter> Gateway<L> {
    pub fn with_limiters(
        settings: Settings,
        caller_limiter: L,
        tool_limiter: L,
        audit: AuditLog,
        protection: Protection,
    ) -> Self {
        let seal = settings
            .node
            .fleet
            .as_ref()
            .and_then(|fleet| SessionSeal::new(&fleet.session_keys));
        let sessions = match seal {
            Some(seal) => SessionOwners::Sealed(Arc::new(seal)),
            None => SessionOwners::Table(Sessions::new(
                settings.node.limits.max_sessions,
                settings.node.limits.max_sessions_per_caller,
            )),
        };
        let tasks = Arc::new(TaskOwners::new(
            settings.node.limits.max_sessions,
            settings.node.limits.max_sessions_per_caller,
            None,
        ));
        let caller_labels = settings
            .node
            .admin
            .as_ref()
            .is_none_or(|admin| admin.caller_labels);
        let metrics = Metrics::new(caller_labels, audit.stats(), protection.offense_counts());
        let key_sets = KeySets::default();
        Self {
            settings: settings.node,
            in_force: PolicyStore::new(Snapshot {
                serving: settings.serving,
                policy: Policy::with_key_sets(settings.policy, &key_sets),
            }),
            key_sets,
            caller_limiter,
            tool_limiter,
            in_flight: InFlight::default(),
            listen_streams: InFlight::default(),
            audit,
            sessions,
            tasks,
            legacy_endpoints: Arc::default(),
            catalog: Arc::default(),
            protection,
            metrics,
            fleet: None,
        }
    }

    /// This node shares its state with a fleet whose Redis link reports `health`, and its task
    /// bindings through `tasks`.
    pub fn in_fleet(mut self, health: Arc<fleet::Health>, tasks: Arc<dyn SharedTasks>) -> Self {
        self.fleet = Some(health);
        self.tasks = Arc::new(TaskOwners::new(
            self.settings.limits.max_sessions,
            self.settings.limits.max_sessions_per_caller,
            Some(tasks),
        ));
        self
    }

    /// The fleet's Redis link, when this node is in a fleet.
    pub fn fleet(&self) -> Option<&Arc<fleet::Health>> {
        self.fleet.as_ref()
    }

    /// The settings only a restart changes.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The current policy and serving settings.
    pub fn in_force(&self) -> Arc<Snapshot> {
        self.in_force.current()
    }

    /// Swaps in new serving settings and a new policy (users, keys, limits), in one step.
    /// Requests under way finish with the old ones; limiter windows carry over.
    pub fn replace(&self, serving: ServingSettings, policy: PolicySettings) {
        self.in_force.replace(Snapshot {
            serving,
            policy: Policy::with_key_sets(policy, &self.key_sets),
        });
    }

    /// Swaps in a new policy, keeping the serving settings.
    pub fn replace_policy(&self, policy: PolicySettings) {
        self.replace(self.in_force().serving.clone(), policy);
    }

    /// Drops the limiter state of callers idle for the longest window of the current policy.
    pub fn sweep_limiters(&self) {
        let idle_after = self.in_force.current().policy.longest_window();
        self.caller_limiter.sweep(idle_after);
        self.tool_limiter.sweep(idle_after);
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How much of its limit each caller used within its current window: `(caller, used,
    /// limit)`, busiest first.
    pub fn caller_usage(&self) -> Vec<(Arc<str>, u64, RateLimit)> {
        let in_force = self.in_force.current();
        let policy = &in_force.policy;
        let mut usage: Vec<_> = policy
            .callers()
            .map(|caller| {
                let limit = policy.limit_of(caller);
                let used = self.caller_limiter.used(&caller.name, limit.window);
                (Arc::clone(&caller.name), used, limit)
            })
            .filter(|(_, used, _)| *used > 0)
            .collect();
        usage.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        usage
    }

    /// Answers one HTTP request. Never fails: every problem becomes a precise HTTP answer.
    pub async fn handle(
        &self,
        worker: &Worker,
        request: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let mut id_buffer = uuid::Uuid::encode_buffer();
        let request_id: &str = uuid::Uuid::now_v7()
            .hyphenated()
            .encode_lower(&mut id_buffer);
        let request_id_header = HeaderValue::from_str(request_id)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let in_force = worker.policy.snapshot(&self.in_force);
        // Declared before the call, which borrows the caller of a verified token from it.
        let minted = Minted::new();
        let mut response = match endpoint(&in_force.serving, &request) {
            Some(endpoint) => {
                let mut call = Call::new(request_id, peer, endpoint, &request);
                let outcome = self
                    .chain(
                        worker,
                        &in_force,
                        request,
                        &mut call,
                        &minted,
                        &request_id_header,
                    )
                    .await;
                self.finish(worker, &call, outcome).await
            }
            None => not_served(&in_force, &request),
        };
        response.headers_mut().insert(REQUEST_ID, request_id_header);
        response
    }

    /// The MCP endpoints: the gateway's chain of steps.
    async fn chain<'a>(
        &self,
        worker: &Worker,
        in_force: &'a Snapshot,
        request: Request<Incoming>,
        call: &mut Call<'a>,
        minted: &'a Minted,
        request_id: &HeaderValue,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let Snapshot { serving, policy } = in_force;
        let limits = &serving.limits;
        check_uri(&request, limits.max_uri_bytes)?;
        serving.allowed_origins.check(request.headers())?;
        let caller = self
            .identify(policy, request.headers(), call, minted)
            .await?;
        call.context.caller = Some(&caller.name);
        let (mut parts, body) = request.into_parts();
        let body = read_body(
            call.endpoint,
            &parts.method,
            body,
            self.settings.max_body_bytes,
            serving.idle_timeout,
        )
        .await?;
        parse_messages(call, &parts, &body, &limits.parse(), &self.catalog)?;
        self.check_ownership(serving, call, &parts.uri, &caller.name)?;
        self.check_scopes(policy, call, minted)?;
        self.authorize(caller, call)?;
        call.list_filter = answer::list_filter(policy, caller, call, &self.catalog, &self.tasks);
        self.limit(policy, caller, call).await?;
        // After the limits: in a fleet, a task this node does not know costs a Redis round trip.
        self.check_tasks(call, &caller.name).await?;
        // A listen stream lasts for hours: it takes a slot of its own bound, not an in-flight one.
        let slot = if call.listens() {
            let max = limits.max_listen_streams_per_caller;
            self.listen_streams
                .acquire(&caller.name, max)
                .ok_or_else(|| Refusal::too_many_listen_streams(max))?
        } else {
            let max = limits.max_in_flight_per_caller;
            self.in_flight
                .acquire(&caller.name, max)
                .ok_or_else(|| Refusal::too_many_in_flight(max))?
        };
        self.audit_before_forwarding(worker, call).await?;
        if let Some(identity) = &serving.upstream.identity {
            // Only the gateway's own assertion goes upstream, never one a client sent.
            parts.headers.remove(&identity.header);
            let groups = identify::groups_of(caller, minted);
            if let Some(assertion) = identity.assertion(&caller.name, &groups) {
                parts.headers.insert(identity.header.clone(), assertion);
            }
        }
        let upstream = Upstreamed {
            serving,
            caller: &caller.name,
            request_id,
            slot,
        };
        self.forward(worker, parts, body, call, upstream).await
    }

    /// The closing step, for every outcome: the response line of a forwarded request, or the
    /// offense and audit lines of a refused one; then the answer.
    async fn finish(
        &self,
        worker: &Worker,
        call: &Call<'_>,
        outcome: Result<Response<ProxyBody>, Refusal>,
    ) -> Response<ProxyBody> {
        self.metrics.request(&RequestRecord {
            decision: match &outcome {
                Ok(_) => Decision::Forwarded,
                Err(refusal) => refusal.decision,
            },
            method: metrics::method_class(&call.context.http_method, call.messages()),
            caller: call.context.caller,
            messages: call.messages(),
            added: call
                .forwarded_at
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(call.received_at),
            upstream_headers: call.forwarded_at.map(|at| at.elapsed()),
        });
        if let Some(started) = call.forwarded_at {
            let status = match &outcome {
                Ok(response) => response.status(),
                Err(refusal) => refusal.status,
            };
            let line = audit::response_line(&call.context, status.as_u16(), started.elapsed());
            worker.audit.write_in_background(line);
        }
        let refusal = match outcome {
            Ok(response) => return response,
            Err(refusal) => refusal,
        };
        // Refused before forwarding: its lines were not written yet (unless the audit log itself
        // failed, which only the gateway's own log can tell). A refusal is answered even if its
        // audit fails.
        if call.forwarded_at.is_none() && refusal.decision != Decision::AuditFailed {
            if let Some(offense) = refusal.offense {
                self.protection.offense(call.context.peer.ip, offense);
            }
            let lines = audit::refusal_lines(
                &call.context,
                call.messages(),
                refusal.decision,
                refusal.reason.as_deref(),
            );
            if let Err(err) = worker.audit.write(lines).await {
                tracing::error!(request_id = %call.context.request_id, error = %err, "could not audit a refused request");
            }
        }
        refusal.into_response(call.body.as_ref())
    }

    /// A legacy message may go only to an endpoint announced to its caller (on a stream still
    /// open, or sealed for them in a fleet), and a session only to the caller it belongs to.
    /// Notes in `call` what the upstream knows them by when the client sees sealed ids.
    fn check_ownership(
        &self,
        serving: &ServingSettings,
        call: &mut Call<'_>,
        uri: &Uri,
        caller: &Arc<str>,
    ) -> Result<(), Refusal> {
        if call.endpoint == Endpoint::LegacyMessage {
            let endpoint = uri
                .path_and_query()
                .map_or(uri.path(), PathAndQuery::as_str);
            let owner = match (self.sessions.seal(), endpoint.strip_prefix(SEALED_ENDPOINT)) {
                (Some(seal), Some(sealed)) => seal.open(sealed, caller).map(|upstream| {
                    call.upstream_endpoint = Some(upstream);
                }),
                _ => match self.legacy_endpoints.owner(endpoint) {
                    Some(owner) if *owner == **caller => Ok(()),
                    Some(_) => Err(SessionError::NotOwner),
                    None => Err(SessionError::Unknown),
                },
            };
            owner.map_err(|err| match err {
                SessionError::NotOwner => Refusal::new(
                    StatusCode::FORBIDDEN,
                    Decision::Forbidden,
                    code::FORBIDDEN,
                    "this legacy SSE session belongs to another caller",
                ),
                SessionError::Unknown => Refusal::new(
                    StatusCode::NOT_FOUND,
                    Decision::NotFound,
                    code::INVALID_REQUEST,
                    format!(
                        "not found: neither {} nor the endpoint of an open legacy SSE stream",
                        serving.mcp_path
                    ),
                ),
            })?;
        }
        if let Some(session) = &call.context.session {
            call.upstream_session = self
                .sessions
                .claim(session, caller)
                .map_err(|err| Refusal::session(err, call.era))?;
        }
        Ok(())
    }

    /// Refuses follow-ups of tasks the caller did not start.
    async fn check_tasks(&self, call: &Call<'_>, caller: &Arc<str>) -> Result<(), Refusal> {
        for message in call.messages() {
            if message.kind == Kind::TaskFollowUp
                && let Some(task) = &message.target
            {
                self.tasks.claim(task, caller).await?;
            }
        }
        Ok(())
    }

    /// Refuses calls of what the caller is not granted, before they cost any limit: a batch with
    /// one such message is refused whole, so a batch is never half done.
    fn authorize(&self, caller: &Caller, call: &Call<'_>) -> Result<(), Refusal> {
        let Some(grants) = &caller.grants else {
            return Ok(());
        };
        authz::check(grants, call.messages(), &self.catalog).map_err(|err| {
            let mut refusal = Refusal::from(err);
            if call.body.as_ref().is_some_and(|body| body.is_batch) {
                refusal
                    .message
                    .push_str("; nothing of this batch was forwarded");
            }
            refusal
        })
    }

    /// Per caller and tool, then per caller: a batch costs one per message. Tool limits go first,
    /// so a call they refuse takes no slot of the caller's own limit.
    async fn limit(
        &self,
        policy: &Policy,
        caller: &Caller,
        call: &Call<'_>,
    ) -> Result<(), Refusal> {
        let status = policy.rate_limit_status();
        if policy.has_tool_limits() {
            for (tool, count) in call.tool_calls() {
                let Some(limit) = policy.tool_limit(tool) else {
                    continue;
                };
                let key: Arc<str> = format!("{}\u{1f}{tool}", caller.name).into();
                self.tool_limiter
                    .admit(&key, limit, count)
                    .await
                    .map_err(|refused| self.not_admitted(refused, Some(tool), status))?;
            }
        }
        match self
            .caller_limiter
            .admit(&caller.name, policy.limit_of(caller), call.cost())
            .await
        {
            // Negotiation takes room in the window while there is some, and is never refused.
            Err(_) if call.only_negotiates() => Ok(()),
            admitted => admitted.map_err(|refused| self.not_admitted(refused, None, status)),
        }
    }

    fn not_admitted(
        &self,
        refused: NotAdmitted,
        tool: Option<&str>,
        status: StatusCode,
    ) -> Refusal {
        match refused {
            NotAdmitted::Over(denied) => {
                self.metrics.rate_limited(tool.is_some());
                Refusal::rate_limited(&denied, tool, status)
            }
            NotAdmitted::Unavailable => Refusal::fleet_unavailable(),
        }
    }

    /// Writes the request's lines and waits for the write: nothing reaches the upstream unaudited.
    async fn audit_before_forwarding(
        &self,
        worker: &Worker,
        call: &Call<'_>,
    ) -> Result<(), Refusal> {
        let lines = audit::request_lines(&call.context, call.messages(), Decision::Forwarded);
        worker.audit.write(lines).await.map_err(|err| {
            tracing::error!(request_id = %call.context.request_id, error = %err, "refusing a request that could not be audited");
            Refusal::audit_unavailable()
        })
    }
}

#[cfg(test)]
mod tests;
