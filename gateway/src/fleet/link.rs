//! The node's connection to Redis, and whether Redis is answering.
//!
//! Requests never wait for a Redis that is away: an operation that fails or takes longer than
//! `timeout_ms` marks the link down, and while it is down the request path does not try Redis at
//! all (it falls back at once, see `on_unavailable`). One probe task pings with a growing pause
//! (50 ms doubling to 2 s) and marks the link up when Redis answers. The outage is logged once
//! when it starts and once when it ends, and shown in `/readyz` and the metrics.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    Client, FromRedisValue, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::config::FleetSettings;

/// How long connecting (TCP, TLS, `AUTH`) may take; requests still wait at most `timeout_ms`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis did not answer in time, or answered with an error: the caller falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Redis is unavailable")]
pub struct Unavailable;

/// A shared, reconnecting connection to Redis with the node's view of its health.
#[derive(Clone)]
pub struct Link {
    connection: ConnectionManager,
    client: Client,
    timeout: Duration,
    health: Arc<Health>,
}

/// Whether Redis answers, as the request path sees it.
#[derive(Default)]
pub struct Health {
    down: AtomicBool,
    /// When the current outage began.
    down_since: Mutex<Option<Instant>>,
    outages: AtomicU64,
    errors: AtomicU64,
    /// Shown in `/readyz`: where Redis is.
    pub redis_shown: String,
}

impl Health {
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// How long Redis has been away, if it is.
    pub fn down_for(&self) -> Option<Duration> {
        self.down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|since| since.elapsed())
    }

    /// Outages since start, and failed or timed-out operations.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.outages.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

impl Link {
    /// Connects lazily: a Redis that is away at start is an outage like any other.
    pub fn new(settings: &FleetSettings) -> Result<Self, RedisError> {
        let client = match &settings.redis_ca {
            Some(ca) => Client::build_with_tls(
                settings.redis.clone(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            None => Client::open(settings.redis.clone())?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(CONNECT_TIMEOUT)))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            connection,
            client,
            timeout: settings.timeout,
            health: Arc::new(Health {
                redis_shown: settings.redis_shown.clone(),
                ..Health::default()
            }),
        })
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Runs one request-path operation within the timeout; any failure marks the link down.
    /// While it is down, fails at once.
    pub async fn run<T: FromRedisValue>(
        &self,
        operation: impl AsyncFnOnce(ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable);
        }
        self.try_run(operation).await
    }

    /// Like [`run`](Self::run), but tries even while the link is down (background work that
    /// waits for Redis anyway).
    pub async fn try_run<T: FromRedisValue>(
        &self,
        operation: impl AsyncFnOnce(ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, Unavailable> {
        self.run_within(self.timeout, operation).await
    }

    /// Connects (TCP, TLS, `AUTH`: longer than a request may wait) and pings once, at start.
    pub async fn connect(&self) -> Result<(), Unavailable> {
        let within = self.timeout.max(CONNECT_TIMEOUT);
        self.run_within(within, async |mut connection| {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .map(drop)
    }

    async fn run_within<T: FromRedisValue>(
        &self,
        within: Duration,
        operation: impl AsyncFnOnce(ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(within, operation(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.failed(&err.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.failed(&format!("no answer within {} ms", within.as_millis()));
                Err(Unavailable)
            }
        }
    }

    /// A connection of its own, for blocking reads (`XREAD BLOCK`), which would hold up every
    /// other command on the shared one.
    pub async fn dedicated(&self) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(CONNECT_TIMEOUT)))
            // Longer than an `XREAD BLOCK`: a Redis gone silent is noticed, a quiet one is not.
            .set_response_timeout(Some(Duration::from_secs(5)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn failed(&self, error: &str) {
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        if !self.health.down.swap(true, Ordering::Relaxed) {
            self.health.outages.fetch_add(1, Ordering::Relaxed);
            *self
                .health
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            tracing::error!(
                redis = %self.health.redis_shown,
                error,
                "fleet: Redis is unavailable; limits and offenses now count on this node \
                 alone (or calls are refused, with on_unavailable = \"refuse\") until it is back"
            );
        }
    }

    /// Pings Redis while the link is down, with a growing pause; marks it up when Redis answers.
    /// (Catching up is the block follower's: its own connection broke too.)
    pub async fn probe(self) {
        let mut pause = Duration::from_millis(50);
        loop {
            tokio::time::sleep(if self.is_up() {
                Duration::from_millis(250)
            } else {
                pause
            })
            .await;
            if self.is_up() {
                pause = Duration::from_millis(50);
                continue;
            }
            let pong: Result<String, _> = self
                .try_run(async |mut connection| {
                    redis::cmd("PING").query_async(&mut connection).await
                })
                .await;
            if pong.is_err() {
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
            let since = self
                .health
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            self.health.down.store(false, Ordering::Relaxed);
            tracing::warn!(
                redis = %self.health.redis_shown,
                outage_ms = since.map_or(0, |since| since.elapsed().as_millis() as u64),
                "fleet: Redis is back; sharing limits, offenses and blocks again"
            );
        }
    }
}
