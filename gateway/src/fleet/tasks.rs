//! Task bindings shared by every node: `<prefix>:task:<sha256 of the task id>` holds the caller
//! who started the task, for the task's lifetime. Written once (`SET .. NX`: the first binding
//! stays), read by a node that meets a follow-up of a task it did not see start (one `GET`).
//! The task id itself is a handle that lets its holder follow the task, so Redis only ever holds
//! its digest.

use std::{sync::Arc, time::Duration};

use super::link::Link;
use crate::{
    digest::Sha256Digest,
    mcp::tasks::{SharedFuture, SharedTasks},
};

pub struct FleetTasks {
    link: Link,
    prefix: String,
}

impl FleetTasks {
    pub fn new(link: Link, prefix: &str) -> Self {
        Self {
            link,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, task: &str) -> String {
        format!(
            "{}:task:{}",
            self.prefix,
            Sha256Digest::of(task.as_bytes()).to_hex()
        )
    }
}

impl SharedTasks for FleetTasks {
    fn record(&self, task: &str, caller: &str, ttl: Duration) -> SharedFuture<()> {
        let (link, key, caller) = (self.link.clone(), self.key(task), caller.to_owned());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let written = link
                .run(async |mut connection| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&caller)
                        .arg("PX")
                        .arg(ttl_ms)
                        .arg("NX")
                        .query_async::<Option<String>>(&mut connection)
                        .await
                })
                .await;
            if written.is_err() {
                tracing::warn!(
                    caller,
                    "fleet: a task binding could not be written; other nodes will not find it"
                );
            }
        })
    }

    fn owner(&self, task: &str) -> SharedFuture<Result<Option<Arc<str>>, ()>> {
        let (link, key) = (self.link.clone(), self.key(task));
        Box::pin(async move {
            let owner = link
                .run(async |mut connection| {
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async::<Option<String>>(&mut connection)
                        .await
                })
                .await
                .map_err(|_| ())?;
            Ok(owner.map(Arc::from))
        })
    }
}
