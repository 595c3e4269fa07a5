//! A writer's lease on one feed, kept in the lake itself: the commit protocol assumes one
//! writer per feed, and the lease is what makes a second process (a second replica configured
//! on the same feed, `export` next to `run`, a pod that has not died yet) wait or refuse instead
//! of writing.
//!
//! The lease is a small JSON object `{"owner", "expires_at_ms"}`: taken with a create-only put,
//! or over a lapsed one with a conditional put where the store has one, renewed well before it
//! lapses, and deleted on a clean stop. A writer that dies holding it blocks others until it
//! lapses.
//!
//! Another owner's lease counts as lapsed only when this process has seen it unchanged for a
//! whole lease period on its own monotonic clock: the holder's `expires_at_ms` is informative,
//! so clocks that disagree between hosts cannot hand a live lease over early. On a local lake
//! (no conditional put) the takeover of a lapsed lease is a plain overwrite, so two processes
//! waiting on the same local lake could both take it; object stores are safe.

use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another process writes this feed: its lease {path} holds until {until}")]
    Busy { path: String, until: String },
    #[error("{path}: the store failed")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    owner: String,
    expires_at_ms: i64,
}

/// Another owner's lease body and when this process first saw it so.
type Seen = (Vec<u8>, std::time::Instant);

/// One holder's lease on one path.
#[derive(Debug, Clone)]
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    path: Path,
    owner: String,
    duration: Duration,
    /// Another owner's lease as last read, and since when it has looked the same.
    seen: Arc<Mutex<Option<Seen>>>,
}

impl Lease {
    /// A lease at `path` for a new, random owner.
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, duration: Duration) -> Self {
        let owner = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        Lease { store, path, owner, duration, seen: Arc::default() }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn body(&self) -> PutPayload {
        let expires_at_ms = Utc::now().timestamp_millis() + self.duration.as_millis() as i64;
        let lease = LeaseBody { owner: self.owner.clone(), expires_at_ms };
        PutPayload::from(serde_json::to_vec(&lease).unwrap_or_default())
    }

    fn failed(&self) -> impl FnOnce(object_store::Error) -> LeaseError + '_ {
        move |source| LeaseError::Store { path: self.path.to_string(), source }
    }

    /// Takes the lease, or extends it when it is already ours. `Busy` while another owner's
    /// lease has not lapsed.
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&self.path, self.body(), create.clone()).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(source) => return Err(LeaseError::Store { path: self.path.to_string(), source }),
        }
        let current = match self.store.get(&self.path).await {
            Ok(current) => current,
            Err(object_store::Error::NotFound { .. }) => {
                // released meanwhile: one more create-only try
                return match self.store.put_opts(&self.path, self.body(), create).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(LeaseError::Busy { path: self.path.to_string(), until: "now".into() }),
                };
            }
            Err(source) => return Err(LeaseError::Store { path: self.path.to_string(), source }),
        };
        let version = UpdateVersion { e_tag: current.meta.e_tag.clone(), version: current.meta.version.clone() };
        let bytes = current.bytes().await.map_err(self.failed())?;
        let held: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
        let ours = held.as_ref().is_some_and(|lease| lease.owner == self.owner);
        if !ours {
            let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let unchanged_since = match seen.as_ref() {
                Some((body, since)) if *body == bytes.as_ref() => *since,
                _ => {
                    let now = std::time::Instant::now();
                    *seen = Some((bytes.to_vec(), now));
                    now
                }
            };
            if unchanged_since.elapsed() < self.duration {
                let expires = held.as_ref().map_or(0, |lease| lease.expires_at_ms);
                let until = DateTime::<Utc>::from_timestamp_millis(expires).map(|t| t.to_rfc3339()).unwrap_or_default();
                return Err(LeaseError::Busy { path: self.path.to_string(), until });
            }
        }
        // ours, lapsed or unreadable: write it, conditionally where the store can
        let update = PutOptions { mode: PutMode::Update(version), ..PutOptions::default() };
        match self.store.put_opts(&self.path, self.body(), update).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&self.path, self.body()).await.map_err(self.failed())?;
                Ok(())
            }
            Err(object_store::Error::Precondition { .. }) => {
                Err(LeaseError::Busy { path: self.path.to_string(), until: "now (taken by another process)".into() })
            }
            Err(source) => Err(LeaseError::Store { path: self.path.to_string(), source }),
        }
    }

    /// Gives the lease up if it is still ours (best effort: it lapses anyway).
    pub async fn release(&self) {
        let ours = match self.store.get(&self.path).await {
            Ok(current) => current
                .bytes()
                .await
                .ok()
                .and_then(|bytes| serde_json::from_slice::<LeaseBody>(&bytes).ok())
                .is_some_and(|lease| lease.owner == self.owner),
            Err(_) => false,
        };
        if ours {
            if let Err(error) = self.store.delete(&self.path).await {
                tracing::debug!(path = %self.path, error = %error, "could not release a lease; it lapses");
            }
        }
    }
}
