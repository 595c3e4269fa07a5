//! Feeds kept in the lake, managed with `ksql-lake feeds …` and picked up by a running
//! `ksql-lake run` within seconds:
//!
//! ```text
//! <lake>/feeds/active/<name>.json     a feed `run` ingests while `"enabled": true`
//! <lake>/feeds/archived/<name>.json   an archived feed ("enabled": false); its data stays
//! ```
//!
//! A feed file holds the keys of a `[[feeds]]` entry of the config file, as JSON:
//! `{"name": "orders", "kind": "stream", "source": "ORDERS", "enabled": true, "partitioning": "daily"}`.
//! It is validated by the same rules as the config file, with the config's `[defaults]` (or
//! the built-in defaults) for what it leaves out.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde_json::Value;

use crate::config::raw::{RawFeed, RawFeedSettings};
use crate::config::{ConfigError, FeedConfig};
use crate::lake::layout::validate_feed_name;
use crate::lake::{Lake, LayoutError};

/// The folder under the lake root.
pub const FEEDS_DIR: &str = "feeds";

/// Whether a feed file is in `active/` or `archived/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FeedState {
    Active,
    Archived,
}

impl FeedState {
    pub fn dir(self) -> &'static str {
        match self {
            FeedState::Active => "active",
            FeedState::Archived => "archived",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedsError {
    #[error(transparent)]
    Name(#[from] LayoutError),
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{path} is not a valid feed file: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: the store failed")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("feed `{name}` already exists ({state}): choose another name, or `feeds restore` an archived one")]
    Exists { name: String, state: &'static str },
    #[error("no feed named `{name}`{hint}")]
    Missing { name: String, hint: String },
}

/// A feed file and where it is.
#[derive(Debug, Clone)]
pub struct StoredFeed {
    pub state: FeedState,
    pub raw: RawFeed,
    /// The file as stored.
    pub json: Value,
}

/// The feeds of one lake.
#[derive(Debug, Clone)]
pub struct FeedRegistry {
    lake: Lake,
}

impl FeedRegistry {
    pub fn new(lake: Lake) -> Self {
        FeedRegistry { lake }
    }

    fn dir(&self, state: FeedState) -> Path {
        self.lake.root().parts().chain([FEEDS_DIR.into(), state.dir().into()]).collect()
    }

    fn path(&self, state: FeedState, name: &str) -> Result<Path, FeedsError> {
        validate_feed_name(name)?;
        Ok(self.dir(state).clone().join(format!("{name}.json")))
    }

    fn store_error(path: &Path) -> impl FnOnce(object_store::Error) -> FeedsError + '_ {
        move |source| FeedsError::Store { path: path.to_string(), source }
    }

    /// Validates a new feed (with `defaults` for what it leaves out) and stores it as active,
    /// create-only: a name taken by an active or archived feed is refused.
    pub async fn add(&self, raw: &RawFeed, defaults: &RawFeedSettings) -> Result<FeedConfig, FeedsError> {
        let feed = crate::config::validate::validate_feed(&format!("feed `{}`", raw.name), raw, defaults)?;
        if self.find(&raw.name).await?.is_some_and(|found| found.state == FeedState::Archived) {
            return Err(FeedsError::Exists { name: raw.name.clone(), state: "archived" });
        }
        let path = self.path(FeedState::Active, &raw.name)?;
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.lake.store().put_opts(&path, PutPayload::from(to_json(raw)), options).await {
            Ok(_) => Ok(feed),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(FeedsError::Exists { name: raw.name.clone(), state: "active" })
            }
            Err(source) => Err(FeedsError::Store { path: path.to_string(), source }),
        }
    }

    /// Every feed file, active first, by name. A file that cannot be read as a feed is left
    /// out and named in the second list with the reason, so one bad file stops nothing else.
    pub async fn list(&self) -> Result<(Vec<StoredFeed>, Vec<(String, String)>), FeedsError> {
        let mut feeds = Vec::new();
        let mut problems = Vec::new();
        for state in [FeedState::Active, FeedState::Archived] {
            let dir = self.dir(state);
            let objects: Vec<_> =
                self.lake.store().list(Some(&dir)).try_collect().await.map_err(Self::store_error(&dir))?;
            let mut names: Vec<String> = objects
                .iter()
                .filter_map(|object| object.location.filename()?.strip_suffix(".json").map(str::to_string))
                .filter(|name| validate_feed_name(name).is_ok())
                .collect();
            names.sort();
            for name in names {
                match self.read(state, &name).await {
                    Ok(Some(feed)) => feeds.push(feed),
                    Ok(None) => {}
                    Err(FeedsError::Corrupt { path, reason }) => problems.push((path, reason)),
                    Err(error) => return Err(error),
                }
            }
        }
        Ok((feeds, problems))
    }

    /// The names of archived feeds.
    pub async fn archived_names(&self) -> Result<Vec<String>, FeedsError> {
        let dir = self.dir(FeedState::Archived);
        let objects: Vec<_> =
            self.lake.store().list(Some(&dir)).try_collect().await.map_err(Self::store_error(&dir))?;
        Ok(objects.iter().filter_map(|o| o.location.filename()?.strip_suffix(".json").map(str::to_string)).collect())
    }

    async fn read(&self, state: FeedState, name: &str) -> Result<Option<StoredFeed>, FeedsError> {
        let path = self.path(state, name)?;
        let bytes = match self.lake.store().get(&path).await {
            Ok(result) => result.bytes().await.map_err(Self::store_error(&path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(FeedsError::Store { path: path.to_string(), source }),
        };
        let corrupt = |reason: String| FeedsError::Corrupt { path: path.to_string(), reason };
        let json: Value = serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
        let raw: RawFeed = serde_json::from_value(json.clone()).map_err(|error| corrupt(error.to_string()))?;
        if raw.name != name {
            return Err(corrupt(format!("it names the feed `{}`", raw.name)));
        }
        Ok(Some(StoredFeed { state, raw, json }))
    }

    /// The feed called `name`, active or archived.
    pub async fn find(&self, name: &str) -> Result<Option<StoredFeed>, FeedsError> {
        validate_feed_name(name)?;
        for state in [FeedState::Active, FeedState::Archived] {
            if let Some(feed) = self.read(state, name).await? {
                return Ok(Some(feed));
            }
        }
        Ok(None)
    }

    async fn require(&self, name: &str, state: FeedState) -> Result<StoredFeed, FeedsError> {
        match self.find(name).await? {
            Some(feed) if feed.state == state => Ok(feed),
            Some(feed) => Err(FeedsError::Missing {
                name: name.to_string(),
                hint: match feed.state {
                    FeedState::Archived => " among the active feeds: it is archived (`feeds restore` it first)".into(),
                    FeedState::Active => " among the archived feeds: it is active".into(),
                },
            }),
            None => Err(FeedsError::Missing { name: name.to_string(), hint: String::new() }),
        }
    }

    /// Sets `enabled` on an active feed; `Ok(false)` when it already had that value.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, FeedsError> {
        let mut feed = self.require(name, FeedState::Active).await?;
        if feed.raw.enabled.unwrap_or(true) == enabled {
            return Ok(false);
        }
        feed.raw.enabled = Some(enabled);
        let path = self.path(FeedState::Active, name)?;
        self.lake.store().put(&path, PutPayload::from(to_json(&feed.raw))).await.map_err(Self::store_error(&path))?;
        Ok(true)
    }

    /// Moves an active feed to `archived/` with `"enabled": false`; its data stays where it is.
    /// The archived file is written before the active one is deleted, so a crash between the
    /// two leaves the feed in both places, which `list` shows and `archive` finishes.
    pub async fn archive(&self, name: &str) -> Result<(), FeedsError> {
        let mut feed = self.require(name, FeedState::Active).await?;
        feed.raw.enabled = Some(false);
        let archived = self.path(FeedState::Archived, name)?;
        self.lake
            .store()
            .put(&archived, PutPayload::from(to_json(&feed.raw)))
            .await
            .map_err(Self::store_error(&archived))?;
        let active = self.path(FeedState::Active, name)?;
        self.lake.store().delete(&active).await.map_err(Self::store_error(&active))?;
        Ok(())
    }

    /// Moves an archived feed back to `active/`, still disabled: `feeds enable` starts it.
    pub async fn restore(&self, name: &str) -> Result<(), FeedsError> {
        let feed = self.require(name, FeedState::Archived).await?;
        let active = self.path(FeedState::Active, name)?;
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.lake.store().put_opts(&active, PutPayload::from(to_json(&feed.raw)), options).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(source) => return Err(FeedsError::Store { path: active.to_string(), source }),
        }
        let archived = self.path(FeedState::Archived, name)?;
        self.lake.store().delete(&archived).await.map_err(Self::store_error(&archived))?;
        Ok(())
    }

    /// The active, enabled feeds, validated with `defaults`. A feed that does not validate is
    /// reported by name, and the others still run.
    pub async fn enabled_feeds(
        &self,
        defaults: &RawFeedSettings,
    ) -> Result<(BTreeMap<String, FeedConfig>, Vec<(String, String)>), FeedsError> {
        let mut feeds = BTreeMap::new();
        let (stored, mut invalid) = self.list().await?;
        for stored in stored {
            if stored.state != FeedState::Active || !stored.raw.enabled.unwrap_or(true) {
                continue;
            }
            let prefix = format!("feed `{}`", stored.raw.name);
            match crate::config::validate::validate_feed(&prefix, &stored.raw, defaults) {
                Ok(feed) => {
                    feeds.insert(feed.name.clone(), feed);
                }
                Err(error) => invalid.push((stored.raw.name.clone(), error.to_string())),
            }
        }
        Ok((feeds, invalid))
    }
}

/// A feed file's bytes: the keys that are set, pretty-printed.
fn to_json(raw: &RawFeed) -> Vec<u8> {
    let mut value = serde_json::to_value(raw).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.retain(|_, value| !value.is_null());
    }
    let mut bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}
