//! The audit file: appended to with `write(2)` on an O_APPEND descriptor, or, with fsync, by one
//! writer thread that commits everything queued with one write and one fsync (group commit).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::AuditStats;

use super::AuditError;
use crate::lock;

/// Lines waiting for the writer before requests wait for room (backpressure, bounded memory).
const QUEUE_CAPACITY: usize = 16_384;

pub(super) enum Command {
    Write {
        lines: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), Arc<io::Error>>>>,
    },
    Reopen,
}

/// Handle to the audit log; cheap to clone. Request paths go through a [`WorkerAudit`].
#[derive(Clone)]
pub struct AuditLog {
    pub(super) sink: Arc<Sink>,
    stats: AuditStats,
}

pub(super) enum Sink {
    /// Without fsync, lines are appended with `write(2)` on the O_APPEND file by whoever has them
    /// (each worker's flush task, one batch at a time).
    Direct(LogFile),
    /// With fsync, one writer thread commits everything queued with one write and one fsync.
    GroupCommit(mpsc::Sender<Command>),
}

impl AuditLog {
    /// Opens (creating it and its directory if needed) the log; in fsync mode, starts the writer
    /// thread.
    pub fn open(path: &Path, fsync: bool) -> io::Result<Self> {
        let file = LogFile::open(path, fsync)?;
        let sink = if fsync {
            let (commands, receiver) = mpsc::channel(QUEUE_CAPACITY);
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || group_commit(file, receiver))?;
            Sink::GroupCommit(commands)
        } else {
            Sink::Direct(file)
        };
        Ok(Self {
            sink: Arc::new(sink),
            stats: AuditStats::default(),
        })
    }

    /// Write latencies and failures, for the metrics.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Whether the last write failed (the log is not writable now, as far as anyone knows).
    pub fn is_failing(&self) -> bool {
        self.stats.failing.load(Ordering::Relaxed)
    }

    /// Appends `lines` and returns once they are written (and synced, in fsync mode).
    pub async fn write(&self, lines: Vec<u8>) -> Result<(), AuditError> {
        let started = std::time::Instant::now();
        let result = self.write_unobserved(lines).await;
        self.observe(started, result.is_ok());
        result
    }

    /// Records one write that began at `started`, for the metrics and readiness.
    pub(super) fn observe(&self, started: std::time::Instant, ok: bool) {
        self.stats
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.stats.failing.store(!ok, Ordering::Relaxed);
        if !ok {
            self.stats.failures.inc();
        }
    }

    async fn write_unobserved(&self, lines: Vec<u8>) -> Result<(), AuditError> {
        let commands = match self.sink.as_ref() {
            Sink::Direct(file) => {
                return file
                    .append(&lines)
                    .map_err(|err| AuditError::Write(Arc::new(err)));
            }
            Sink::GroupCommit(commands) => commands,
        };
        let (done, written) = oneshot::channel();
        commands
            .send(Command::Write {
                lines,
                done: Some(done),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(AuditError::Write(err)),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Reopens the file at the configured path (after logrotate moved it). Lines written before
    /// go to the old file, lines after to the new one; none is lost.
    pub async fn reopen(&self) {
        match self.sink.as_ref() {
            Sink::Direct(file) => file.reopen(),
            Sink::GroupCommit(commands) => {
                if commands.send(Command::Reopen).await.is_err() {
                    tracing::error!("audit log writer has stopped; cannot reopen");
                }
            }
        }
    }
}

/// The open log file, shared by everything that appends to it.
pub(super) struct LogFile {
    path: PathBuf,
    /// Swapped on reopen; writers take a reference and write without holding the lock.
    file: RwLock<Arc<File>>,
    fsync: bool,
    /// One append at a time, so a write that fails half-way (a full disk) can be cut back off
    /// the end of the file without cutting another writer's lines. Held for one `write(2)` per
    /// batch of lines.
    appending: Mutex<()>,
    /// A failed write left a partial line that could not be cut off; the next write starts on a
    /// fresh line.
    ends_mid_line: AtomicBool,
}

impl LogFile {
    fn open(path: &Path, fsync: bool) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: RwLock::new(Arc::new(open_append(path)?)),
            fsync,
            appending: Mutex::new(()),
            ends_mid_line: AtomicBool::new(false),
        })
    }

    fn current(&self) -> Arc<File> {
        Arc::clone(
            &self
                .file
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes whole lines (and syncs them in fsync mode). A write that fails part-way is cut back
    /// off, so the log never holds half a line: it has each line whole, or not at all.
    pub(super) fn append(&self, lines: &[u8]) -> io::Result<()> {
        let file = self.current();
        let _one_writer = lock(&self.appending);
        let mut writer: &File = &file;
        if self.ends_mid_line.swap(false, Ordering::Relaxed) {
            writer
                .write_all(b"\n")
                .inspect_err(|_| self.ends_mid_line.store(true, Ordering::Relaxed))?;
        }
        let mut written = 0;
        while written < lines.len() {
            match writer.write(&lines[written..]) {
                Ok(0) => {
                    return Err(self.failed(&file, written, io::ErrorKind::WriteZero.into()));
                }
                Ok(count) => written += count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.failed(&file, written, err)),
            }
        }
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// After a failed write of which `written` bytes landed: cuts them off the end of the file
    /// (no other writer appended since: the caller holds `appending`).
    fn failed(&self, file: &File, written: usize, err: io::Error) -> io::Error {
        tracing::error!(path = %self.path.display(), error = %err, "audit log write failed; refusing requests until it works again");
        if written > 0 {
            let cut = file
                .metadata()
                .and_then(|meta| file.set_len(meta.len().saturating_sub(written as u64)));
            if let Err(cut_err) = cut {
                tracing::error!(path = %self.path.display(), error = %cut_err, "cannot cut a partial line off the audit log");
                self.ends_mid_line.store(true, Ordering::Relaxed);
            }
        }
        err
    }

    fn reopen(&self) {
        match open_append(&self.path) {
            Ok(file) => {
                *self
                    .file
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(file);
                self.ends_mid_line.store(false, Ordering::Relaxed);
                tracing::info!(path = %self.path.display(), "audit log reopened");
            }
            // Keep writing to the old file: lines land in the rotated file rather than nowhere.
            Err(err) => {
                tracing::error!(path = %self.path.display(), error = %err, "cannot reopen the audit log; still writing to the previous file")
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // The log names callers and addresses: readable by the gateway's user only.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The fsync writer: takes everything queued at once and commits it with one write and one
/// fsync, so concurrent requests share the cost of a sync.
fn group_commit(file: LogFile, mut receiver: mpsc::Receiver<Command>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut waiting = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        let mut next = Some(first);
        while let Some(command) = next.take().or_else(|| receiver.try_recv().ok()) {
            match command {
                Command::Write { lines, done } => {
                    buffer.extend_from_slice(&lines);
                    waiting.extend(done);
                }
                Command::Reopen => {
                    // Everything queued before the reopen goes to the old file.
                    commit(&file, &mut buffer, &mut waiting);
                    file.reopen();
                }
            }
            if buffer.len() >= 1024 * 1024 {
                break;
            }
        }
        commit(&file, &mut buffer, &mut waiting);
    }
}

fn commit(
    file: &LogFile,
    buffer: &mut Vec<u8>,
    waiting: &mut Vec<oneshot::Sender<Result<(), Arc<io::Error>>>>,
) {
    if buffer.is_empty() && waiting.is_empty() {
        return;
    }
    let result = file.append(buffer).map_err(Arc::new);
    for done in waiting.drain(..) {
        // The request may have gone away meanwhile; nothing to tell then.
        let _ = done.send(result.clone());
    }
    buffer.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::line::tests::parse_lines;

    #[tokio::test]
    async fn writes_survive_reopen_after_rotation() {
        for fsync in [false, true] {
            writes_survive_reopen(fsync).await;
        }
    }

    async fn writes_survive_reopen(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/log.jsonl");
        let log = AuditLog::open(&path, fsync).unwrap();
        log.write(b"{\"n\":1}\n".to_vec()).await.unwrap();
        std::fs::rename(&path, dir.path().join("audit/log.jsonl.1")).unwrap();
        log.write(b"{\"n\":2}\n".to_vec()).await.unwrap();
        log.reopen().await;
        log.write(b"{\"n\":3}\n".to_vec()).await.unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("audit/log.jsonl.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rotated, "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(current, "{\"n\":3}\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_land_whole() {
        for fsync in [false, true] {
            concurrent_writers(fsync).await;
        }
    }

    async fn concurrent_writers(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = AuditLog::open(&path, fsync).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(
                    async move { log.write(format!("{{\"n\":{i}}}\n").into_bytes()).await },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let mut seen: Vec<u64> = parse_lines(&std::fs::read(&path).unwrap())
            .iter()
            .map(|v| v["n"].as_u64().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }
}
