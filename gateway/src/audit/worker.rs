//! Each worker thread's way into the audit log, batching what becomes ready together.

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

use super::{
    AuditError,
    log::{AuditLog, Command, Sink},
};
use crate::lock;

/// Held-back response lines are written at once past this many bytes.
const PENDING_LIMIT: usize = 64 * 1024;
/// Held-back response lines are written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One worker thread's way into the audit log.
///
/// Without fsync, the request lines of every request that becomes ready in the same turn of the
/// worker's event loop are written together with one `write(2)` by the worker's flush task
/// ([`WorkerAudit::run`], woken by the first of them and so run after the others); each request
/// still waits for the write of its own lines before it is forwarded. Response lines join the
/// next batch without waiting, or go out with the periodic flush. With fsync, everything goes to
/// the group-commit writer.
pub struct WorkerAudit {
    log: AuditLog,
    batch: Mutex<Batch>,
    wake: Notify,
}

#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    /// Whether the flush task was woken for this batch.
    woken: bool,
    written: Arc<Written>,
}

/// The outcome of one batch's write, for the requests waiting on it.
#[derive(Default)]
struct Written {
    result: OnceLock<Result<(), Arc<io::Error>>>,
    notify: Notify,
}

impl Written {
    async fn wait(&self) -> Result<(), Arc<io::Error>> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a result set in between still wakes us.
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }
}

impl WorkerAudit {
    pub fn new(log: AuditLog) -> Self {
        Self {
            log,
            batch: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Appends `lines` and returns once they are written (and synced, in fsync mode).
    pub async fn write(&self, lines: Vec<u8>) -> Result<(), AuditError> {
        if matches!(self.log.sink.as_ref(), Sink::GroupCommit(_)) {
            return self.log.write(lines).await;
        }
        let started = std::time::Instant::now();
        let written = {
            let mut batch = lock(&self.batch);
            batch.lines.extend_from_slice(&lines);
            if !batch.woken {
                batch.woken = true;
                self.wake.notify_one();
            }
            Arc::clone(&batch.written)
        };
        let result = written.wait().await.map_err(AuditError::Write);
        self.log.observe(started, result.is_ok());
        result
    }

    /// Appends `lines` without waiting (for lines written after the fact, such as responses): they
    /// ride along with the next batch or go out within [`FLUSH_EVERY`]. A failure is logged: the
    /// request they describe was already audited.
    pub fn write_in_background(&self, lines: Vec<u8>) {
        let commands = match self.log.sink.as_ref() {
            Sink::Direct(_) => {
                let mut batch = lock(&self.batch);
                batch.lines.extend_from_slice(&lines);
                if batch.lines.len() >= PENDING_LIMIT && !batch.woken {
                    batch.woken = true;
                    self.wake.notify_one();
                }
                return;
            }
            Sink::GroupCommit(commands) => commands,
        };
        if let Err(mpsc::error::TrySendError::Full(command)) =
            commands.try_send(Command::Write { lines, done: None })
        {
            let commands = commands.clone();
            tokio::spawn(async move {
                if commands.send(command).await.is_err() {
                    tracing::error!(
                        "audit log writer has stopped; a response line was not written"
                    );
                }
            });
        }
    }

    /// The worker's flush task: writes each batch when woken, and whatever is held at least every
    /// [`FLUSH_EVERY`]. Runs until the worker's runtime stops; call [`WorkerAudit::flush`] then.
    pub async fn run(self: Arc<Self>) {
        if matches!(self.log.sink.as_ref(), Sink::GroupCommit(_)) {
            // The group-commit writer has everything already.
            return;
        }
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            self.flush();
        }
    }

    /// Writes the current batch now and tells its waiting requests how it went.
    pub fn flush(&self) {
        let Sink::Direct(file) = self.log.sink.as_ref() else {
            return;
        };
        let batch = std::mem::take(&mut *lock(&self.batch));
        let result = if batch.lines.is_empty() {
            Ok(())
        } else {
            file.append(&batch.lines).map_err(Arc::new)
        };
        let _ = batch.written.result.set(result);
        batch.written.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::audit::line::tests::parse_lines;

    #[tokio::test]
    async fn a_worker_writes_what_became_ready_together_and_holds_response_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let worker = Arc::new(WorkerAudit::new(AuditLog::open(&path, false).unwrap()));
        let flusher = tokio::spawn(Arc::clone(&worker).run());
        worker.write_in_background(b"{\"n\":0}\n".to_vec());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "held back");
        let writes: Vec<_> = (1..=50)
            .map(|i| {
                let worker = Arc::clone(&worker);
                tokio::spawn(
                    async move { worker.write(format!("{{\"n\":{i}}}\n").into_bytes()).await },
                )
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let mut seen: Vec<u64> = parse_lines(&std::fs::read(&path).unwrap())
            .iter()
            .map(|v| v["n"].as_u64().unwrap())
            .collect();
        assert_eq!(seen[0], 0, "the held line rode along with the first batch");
        seen.sort();
        assert_eq!(seen, (0..=50).collect::<Vec<_>>());
        // A held line goes out with the periodic flush even when no request follows.
        worker.write_in_background(b"{\"n\":51}\n".to_vec());
        tokio::time::sleep(FLUSH_EVERY * 3).await;
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("{\"n\":51}\n")
        );
        flusher.abort();
    }

    #[tokio::test]
    async fn a_failing_write_is_reported() {
        // /dev/full accepts the open and fails every write with ENOSPC: a full disk.
        for fsync in [false, true] {
            let log = AuditLog::open(Path::new("/dev/full"), fsync).unwrap();
            let err = log.write(b"{}\n".to_vec()).await.unwrap_err();
            assert!(matches!(err, AuditError::Write(_)), "{err}");
            let worker = Arc::new(WorkerAudit::new(log));
            let flusher = tokio::spawn(Arc::clone(&worker).run());
            let err = worker.write(b"{}\n".to_vec()).await.unwrap_err();
            assert!(matches!(err, AuditError::Write(_)), "{err}");
            flusher.abort();
        }
    }
}
