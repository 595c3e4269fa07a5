//! The operations endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (every feed streams and the lake accepts writes; 503 with the reason otherwise) and
//! `/feeds` (each feed's state and figures as JSON; no secret is ever in it) and `/`, a status
//! page for a browser built on `/feeds`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{FeedState, Health, Metrics};

/// Binds the endpoint and serves it until `shutdown` is cancelled. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "metrics endpoint accept failed");
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &metrics, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(%error, "metrics connection ended");
                }
            });
        }
    });
    Ok(address)
}

fn respond(request: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let (ready, body) = health.report();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            reply(status, "application/json", format!("{body}\n"))
        }
        "/feeds" => reply(StatusCode::OK, "application/json", format!("{}\n", feeds(metrics, health))),
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE.to_string()),
        _ => {
            reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /, /metrics, /healthz, /readyz, /feeds\n".into())
        }
    }
}

/// `/`: a self-contained status page (no external assets) that reads `/feeds` every 2 s.
const STATUS_PAGE: &str = include_str!("http/status.html");

/// `/feeds`: per feed its definition, state, last error and the figures an operator checks.
pub fn feeds(metrics: &Metrics, health: &Health) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let time = |seconds: f64| {
        (seconds > 0.0)
            .then(|| chrono::DateTime::from_timestamp_millis((seconds * 1000.0) as i64))
            .flatten()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let feeds: Vec<serde_json::Value> = health
        .feeds()
        .into_iter()
        .map(|crate::metrics::FeedStatus { name, state, info, store_error }| {
            let one = [name.as_str()];
            let watermark = metrics.event_time_watermark.with_label_values(&one).get();
            let last_error = match &state {
                Some(FeedState::Reconnecting { reason } | FeedState::Standby { reason }) => Some(reason.clone()),
                Some(FeedState::Failed { error }) => Some(error.clone()),
                _ => None,
            }
            .or(store_error);
            serde_json::json!({
                "feed": name,
                "kind": info.as_ref().map(|info| info.kind),
                "source": info.as_ref().map(|info| info.source.clone()),
                "delivery": info.as_ref().map(|info| info.delivery),
                "state": state,
                "rows_received": metrics.rows_received.with_label_values(&one).get(),
                "rows_written": metrics.rows_written.with_label_values(&one).get(),
                "last_row_received": time(metrics.last_row_timestamp.with_label_values(&one).get()),
                "last_commit": time(metrics.last_commit_timestamp.with_label_values(&one).get()),
                "buffered_rows": metrics.buffered_rows.with_label_values(&one).get(),
                "buffered_bytes": metrics.buffered_bytes.with_label_values(&one).get(),
                "open_partitions": metrics.open_partitions.with_label_values(&one).get(),
                "event_time_watermark": time(watermark),
                "lag_seconds": (watermark > 0.0).then(|| ((now - watermark) * 1000.0).round() / 1000.0),
                "oldest_buffered_seconds": metrics.oldest_buffered_seconds.with_label_values(&one).get(),
                "last_error": last_error,
            })
        })
        .collect();
    serde_json::json!({ "feeds": feeds })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
