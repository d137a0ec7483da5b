//! Binds each task the upstream starts to the caller whose call started it, so no caller can read,
//! update, cancel or list another caller's task. The specification requires receivers to bind
//! tasks to the authorization context that created them; behind the gateway every caller reaches
//! the upstream as one principal, so only the gateway can tell them apart.
//!
//! A task id is learned from the answer to a call that could start one (`params.task` in
//! 2025-11-25; a client declaring the tasks extension in 2026-07-28): `result.task.taskId`, or
//! `result.taskId` with `resultType: "task"`. A follow-up (`tasks/get`, `tasks/result`,
//! `tasks/update`, `tasks/cancel`) is let through only for the caller the task was bound to; an id
//! the gateway never saw start gets 404, as a receiver answers for a task it does not know (a
//! made-up id costs no memory). A `tasks/list` answer keeps only the caller's own tasks.
//!
//! The ids live in the same bounded table as sessions ([`Sessions`]): at most `max_per_caller`
//! per caller (a caller past it loses its own oldest), `capacity` in all. In a fleet every binding
//! is also written to the fleet's store ([`SharedTasks`], Redis), for the task's lifetime (at most
//! [`MAX_SHARED_TTL`]), so a follow-up may reach any node: a node that does not know the id asks
//! the store once and keeps the answer. A task list is filtered by what the node knows.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::task::JoinHandle;

use super::sessions::{SessionError, Sessions};

/// How long the fleet's store keeps a binding at most (a task without a lifetime of its own
/// keeps it that long).
pub const MAX_SHARED_TTL: Duration = Duration::from_secs(24 * 3600);

pub type SharedFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The fleet's store of task bindings (implemented by the fleet on Redis).
pub trait SharedTasks: Send + Sync {
    /// Binds `task` to `caller` for `ttl` unless it is bound already.
    fn record(&self, task: &str, caller: &str, ttl: Duration) -> SharedFuture<()>;
    /// The caller `task` is bound to; `Err` when the store does not answer.
    fn owner(&self, task: &str) -> SharedFuture<Result<Option<Arc<str>>, ()>>;
}

/// Why a follow-up's task id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("this task belongs to another caller")]
    NotOwner,
    #[error("unknown task: this gateway did not see it start")]
    Unknown,
    #[error("the fleet's task bindings are unavailable (Redis does not answer); retry shortly")]
    Unavailable,
}

pub struct TaskOwners {
    known: Sessions,
    shared: Option<Arc<dyn SharedTasks>>,
}

impl TaskOwners {
    pub fn new(
        capacity: usize,
        max_per_caller: usize,
        shared: Option<Arc<dyn SharedTasks>>,
    ) -> Self {
        Self {
            known: Sessions::new(capacity, max_per_caller),
            shared,
        }
    }

    /// What this node knows: `caller`'s task, another's, or unknown here.
    fn known(&self, task: &str, caller: &Arc<str>) -> Result<(), TaskError> {
        self.known.claim(task, caller).map_err(|err| match err {
            SessionError::NotOwner => TaskError::NotOwner,
            SessionError::Unknown => TaskError::Unknown,
        })
    }

    /// Allows `caller` to follow up on `task` if the task was started by their call.
    pub async fn claim(&self, task: &str, caller: &Arc<str>) -> Result<(), TaskError> {
        match (self.known(task, caller), &self.shared) {
            (Err(TaskError::Unknown), Some(shared)) => {
                let owner = shared
                    .owner(task)
                    .await
                    .map_err(|()| TaskError::Unavailable)?
                    .ok_or(TaskError::Unknown)?;
                self.known.bind(task, &owner);
                if owner == *caller {
                    Ok(())
                } else {
                    Err(TaskError::NotOwner)
                }
            }
            (known, _) => known,
        }
    }

    /// The upstream started `task` for `caller`, to live `ttl`. An id already bound stays with
    /// its first caller. In a fleet, the handle of the write to the fleet's store.
    pub fn started(
        &self,
        task: &str,
        caller: &Arc<str>,
        ttl: Option<Duration>,
    ) -> Option<JoinHandle<()>> {
        self.known.bind(task, caller);
        let shared = self.shared.as_ref()?;
        let ttl = ttl.map_or(MAX_SHARED_TTL, |ttl| ttl.min(MAX_SHARED_TTL));
        Some(tokio::spawn(shared.record(task, caller, ttl)))
    }
}

/// What to read of one answer for the tasks of its caller.
pub struct TaskWatch {
    owners: Arc<TaskOwners>,
    caller: Arc<str>,
    /// Ids of the requests whose answer may start a task.
    starts: Vec<Value>,
    /// Ids of the `tasks/list` requests.
    lists: Vec<Value>,
    /// Writes to the fleet's store under way.
    writes: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl TaskWatch {
    /// `None` when the request neither may start a task nor lists them.
    pub fn new(
        owners: &Arc<TaskOwners>,
        caller: &Arc<str>,
        starts: Vec<Value>,
        lists: Vec<Value>,
    ) -> Option<Self> {
        (!starts.is_empty() || !lists.is_empty()).then(|| Self {
            owners: Arc::clone(owners),
            caller: Arc::clone(caller),
            starts,
            lists,
            writes: std::sync::Mutex::default(),
        })
    }

    /// Waits until the tasks this answer started are bound in the fleet's store too, so the
    /// caller's next request finds them on any node.
    pub async fn shared(&self) {
        let writes = std::mem::take(
            &mut *self
                .writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for write in writes {
            // A failed write was logged by the store; the node itself knows the task.
            let _ = write.await;
        }
    }

    /// Whether an answer must be read whole or not passed on: a task list to filter.
    pub fn restricts(&self) -> bool {
        !self.lists.is_empty()
    }

    /// Reads one answer message: `None` if it answers none of the watched requests, else whether
    /// it was changed.
    pub fn apply(&self, message: &mut Value) -> Option<bool> {
        let id = message.get("id")?;
        if self.starts.contains(id) {
            if let Some((task, ttl)) = message.get("result").and_then(started_task)
                && let Some(write) = self.owners.started(task, &self.caller, ttl)
            {
                self.writes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(write);
            }
            return Some(false);
        }
        if !self.lists.contains(id) {
            return None;
        }
        let tasks = message
            .get_mut("result")
            .and_then(|result| result.get_mut("tasks"))
            .and_then(Value::as_array_mut)?;
        let before = tasks.len();
        tasks.retain(|task| {
            task.get("taskId")
                .and_then(Value::as_str)
                .is_some_and(|id| self.owners.known(id, &self.caller).is_ok())
        });
        Some(tasks.len() != before)
    }
}

/// The id and lifetime of the task a call's result starts, in either era's shape.
fn started_task(result: &Value) -> Option<(&str, Option<Duration>)> {
    let modern = result.get("resultType").and_then(Value::as_str) == Some("task");
    let (task, ttl) = if modern {
        (result, "ttlMs")
    } else {
        (result.get("task")?, "ttl")
    };
    let ttl = task
        .get(ttl)
        .and_then(Value::as_u64)
        .map(Duration::from_millis);
    Some((task.get("taskId")?.as_str()?, ttl))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn watch(owners: &Arc<TaskOwners>, caller: &str) -> TaskWatch {
        TaskWatch::new(owners, &caller.into(), vec![json!(1)], vec![json!(2)]).unwrap()
    }

    #[tokio::test]
    async fn a_task_started_by_one_caller_is_followed_only_by_that_caller() {
        let owners = Arc::new(TaskOwners::new(100, 10, None));
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let mut legacy = json!({"id":1,"result":{"task":{"taskId":"t-legacy","status":"working"}}});
        let mut modern =
            json!({"id":1,"result":{"resultType":"task","taskId":"t-modern","status":"working"}});
        assert_eq!(watch(&owners, "alice").apply(&mut legacy), Some(false));
        assert_eq!(watch(&owners, "alice").apply(&mut modern), Some(false));
        for task in ["t-legacy", "t-modern"] {
            assert_eq!(owners.claim(task, &alice).await, Ok(()));
            assert_eq!(owners.claim(task, &bob).await, Err(TaskError::NotOwner));
        }
        assert_eq!(
            owners.claim("t-never", &alice).await,
            Err(TaskError::Unknown)
        );
        // A plain result starts nothing; another request's answer is not read.
        let mut plain = json!({"id":1,"result":{"content":[],"taskId":"t-plain"}});
        watch(&owners, "alice").apply(&mut plain);
        assert_eq!(
            owners.claim("t-plain", &alice).await,
            Err(TaskError::Unknown)
        );
        let mut other = json!({"id":7,"result":{"task":{"taskId":"t-other"}}});
        assert_eq!(watch(&owners, "alice").apply(&mut other), None);
        assert_eq!(
            owners.claim("t-other", &alice).await,
            Err(TaskError::Unknown)
        );
    }

    #[test]
    fn a_task_list_keeps_only_the_callers_own_tasks_in_order() {
        let owners = Arc::new(TaskOwners::new(100, 10, None));
        owners.started("a1", &"alice".into(), None);
        owners.started("b1", &"bob".into(), None);
        owners.started("a2", &"alice".into(), None);
        let mut list = json!({"id":2,"result":{"tasks":[
            {"taskId":"a1"},{"taskId":"b1"},{"taskId":"unknown"},{"taskId":"a2"},{"status":"x"}
        ],"nextCursor":"c"}});
        assert_eq!(watch(&owners, "alice").apply(&mut list), Some(true));
        assert_eq!(
            list["result"],
            json!({"tasks":[{"taskId":"a1"},{"taskId":"a2"}],"nextCursor":"c"})
        );
    }
}
