//! Wires the service: one source stage and one buffer stage per enabled feed, joined by a
//! bounded channel, sharing one ksqlDB client, one lake writer and one memory budget.
//!
//! ```text
//! FeedSource (push query → Arrow)  ──mpsc(4)──►  FeedSink (route → buffers → commit)  ──► LakeWriter
//!      decode on a runtime worker                  encode on the blocking pool
//! ```
//!
//! Shutdown is "end the input": the token stops every source, each source drops its sender,
//! each sink drains its buffers with reason `shutdown` and returns.

pub mod changelog;
#[cfg(feature = "simulator")]
pub mod demo;
mod events;
pub mod export;
pub mod query;
pub(crate) mod sink;
pub(crate) mod source;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{self, Config, FeedConfig};
use crate::defaults;
use crate::ksqldb::client::KsqlClient;
use crate::lake::lease::Lease;
use crate::lake::{
    self, CommitState, LakeWriter, MemoryBudget, PartitionBuffers, PartitionSpec, RowRouter, WriterOptions,
};
use crate::metrics::{Health, Metrics};
use events::FeedMetrics;
use sink::FeedSink;
use source::{FeedSource, SourceSettings};

/// Batches in flight between a feed's source and buffer stages.
const CHANNEL_BATCHES: usize = 4;

/// What a run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    pub rows_written: u64,
    pub files_written: u64,
}

/// Knobs tests and the demo turn; production uses the defaults.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How often age and partition-close triggers are evaluated.
    pub tick: Duration,
    /// A partly filled batch leaves the source after this long.
    pub linger: Duration,
    /// Overrides the config's reconnect backoff (tests use tiny delays).
    pub reconnect_backoff: Option<Backoff>,
    /// Backoff between commit attempts while the lake fails.
    pub write_retry: Backoff,
    /// Serve /metrics, /healthz, /readyz.
    pub serve_http: bool,
    /// A lake opened by the caller (tests wrap stores with fault injection); else the
    /// config's `[lake]` is opened.
    pub lake: Option<lake::Lake>,
    /// How often the feeds in the lake (`<lake>/feeds/active/`) are read again.
    pub reload_interval: Duration,
    /// Run the feeds kept in the lake too (`export` runs only the feeds it was given).
    pub lake_feeds: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            tick: Duration::from_millis(250),
            linger: Duration::from_millis(200),
            reconnect_backoff: None,
            write_retry: Backoff {
                initial: defaults::WRITE_RETRY_INITIAL,
                max: defaults::WRITE_RETRY_MAX,
                multiplier: 2.0,
            },
            serve_http: true,
            lake: None,
            reload_interval: defaults::FEEDS_RELOAD_INTERVAL,
            lake_feeds: true,
        }
    }
}

/// Runs every enabled feed until `shutdown` is cancelled, then flushes and commits within the
/// configured grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
    let metrics = Metrics::new(prometheus::Registry::new());
    run_with(config, shutdown, metrics, Health::default(), RunOptions::default()).await
}

pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    metrics: Metrics,
    health: Health,
    options: RunOptions,
) -> anyhow::Result<RunSummary> {
    let http_stop = CancellationToken::new();
    if options.serve_http {
        let address = crate::http::serve(config.http_listen, metrics.clone(), health.clone(), http_stop.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {}", config.http_listen))?;
        health.set_http_address(address);
        tracing::info!(%address, "serving /metrics, /healthz, /readyz");
    }
    let _stop_http = http_stop.drop_guard();

    let client = Arc::new(KsqlClient::new(config.ksqldb.client.clone()).context("ksqlDB client")?);
    let url = crate::config::redact_url(config.ksqldb.client.url.as_str());
    // Only informative: a server that accepts but does not answer must not hold up the start.
    match tokio::time::timeout(Duration::from_secs(10), client.info()).await {
        Ok(Ok(info)) => tracing::info!(version = %info.version, %url, "connected to ksqlDB"),
        Ok(Err(error)) => tracing::warn!(error = %error.with_causes(), %url, "ksqlDB /info failed; feeds will retry"),
        Err(_) => tracing::warn!(%url, "ksqlDB /info did not answer within 10 s; feeds will retry"),
    }
    let lake = match options.lake.clone() {
        Some(lake) => lake,
        None => lake::open_lake(&config.lake.url, &config.lake.store).context("opening the lake")?,
    };
    let budget = MemoryBudget::new(config.memory_budget_bytes);
    metrics.memory_budget_bytes.set(config.memory_budget_bytes as f64);
    metrics.store_up.set(1.0);

    let ctx =
        Arc::new(FeedContext { config: config.clone(), client, lake: lake.clone(), budget, metrics, health, options });
    let registry = crate::feeds::FeedRegistry::new(lake);
    let feeds_stop = shutdown.child_token();
    let mut feeds = Feeds::default();
    // a table feed with `changelog = true` runs with its changelog feed beside it
    let wanted: Vec<FeedConfig> =
        config.feeds.iter().filter(|feed| feed.enabled).flat_map(FeedConfig::with_changelog).collect();
    for feed in &wanted {
        if !config.runs_here(&feed.name) {
            tracing::info!(feed = %feed.name, replicas = config.cluster.0, ordinal = config.cluster.1,
                "feed runs on another replica");
            continue;
        }
        // A feed of the config file that cannot start stops the service at once.
        let prepared = prepare_feed(&ctx, feed).await?;
        feeds.spawn(&ctx, prepared, Origin::ConfigFile, &feeds_stop);
    }

    // Run until SIGTERM, or until every feed has stopped on its own (permanent errors): then
    // the process exits 1 with the first reason, so the orchestrator restarts it and shows it
    // failing, instead of a pod that looks alive and ingests nothing. Feeds stopped on
    // purpose (disabled or archived in the lake) do not count.
    let mut reload = tokio::time::interval(ctx.options.reload_interval);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(ended) = feeds.tasks.join_next_with_id(), if !feeds.tasks.is_empty() => feeds.ended(ended, &ctx.health),
            _ = reload.tick(), if ctx.options.lake_feeds => {
                reload_lake_feeds(&ctx, &registry, &mut feeds, &feeds_stop, &mut reported).await;
                feeds.restart_pending = false;
            }
        }
        if feeds.running.is_empty() && feeds.ended_on_their_own && !feeds.restart_pending && !shutdown.is_cancelled() {
            let reason = feeds.failure.take().unwrap_or_else(|| anyhow::anyhow!("every feed ended"));
            return Err(reason.context("every feed has stopped; nothing is being ingested"));
        }
    }
    ctx.health.set_shutting_down();
    tracing::info!(grace = ?config.shutdown_grace, "flushing every buffer before exit");
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while let Some(ended) = feeds.tasks.join_next_with_id().await {
            feeds.ended(ended, &ctx.health);
        }
        (feeds.summary, feeds.failure)
    })
    .await;
    match drained {
        Ok((summary, None)) => Ok(summary),
        Ok((_, Some(error))) => Err(error),
        Err(_) => anyhow::bail!(
            "buffers were not committed within the {:?} grace period; uncommitted rows are read again from ksqlDB on restart",
            config.shutdown_grace
        ),
    }
}

/// What every feed of a run shares.
struct FeedContext {
    config: Config,
    client: Arc<KsqlClient>,
    lake: lake::Lake,
    budget: Arc<MemoryBudget>,
    metrics: Metrics,
    health: Health,
    options: RunOptions,
}

/// Where a running feed was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    ConfigFile,
    Lake,
}

/// A feed ready to start: its writer and commit state are read (stream feeds).
enum PreparedFeed {
    /// The feed's lease is held and its commit state read.
    Stream {
        feed: FeedConfig,
        writer: Arc<LakeWriter>,
        committed: CommitState,
        lease: Lease,
        renewal: Renewal,
    },
    /// Another process holds the feed's lease: wait for it, then read the commit state.
    Waiting {
        feed: FeedConfig,
        lease: Lease,
    },
    Table {
        feed: FeedConfig,
        writer: lake::SnapshotWriter,
        settings: table::TableSettings,
    },
}

/// How one feed ended.
enum FeedEnd {
    /// What the sink committed, and the first error of the source or the sink.
    Stream {
        summary: Option<sink::SinkSummary>,
        failure: Option<anyhow::Error>,
    },
    Table {
        rows: u64,
    },
}

/// A running feed.
struct FeedHandle {
    feed: FeedConfig,
    origin: Origin,
    /// Cancelled to stop the feed on purpose (flush and commit first).
    stop: CancellationToken,
}

/// The running feeds and what the ended ones did.
#[derive(Default)]
struct Feeds {
    running: std::collections::BTreeMap<String, FeedHandle>,
    tasks: tokio::task::JoinSet<(String, FeedEnd)>,
    /// The feed of each task, to clean up after one that panicked.
    task_names: std::collections::HashMap<tokio::task::Id, String>,
    /// A lake feed stopped on purpose may start again at the next reload: until then an
    /// empty `running` is not "every feed has stopped".
    restart_pending: bool,
    summary: RunSummary,
    failure: Option<anyhow::Error>,
    /// A feed ended without being asked to.
    ended_on_their_own: bool,
    /// Lake feeds that ended on their own, with the definition they failed with: not started
    /// again until their definition changes.
    failed: std::collections::BTreeMap<String, FeedConfig>,
}

impl Feeds {
    fn spawn(&mut self, ctx: &Arc<FeedContext>, prepared: PreparedFeed, origin: Origin, parent: &CancellationToken) {
        let stop = parent.child_token();
        let feed = match &prepared {
            PreparedFeed::Stream { feed, .. }
            | PreparedFeed::Waiting { feed, .. }
            | PreparedFeed::Table { feed, .. } => feed.clone(),
        };
        let name = feed.name.clone();
        ctx.metrics.init_feed(&name);
        let delivery = if feed.kind == lake::FeedKind::Table { "snapshot" } else { feed.settings.delivery.as_str() };
        ctx.health.set_feed_info(
            &name,
            crate::metrics::FeedInfo { kind: feed.kind.as_str(), source: feed.source.clone(), delivery },
        );
        let task_name = name.clone();
        let handle = match prepared {
            PreparedFeed::Table { feed, writer, settings } => {
                let task = table::run_table_feed(
                    ctx.client.clone(),
                    writer,
                    settings,
                    feed.settings.snapshot_interval,
                    ctx.metrics.clone(),
                    ctx.health.clone(),
                    stop.clone(),
                );
                self.tasks.spawn(async move { (task_name, FeedEnd::Table { rows: task.await }) })
            }
            PreparedFeed::Stream { feed, writer, committed, lease, renewal } => {
                let task = run_stream_feed(ctx.clone(), feed, Some((writer, committed, renewal)), lease, stop.clone());
                self.tasks.spawn(async move { (task_name, task.await) })
            }
            PreparedFeed::Waiting { feed, lease } => {
                let task = run_stream_feed(ctx.clone(), feed, None, lease, stop.clone());
                self.tasks.spawn(async move { (task_name, task.await) })
            }
        };
        self.task_names.insert(handle.id(), name.clone());
        tracing::info!(feed = %name, origin = ?origin, "feed started");
        self.running.insert(name, FeedHandle { feed, origin, stop });
    }

    fn ended(&mut self, ended: Result<(tokio::task::Id, (String, FeedEnd)), tokio::task::JoinError>, health: &Health) {
        let (name, end) = match ended {
            Ok((id, ended)) => {
                self.task_names.remove(&id);
                ended
            }
            Err(error) => {
                let name = self.task_names.remove(&error.id()).unwrap_or_default();
                let panicked = anyhow::anyhow!("the task of feed {name} panicked: {error}");
                health.set_feed(&name, crate::metrics::FeedState::Failed { error: panicked.to_string() });
                self.failure.get_or_insert(panicked);
                self.ended_on_their_own = true;
                if let Some(handle) = self.running.remove(&name) {
                    handle.stop.cancel();
                    if handle.origin == Origin::Lake {
                        self.failed.insert(name, handle.feed);
                    }
                }
                return;
            }
        };
        let handle = self.running.remove(&name);
        let on_purpose = handle.as_ref().is_some_and(|handle| handle.stop.is_cancelled());
        if !on_purpose {
            self.ended_on_their_own = true;
            if let Some(handle) = handle.filter(|handle| handle.origin == Origin::Lake) {
                tracing::error!(feed = %name, "feed defined in the lake stopped on its own; it starts again once its definition changes");
                self.failed.insert(name.clone(), handle.feed);
            }
        }
        match end {
            FeedEnd::Table { rows } => self.summary.rows_written += rows,
            FeedEnd::Stream { summary, failure } => {
                if let Some(done) = summary {
                    self.summary.rows_written += done.rows_written;
                    self.summary.files_written += done.files_written;
                }
                if let Some(error) = failure {
                    self.failure.get_or_insert(error);
                }
            }
        }
        if on_purpose {
            // stopped on purpose: not a feed /readyz waits for
            health.remove_feed(&name);
            self.restart_pending = true;
            tracing::info!(feed = %name, "feed stopped after its buffers were committed");
        }
    }
}

/// Reads what a feed needs before it starts: a crash may have left a written file the
/// metadata does not list, or a temp file; the commit state says where to resume.
async fn prepare_feed(ctx: &FeedContext, feed: &FeedConfig) -> anyhow::Result<PreparedFeed> {
    if feed.kind == lake::FeedKind::Table {
        let (writer, settings) = table_feed(&ctx.lake, feed, ctx.config.memory_budget_bytes, ctx.config.lake.lease)?;
        return Ok(PreparedFeed::Table { feed: feed.clone(), writer, settings });
    }
    let lease = Lease::new(
        ctx.lake.store().clone(),
        ctx.lake.feed_path(feed.kind, &feed.name, WRITER_LEASE)?,
        ctx.config.lake.lease,
    );
    match lease.acquire().await {
        Ok(()) => {}
        Err(error @ lake::lease::LeaseError::Busy { .. }) => {
            tracing::warn!(feed = %feed.name, %error, "waiting for the other writer's lease before writing this feed");
            return Ok(PreparedFeed::Waiting { feed: feed.clone(), lease });
        }
        Err(error) => return Err(anyhow::Error::new(error).context(format!("taking the lease of feed {}", feed.name))),
    }
    let renewal = Renewal::start(lease.clone(), feed.name.clone());
    match read_commit_state(ctx, feed).await {
        Ok((writer, committed)) => Ok(PreparedFeed::Stream { feed: feed.clone(), writer, committed, lease, renewal }),
        Err(error) => {
            renewal.finish().await;
            lease.release().await;
            Err(error)
        }
    }
}

/// The name of a stream feed's writer lease, next to its manifest.
const WRITER_LEASE: &str = "_writer.lease";

/// Runs one stream feed under its lease: waits for the lease first when another process holds
/// it (then reads the commit state, which that process may have moved), renews it while the
/// feed runs, and releases it once everything buffered is committed. Losing the lease (it
/// lapsed: the lake was unreachable for longer than it lasts) stops the feed.
async fn run_stream_feed(
    ctx: Arc<FeedContext>,
    feed: FeedConfig,
    ready: Option<(Arc<LakeWriter>, CommitState, Renewal)>,
    lease: Lease,
    stop: CancellationToken,
) -> FeedEnd {
    let stopped = FeedEnd::Stream { summary: None, failure: None };
    let (writer, committed, renewal) = match ready {
        Some(ready) => ready,
        None => {
            let retry = (lease.duration() / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match lease.acquire().await {
                    Ok(()) => break,
                    Err(error) => {
                        let reason = format!("waiting for the lease: {error}");
                        ctx.health.set_feed(&feed.name, crate::metrics::FeedState::Standby { reason });
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return stopped,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
            tracing::info!(feed = %feed.name, "took the feed's lease; resuming from what the lake holds now");
            let renewal = Renewal::start(lease.clone(), feed.name.clone());
            match read_commit_state(&ctx, &feed).await {
                Ok((writer, committed)) => (writer, committed, renewal),
                Err(error) => {
                    renewal.finish().await;
                    lease.release().await;
                    return FeedEnd::Stream { summary: None, failure: Some(error) };
                }
            }
        }
    };
    let (sender, receiver) = mpsc::channel(CHANNEL_BATCHES);
    let source = build_source(&ctx, &feed);
    let sink = build_sink(&feed, &writer, &ctx.budget, &ctx.metrics, &ctx.health, &ctx.options, committed.clone());
    let mut source_task = sink::AbortOnDrop(tokio::spawn(source.run(committed, sender, stop.clone())));
    // the lease is renewed until the last commit, and losing it stops everything at once:
    // what is buffered is not committed (the new holder reads it again)
    let sink = tokio::select! {
        result = sink.run(receiver) => result,
        _ = renewal.lost.cancelled() => {
            drop(source_task);
            let error = anyhow::anyhow!(
                "feed {} lost its lease to another process (or could not renew it in time); stopped without \
                 committing what it buffered, which the lease's holder reads again",
                feed.name
            );
            ctx.health.set_feed(&feed.name, crate::metrics::FeedState::Failed { error: error.to_string() });
            return FeedEnd::Stream { summary: None, failure: Some(error) };
        }
    };
    let source = match (&mut source_task.0).await {
        Ok(result) => result.err().map(anyhow::Error::from),
        Err(error) => Some(anyhow::anyhow!("the source task of feed {} panicked: {error}", feed.name)),
    };
    // everything put is committed: the next start-up has nothing to look for
    let closed = match &sink {
        Ok(_) => writer.close(feed.kind, &feed.name).await.err(),
        Err(_) => None,
    };
    if let Some(error) = &closed {
        tracing::warn!(feed = %feed.name, %error, "could not clear the writer's mark; the next start-up looks for leftovers");
    }
    renewal.finish().await;
    lease.release().await;
    let (summary, failure) = match sink {
        Ok(summary) => (Some(summary), source),
        Err(error) => (None, source.or(Some(error.into()))),
    };
    FeedEnd::Stream { summary, failure }
}

/// Renews a feed's lease six times per lease period until finished. `lost` is cancelled when
/// another process holds it. While the lake is unreachable renewals fail and are retried (a
/// lake outage must not stop the feed: its commits wait for the lake too); the first renewal
/// that gets through finds the lease still ours, or taken.
struct Renewal {
    lost: CancellationToken,
    done: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Renewal {
    fn start(lease: Lease, feed: String) -> Self {
        let lost = CancellationToken::new();
        let done = CancellationToken::new();
        let (signal, finished) = (lost.clone(), done.clone());
        let task = tokio::spawn(async move {
            let period = lease.duration();
            let mut tick = tokio::time::interval(period / 6);
            tick.tick().await;
            let mut renewed = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = finished.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match tokio::time::timeout(period / 3, lease.acquire()).await {
                    Ok(Ok(())) => renewed = std::time::Instant::now(),
                    Ok(Err(error @ lake::lease::LeaseError::Busy { .. })) => {
                        tracing::error!(feed = %feed, %error, "the feed's lease was lost to another process");
                        signal.cancel();
                        return;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(feed = %feed, %error, "could not renew the feed's lease; retrying")
                    }
                    Err(_) => tracing::warn!(feed = %feed, "renewing the feed's lease timed out; retrying"),
                }
                if renewed.elapsed() > period {
                    // the lake is unreachable: no commit gets through either, and the next
                    // renewal that does tells whether the lease is still ours
                    tracing::warn!(feed = %feed, since = ?renewed.elapsed(), "the feed's lease has not been renewed for a whole period");
                }
            }
        });
        Renewal { lost, done, task: Some(task) }
    }

    /// Stops renewing once no renewal is in flight, so a release that follows is not undone by
    /// a late renewal.
    async fn finish(mut self) {
        self.done.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Reconciles a stream feed with its files and reads where it resumes.
async fn read_commit_state(ctx: &FeedContext, feed: &FeedConfig) -> anyhow::Result<(Arc<LakeWriter>, CommitState)> {
    let kind = feed.kind;
    let duplicates_allowed = feed.settings.delivery == crate::config::Delivery::AtLeastOnce;
    let report = lake::reconcile_with(&ctx.lake, kind, &feed.name, duplicates_allowed)
        .await
        .with_context(|| format!("reconciling feed {} with its files", feed.name))?;
    if report.changed() {
        tracing::warn!(feed = %feed.name, adopted = ?report.adopted, removed_temp = ?report.removed_temp,
            unreadable = ?report.unreadable, "recovered from an interrupted run");
    }
    let writer =
        Arc::new(LakeWriter::new(ctx.lake.clone(), writer_options(&feed.settings)).with_budget(ctx.budget.clone()));
    writer.open(kind, &feed.name).await.with_context(|| format!("marking feed {} as being written", feed.name))?;
    let committed = writer
        .read_metadata(kind, &feed.name)
        .await
        .with_context(|| format!("reading the metadata of feed {}", feed.name))?
        .map(|metadata| metadata.commit_state())
        .unwrap_or_default();
    if !committed.low.is_empty() {
        tracing::info!(feed = %feed.name, positions = ?committed.low, "resuming after committed positions");
    }
    Ok((writer, committed))
}

/// A changelog feed treats its query as stalled after this many `idle_timeout`s of silence.
pub const CHANGELOG_IDLE_FACTOR: u32 = 4;

fn build_source(ctx: &FeedContext, feed: &FeedConfig) -> FeedSource {
    let config = &ctx.config;
    FeedSource {
        settings: SourceSettings {
            feed: feed.name.clone(),
            source: feed.source.clone(),
            delivery: feed.settings.delivery,
            batch_rows: feed.settings.batch_rows,
            linger: ctx.options.linger,
            // every reopen of a changelog replays the whole table: a quiet table waits longer
            idle_timeout: match feed.kind {
                lake::FeedKind::Changelog => config.ksqldb.idle_timeout.saturating_mul(CHANGELOG_IDLE_FACTOR),
                _ => config.ksqldb.idle_timeout,
            },
            error_policy: feed.settings.error_policy,
            max_rejected_per_minute: feed.settings.max_rejected_per_minute,
            max_line_bytes: feed.settings.max_line_bytes,
            changelog: (feed.kind == lake::FeedKind::Changelog).then_some(config.memory_budget_bytes / 4),
            event_time_column: match &feed.settings.event_time {
                config::EventTime::Column(name) => Some(name.clone()),
                config::EventTime::Rowtime | config::EventTime::ProcessingTime => None,
            },
            backoff: ctx.options.reconnect_backoff.unwrap_or(Backoff {
                initial: config.ksqldb.reconnect_backoff_initial,
                max: config.ksqldb.reconnect_backoff_max,
                multiplier: 2.0,
            }),
        },
        client: ctx.client.clone(),
        metrics: FeedMetrics::new(&ctx.metrics, &feed.name),
        health: ctx.health.clone(),
        budget: ctx.budget.clone(),
    }
}

/// Brings the feeds defined in the lake (`<lake>/feeds/active/`) in line with what runs:
/// starts added and enabled ones, stops (flush, commit) disabled, archived and removed ones,
/// and restarts a changed one once its old run has stopped. A name the config file also
/// defines is an error, reported once, and the lake's feed is not run.
async fn reload_lake_feeds(
    ctx: &Arc<FeedContext>,
    registry: &crate::feeds::FeedRegistry,
    feeds: &mut Feeds,
    parent: &CancellationToken,
    reported: &mut std::collections::BTreeMap<String, String>,
) {
    let report = |reported: &mut std::collections::BTreeMap<String, String>, name: &str, problem: String| {
        if reported.get(name) != Some(&problem) {
            tracing::error!(feed = %name, problem = %problem, "feed in the lake not run");
            reported.insert(name.to_string(), problem);
        }
    };
    let (wanted, invalid) = match registry.enabled_feeds(&ctx.config.feed_defaults).await {
        Ok(found) => found,
        Err(error) => {
            report(reported, "*", format!("cannot read the feeds in the lake: {error}"));
            return;
        }
    };
    for (name, problem) in invalid {
        report(reported, &name, problem);
    }
    let wanted: std::collections::BTreeMap<String, FeedConfig> =
        wanted.values().flat_map(FeedConfig::with_changelog).map(|feed| (feed.name.clone(), feed)).collect();
    let in_config: Vec<String> =
        ctx.config.feeds.iter().flat_map(FeedConfig::with_changelog).map(|feed| feed.name).collect();
    // stop what is no longer wanted, or wanted differently
    for (name, handle) in &feeds.running {
        if handle.origin != Origin::Lake || handle.stop.is_cancelled() {
            continue;
        }
        if wanted.get(name) != Some(&handle.feed) {
            tracing::info!(feed = %name, "feed disabled, archived or changed in the lake; stopping it");
            handle.stop.cancel();
        }
    }
    let wanted: std::collections::BTreeMap<String, FeedConfig> =
        wanted.into_iter().filter(|(name, _)| ctx.config.runs_here(name)).collect();
    for (name, feed) in wanted.clone() {
        if in_config.iter().any(|known| known.eq_ignore_ascii_case(&name)) {
            report(reported, &name, "the config file defines a feed of the same name: remove one of the two".into());
            continue;
        }
        if feeds.running.contains_key(&name) || feeds.failed.get(&name) == Some(&feed) {
            continue;
        }
        feeds.failed.remove(&name);
        match prepare_feed(ctx, &feed).await {
            Ok(prepared) => {
                reported.remove(&name);
                feeds.spawn(ctx, prepared, Origin::Lake, parent);
            }
            Err(error) => report(reported, &name, format!("{error:#}")),
        }
    }
}

fn build_sink(
    feed: &FeedConfig,
    writer: &Arc<LakeWriter>,
    budget: &Arc<MemoryBudget>,
    metrics: &Metrics,
    health: &Health,
    options: &RunOptions,
    committed: CommitState,
) -> FeedSink {
    let settings = &feed.settings;
    let spec = PartitionSpec::new(settings.partitioning, settings.timezone);
    let event_time = match &settings.event_time {
        config::EventTime::Rowtime => lake::EventTime::Column(query::ROWTIME.to_string()),
        config::EventTime::Column(name) => lake::EventTime::Column(name.clone()),
        config::EventTime::ProcessingTime => lake::EventTime::ProcessingTime,
    };
    let router = RowRouter::new(spec, event_time).with_invalid_event_time(settings.invalid_event_time);
    let policy = lake::FlushPolicy {
        max_rows: settings.flush_max_rows as usize,
        max_bytes: settings.flush_max_bytes,
        max_age: settings.flush_max_age,
        allowed_lateness: settings.allowed_lateness,
    };
    let buffers =
        PartitionBuffers::new(feed.name.clone(), feed.kind, spec, policy, budget.clone()).resuming_from(committed);
    FeedSink {
        feed: feed.name.clone(),
        router,
        buffers,
        writer: writer.clone(),
        budget: budget.clone(),
        metrics: FeedMetrics::new(metrics, &feed.name),
        health: health.clone(),
        retry: options.write_retry,
        tick: options.tick,
    }
}

/// The snapshot writer and settings of a table feed.
pub fn table_feed(
    lake: &lake::Lake,
    feed: &FeedConfig,
    budget_bytes: u64,
    lease: Duration,
) -> anyhow::Result<(lake::SnapshotWriter, table::TableSettings)> {
    let settings = &feed.settings;
    let writer = lake::SnapshotWriter::new(
        lake.clone(),
        &feed.name,
        writer_options(settings).parquet,
        settings.retention_versions,
    )?
    .with_lease(lease)
    .holding();
    let table = table::TableSettings {
        feed: feed.name.clone(),
        source: feed.source.clone(),
        method: settings.snapshot_method,
        file_rows: settings.flush_max_rows as usize,
        file_bytes: settings.flush_max_bytes as usize,
        idle: defaults::CHANGELOG_IDLE,
        first_row: defaults::CHANGELOG_FIRST_ROW,
        budget_bytes,
    };
    Ok((writer, table))
}

/// Each feed has its own writer: compression and row groups are per-feed settings.
fn writer_options(settings: &config::FeedSettings) -> WriterOptions {
    WriterOptions {
        parquet: lake::ParquetOptions {
            compression: settings.compression,
            row_group_rows: settings.row_group_rows,
            dictionary: true,
        },
        ..WriterOptions::default()
    }
}

/// `ksql-lake check`: each line is what was tried and how it went.
pub async fn check(config: &Config) -> Vec<(String, Result<String, String>)> {
    let mut report = Vec::new();
    let client = KsqlClient::new(config.ksqldb.client.clone());
    match &client {
        Ok(client) => match tokio::time::timeout(Duration::from_secs(15), client.info())
            .await
            .unwrap_or_else(|_| Err(crate::ksqldb::client::ClientError::Config("no answer within 15 s".into())))
        {
            Ok(info) => {
                report.push((format!("ksqlDB {}", config.ksqldb.client.url), Ok(format!("version {}", info.version))))
            }
            Err(error) => report.push((format!("ksqlDB {}", config.ksqldb.client.url), Err(error.with_causes()))),
        },
        Err(error) => report.push(("ksqlDB client".into(), Err(error.to_string()))),
    }
    if config.feeds.is_empty() {
        report.push(("feeds".into(), Err("no [[feeds]] are configured: nothing would be ingested".into())));
    }
    if let Ok(client) = &client {
        for feed in config.feeds.iter().filter(|feed| feed.enabled) {
            report.push((format!("feed {} source {}", feed.name, feed.source), probe_source(client, feed).await));
        }
    }
    match lake::open_lake(&config.lake.url, &config.lake.store) {
        Ok(lake) => {
            match probe(&lake).await {
                Ok(()) => report.push((format!("lake {}", config.lake.url), Ok("writable and readable".into()))),
                Err(error) => report.push((format!("lake {}", config.lake.url), Err(error))),
            }
            let writer = LakeWriter::new(lake, WriterOptions::default());
            for feed in &config.feeds {
                let label = format!("feed {} metadata", feed.name);
                match writer.read_metadata(feed.kind, &feed.name).await {
                    Ok(Some(metadata)) => {
                        report.push((label, Ok(format!("{} rows committed", metadata.total_records))))
                    }
                    Ok(None) => report.push((label, Ok("new feed".into()))),
                    Err(error) => report.push((label, Err(format!("{error:#}")))),
                }
            }
        }
        Err(error) => report.push((format!("lake {}", config.lake.url), Err(format!("{error:#}")))),
    }
    report
}

/// Opens the feed's push query just long enough to read its header: the source exists, the
/// statement is accepted, and the `timestamp_column` is a usable column of it.
async fn probe_source(client: &KsqlClient, feed: &FeedConfig) -> Result<String, String> {
    let delivery = feed.settings.delivery;
    let (sql, properties) = query::push_query(&feed.source, delivery, &lake::Positions::new());
    let request = crate::ksqldb::client::QueryRequest { sql, properties, ..Default::default() };
    let opened = tokio::time::timeout(Duration::from_secs(15), client.stream_query(request))
        .await
        .map_err(|_| "no answer within 15 s".to_string())?
        .map_err(|error| error.with_causes())?;
    let columns = opened.header().columns.clone();
    let query_id = opened.query_id().map(str::to_string);
    drop(opened);
    if let Some(query_id) = query_id {
        client.close_query(&query_id).await;
    }
    let event_time = match &feed.settings.event_time {
        config::EventTime::Column(name) => Some(name.as_str()),
        _ => None,
    };
    if let Some(problem) = query::event_time_problem(event_time, &feed.source, &columns) {
        return Err(problem);
    }
    let names: Vec<&str> = columns.iter().map(|column| column.name.as_str()).collect();
    let mut found = format!("{} columns: {}", columns.len(), names.join(", "));
    // The key columns, where the server answers DESCRIBE (the query header does not say).
    if let Ok(Ok(described)) = tokio::time::timeout(Duration::from_secs(10), client.describe(&feed.source)).await {
        let keys: Vec<&str> = described.iter().filter(|(_, key)| *key).map(|(name, _)| name.as_str()).collect();
        if !keys.is_empty() {
            found.push_str(&format!("; key: {}", keys.join(", ")));
        }
    }
    Ok(found)
}

/// Writes, reads back and deletes a small object under `_ksql_lake_check/` (and, on a local
/// lake, the folder it made).
async fn probe(lake: &lake::Lake) -> Result<(), String> {
    use object_store::ObjectStoreExt;
    let name = lake::layout::ulid(chrono::Utc::now().timestamp_millis());
    let path = object_store::path::Path::from(format!("{}/_ksql_lake_check/{name}", lake.root()));
    let payload = bytes::Bytes::from_static(b"ksql-lake check");
    lake.store().put(&path, payload.clone().into()).await.map_err(|error| match error {
        // S3 answers a PUT into a missing bucket with 404 NoSuchBucket.
        object_store::Error::NotFound { .. } => {
            format!("write failed: the bucket (or container) of {} does not exist", lake)
        }
        other => format!("write failed: {other}"),
    })?;
    let read = lake.store().get(&path).await.map_err(|error| format!("read failed: {error}"))?;
    let body = read.bytes().await.map_err(|error| format!("read failed: {error}"))?;
    lake.store().delete(&path).await.map_err(|error| format!("delete failed: {error}"))?;
    if let Some(local) = lake.local_dir() {
        let _ = std::fs::remove_dir(local.join(lake.root().as_ref()).join("_ksql_lake_check"));
    }
    if body != payload {
        return Err("read back different bytes".into());
    }
    Ok(())
}
