//! `checkpoint.lock`: a lease that keeps two fetches of one task apart.
//!
//! The lock is an object in the checkpoint storage (a local directory or S3), so it works the
//! same wherever checkpoints live. It names its holder (host, pid, node) and when the lease
//! ends; the holder rewrites it well before then. Another fetch of the same task is refused
//! with that holder and time, until the lease ends — or at once when the holder is provably
//! gone: on the same host, with no process of that pid (and start time) alive, as after a
//! `kill -9`. A free lock is taken with a create-only write (`If-None-Match: *` on S3, which
//! `depot serve` honours; a hard link locally). Taking over a dead holder's lock is write, then
//! read back after a moment: of two fetches racing, the one whose record is not there gives way.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::storage::{Storage, StoreError};

/// The lock's key inside the task's checkpoint directory.
pub const LOCK: &str = "checkpoint.lock";

/// How long to wait before reading a just-written lock back.
const SETTLE: Duration = Duration::from_millis(100);

/// Who holds (or wants) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The process's start time (clock ticks since boot, `/proc/PID/stat`), which tells a
    /// live process from a later one that reused the pid.
    pub pid_start: Option<u64>,
    /// The fetching node.
    pub node_id: String,
}

impl Holder {
    /// This process, fetching for `node_id`.
    #[must_use]
    pub fn current(node_id: &str) -> Self {
        let pid = std::process::id();
        Self { host: crate::node::host_name(), pid, pid_start: process_start(pid), node_id: node_id.to_owned() }
    }

    /// Whether this holder is certainly not running: it ran on this host, and no process with
    /// its pid and start time exists.
    fn is_gone(&self) -> bool {
        self.host == crate::node::host_name()
            && process_start(self.pid).is_none_or(|start| Some(start) != self.pid_start)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on {} (node {})", self.pid, self.host, self.node_id)
    }
}

/// The lock object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// Unique per acquisition.
    id: String,
    holder: Holder,
    /// When the lease ends, in milliseconds since the epoch.
    expires_unix_ms: u64,
}

/// Why the lock could not be taken or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another fetch holds it.
    #[error(
        "another fetch of this task is running: {holder} holds {location} until {until} (lease); \
         wait for it to finish or stop it (a holder that died on this host is taken over at once)"
    )]
    Held {
        /// The lock object.
        location: String,
        /// Who holds it.
        holder: Holder,
        /// When its lease ends (RFC 3339).
        until: String,
    },
    /// The lease was taken over while this fetch held it (it was not refreshed in time).
    #[error("the checkpoint lock {location} was taken over by {holder} while this fetch held it")]
    Lost {
        /// The lock object.
        location: String,
        /// The new holder.
        holder: Holder,
    },
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held lease. Refresh it within its duration; release it when done.
#[derive(Debug)]
pub struct Lease {
    store: Storage,
    record: Record,
    duration: Duration,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

async fn read(store: &Storage) -> Result<Option<Record>, StoreError> {
    match store.get(LOCK).await {
        Ok(data) => Ok(match serde_json::from_slice(&data) {
            Ok(record) => Some(record),
            Err(err) => {
                tracing::warn!(lock = store.describe(LOCK), %err, "unreadable checkpoint lock; taking it over");
                None
            }
        }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

impl Lease {
    /// Takes the lock in `store` (a task's checkpoint directory) for `duration`, at wall-clock
    /// time `now`.
    ///
    /// # Errors
    /// [`LockError::Held`] while another live holder's lease runs; [`LockError::Store`].
    pub async fn acquire(
        store: &Storage,
        holder: Holder,
        duration: Duration,
        now: SystemTime,
    ) -> Result<Self, LockError> {
        let location = store.describe(LOCK);
        let existing = read(store).await?;
        if let Some(existing) = &existing {
            let expired = existing.expires_unix_ms <= unix_ms(now);
            if !expired && !existing.holder.is_gone() {
                return Err(LockError::Held {
                    location,
                    holder: existing.holder.clone(),
                    until: rfc3339(existing.expires_unix_ms),
                });
            }
            tracing::warn!(
                lock = location,
                holder = %existing.holder,
                reason = if expired { "its lease ended" } else { "its process is gone" },
                "taking over the checkpoint lock"
            );
        }
        let record = Record { id: uuid::Uuid::new_v4().to_string(), holder, expires_unix_ms: unix_ms(now + duration) };
        let lease = Self { store: store.clone(), record, duration };
        if existing.is_none() {
            // No lock yet: a create-only write (S3 `If-None-Match: *`, a local hard link), so of
            // two fetches starting together exactly one gets it.
            match store.put_new(LOCK, lease.encode()).await {
                Ok(()) => return Ok(lease),
                Err(StoreError::Exists { .. }) => {
                    return match read(store).await? {
                        Some(winner) => Err(LockError::Held {
                            location,
                            holder: winner.holder,
                            until: rfc3339(winner.expires_unix_ms),
                        }),
                        None => Err(LockError::Store(StoreError::Exists { location })),
                    };
                }
                Err(err) => return Err(err.into()),
            }
        }
        // Taking over a dead or expired holder's lock: write, then read back after a moment.
        lease.write().await?;
        tokio::time::sleep(SETTLE).await;
        match read(store).await? {
            Some(winner) if winner.id != lease.record.id => {
                Err(LockError::Held { location, holder: winner.holder, until: rfc3339(winner.expires_unix_ms) })
            }
            _ => Ok(lease),
        }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.record).expect("lock serializes")
    }

    async fn write(&self) -> Result<(), StoreError> {
        self.store.put(LOCK, self.encode()).await
    }

    /// Extends the lease to `now + duration`, if it is still ours.
    ///
    /// # Errors
    /// [`LockError::Lost`] when another holder took it over; [`LockError::Store`].
    pub async fn refresh(&mut self, now: SystemTime) -> Result<(), LockError> {
        if let Some(current) = read(&self.store).await?
            && current.id != self.record.id
        {
            return Err(LockError::Lost { location: self.store.describe(LOCK), holder: current.holder });
        }
        self.record.expires_unix_ms = unix_ms(now + self.duration);
        Ok(self.write().await?)
    }

    /// Deletes the lock, if it is still ours.
    ///
    /// # Errors
    /// [`LockError::Store`].
    pub async fn release(self) -> Result<(), LockError> {
        match read(&self.store).await? {
            Some(current) if current.id != self.record.id => Ok(()),
            _ => Ok(self.store.delete(LOCK).await?),
        }
    }

    /// How long the lease lasts from a refresh.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), or `None` if there is no
/// such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let store = Storage::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        (dir, store)
    }

    /// A holder on this host whose process has exited.
    fn dead_holder() -> Holder {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        Holder { host: crate::node::host_name(), pid, pid_start: Some(1), node_id: "n".into() }
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_until_the_lease_ends() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        let lease = Duration::from_secs(60);
        let mut first = Lease::acquire(&store, Holder::current("n1"), lease, now).await.unwrap();
        let other = Holder { host: "other-host".into(), pid: 1, pid_start: None, node_id: "n1".into() };

        let err = Lease::acquire(&store, other.clone(), lease, now + Duration::from_secs(1)).await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&format!("process {}", std::process::id())), "{message}");
        assert!(message.contains("until ") && message.contains('T'), "names when the lease ends: {message}");

        // A refreshed lease keeps it away longer.
        first.refresh(now + Duration::from_secs(50)).await.unwrap();
        assert!(Lease::acquire(&store, other.clone(), lease, now + Duration::from_secs(70)).await.is_err());

        // After the lease ends, it is taken over; the old holder learns it lost the lock.
        let second = Lease::acquire(&store, other, lease, now + Duration::from_secs(111)).await.unwrap();
        assert!(matches!(first.refresh(now + Duration::from_secs(112)).await, Err(LockError::Lost { .. })));
        first.release().await.unwrap();
        assert!(store.get(LOCK).await.is_ok(), "releasing a lost lock leaves the new holder's");
        second.release().await.unwrap();
        assert!(matches!(store.get(LOCK).await, Err(StoreError::NotFound { .. })));
    }

    #[tokio::test]
    async fn a_holder_that_is_gone_is_taken_over_at_once() {
        let (_dir, store) = store();
        let now = SystemTime::now();
        let lease = Duration::from_secs(600);
        let dead = Lease::acquire(&store, dead_holder(), lease, now).await.unwrap();
        drop(dead); // as after kill -9: the lock stays behind
        let taken = Lease::acquire(&store, Holder::current("n1"), lease, now).await;
        assert!(taken.is_ok(), "{:?}", taken.err());
        assert!(process_start(std::process::id()).is_some());
        assert!(!Holder::current("n1").is_gone());
    }
}
