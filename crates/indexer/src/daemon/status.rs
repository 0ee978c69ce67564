//! The daemon's counters and the optional status endpoint that serves them.
//!
//! [`Metrics`] is a set of atomics the run loop updates; [`serve`] answers `GET /metrics` with them in the
//! Prometheus text format (version 0.0.4) and `GET /healthz` with `ok`. The endpoint is deliberately tiny (one
//! request per connection, a capped request head, a read timeout) because it is meant for a local scraper or a
//! container health check, and it binds only to loopback unless the configuration explicitly allows otherwise.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A request head longer than this is refused: the two routes need a few dozen bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters (monotonic since the daemon started) and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
    pub runs_interrupted: AtomicU64,
    pub models_indexed: AtomicU64,
    pub models_failed: AtomicU64,
    pub models_vanished: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub requests_api: AtomicU64,
    pub requests_resolvers: AtomicU64,
    pub requests_cdn: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rate_limit_wait_ms: AtomicU64,
    pub solves: AtomicU64,
    pub families_resolved: AtomicU64,
    pub models_in_store: AtomicI64,
    /// Repos being signed right now.
    pub models_in_flight: AtomicI64,
    /// Unix seconds of the last finished run, 0 before any.
    pub last_run_timestamp: AtomicI64,
    pub last_success_timestamp: AtomicI64,
    pub running: AtomicBool,
}

impl Metrics {
    /// Copies the Hub client's cumulative request counters (the client lives as long as the daemon).
    pub fn set_requests(&self, stats: &hub::Stats) {
        self.requests_api.store(stats.api_requests, Ordering::Relaxed);
        self.requests_resolvers.store(stats.resolver_requests, Ordering::Relaxed);
        self.requests_cdn.store(stats.cdn_requests, Ordering::Relaxed);
        self.retries.store(stats.retries, Ordering::Relaxed);
        self.rate_limited.store(stats.rate_limited, Ordering::Relaxed);
        self.rate_limit_wait_ms.store(u64::try_from(stats.waited.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "modeltree_runs_total",
            "counter",
            "Daemon runs finished, by status.",
            &[
                ("{status=\"ok\"}", get(&self.runs_ok).to_string()),
                ("{status=\"failed\"}", get(&self.runs_failed).to_string()),
                ("{status=\"interrupted\"}", get(&self.runs_interrupted).to_string()),
            ],
        );
        family(
            "modeltree_models_indexed_total",
            "counter",
            "Models signed and stored.",
            &[("", get(&self.models_indexed).to_string())],
        );
        family(
            "modeltree_model_failures_total",
            "counter",
            "Model attempts that failed (recorded and retried later).",
            &[("", get(&self.models_failed).to_string())],
        );
        family(
            "modeltree_models_vanished_total",
            "counter",
            "Models marked vanished.",
            &[("", get(&self.models_vanished).to_string())],
        );
        family(
            "modeltree_bytes_fetched_total",
            "counter",
            "Bytes fetched from the Hub for signing.",
            &[("", get(&self.bytes_fetched).to_string())],
        );
        family(
            "modeltree_hub_requests_total",
            "counter",
            "Hub requests sent, retries included, by bucket.",
            &[
                ("{bucket=\"api\"}", get(&self.requests_api).to_string()),
                ("{bucket=\"resolvers\"}", get(&self.requests_resolvers).to_string()),
                ("{bucket=\"cdn\"}", get(&self.requests_cdn).to_string()),
            ],
        );
        family(
            "modeltree_hub_retries_total",
            "counter",
            "Hub requests retried.",
            &[("", get(&self.retries).to_string())],
        );
        family(
            "modeltree_hub_rate_limited_total",
            "counter",
            "429 answers received.",
            &[("", get(&self.rate_limited).to_string())],
        );
        family(
            "modeltree_rate_limit_wait_seconds_total",
            "counter",
            "Time spent waiting for rate-limit budget.",
            &[("", format!("{:.3}", get(&self.rate_limit_wait_ms) as f64 / 1000.0))],
        );
        family(
            "modeltree_lineage_solves_total",
            "counter",
            "Lineage solves run.",
            &[("", get(&self.solves).to_string())],
        );
        family(
            "modeltree_families_resolved_total",
            "counter",
            "Families whose lineage was re-solved.",
            &[("", get(&self.families_resolved).to_string())],
        );
        family(
            "modeltree_models_in_store",
            "gauge",
            "Models in the store (any status).",
            &[("", self.models_in_store.load(Ordering::Relaxed).to_string())],
        );
        family(
            "modeltree_models_in_flight",
            "gauge",
            "Models being signed right now.",
            &[("", self.models_in_flight.load(Ordering::Relaxed).to_string())],
        );
        family(
            "modeltree_last_run_timestamp_seconds",
            "gauge",
            "When the last run finished (Unix time; 0 before any).",
            &[("", self.last_run_timestamp.load(Ordering::Relaxed).to_string())],
        );
        family(
            "modeltree_last_success_timestamp_seconds",
            "gauge",
            "When the last successful run finished (Unix time; 0 before any).",
            &[("", self.last_success_timestamp.load(Ordering::Relaxed).to_string())],
        );
        family(
            "modeltree_run_in_progress",
            "gauge",
            "1 while a run is going on.",
            &[("", u8::from(self.running.load(Ordering::Relaxed)).to_string())],
        );
        out
    }
}

/// Binds the status endpoint, refusing a non-loopback address unless `allow_non_loopback`.
///
/// # Errors
/// For a refused or unbindable address.
pub async fn bind(addr: SocketAddr, allow_non_loopback: bool) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() && !allow_non_loopback {
        bail!(
            "status address {addr} is not loopback; the endpoint has no authentication, so set \
             daemon.allow_non_loopback_status = true to expose it"
        );
    }
    TcpListener::bind(addr).await.with_context(|| format!("cannot bind the status endpoint on {addr}"))
}

/// Serves `/metrics` and `/healthz` until `stop` turns true.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &metrics).await {
                            tracing::debug!(error = %e, "status request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "too large\n", false)
                .await;
        }
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET\n", head_only).await;
    }
    match path {
        "/metrics" => {
            let body = metrics.render();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body, head_only).await
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n", head_only).await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n", head_only).await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str, head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text() {
        let m = Metrics::default();
        m.runs_ok.store(3, Ordering::Relaxed);
        m.rate_limit_wait_ms.store(1500, Ordering::Relaxed);
        m.models_in_store.store(27, Ordering::Relaxed);
        let text = m.render();
        for line in [
            "# TYPE modeltree_runs_total counter",
            "modeltree_runs_total{status=\"ok\"} 3",
            "modeltree_runs_total{status=\"failed\"} 0",
            "modeltree_rate_limit_wait_seconds_total 1.500",
            "# TYPE modeltree_models_in_store gauge",
            "modeltree_models_in_store 27",
            "modeltree_hub_requests_total{bucket=\"resolvers\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line is `name[{labels}] number`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_and_health_on_loopback_only() {
        let refused = bind("0.0.0.0:0".parse().expect("addr"), false).await.expect_err("non-loopback");
        assert!(refused.to_string().contains("not loopback"), "{refused}");
        let listener = bind("127.0.0.1:0".parse().expect("addr"), false).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        metrics.models_indexed.store(5, Ordering::Relaxed);
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Arc::clone(&metrics), stop_rx));
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let metrics_reply = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(metrics_reply.starts_with("HTTP/1.1 200 OK"), "{metrics_reply}");
        assert!(metrics_reply.contains("\nmodeltree_models_indexed_total 5\n"), "{metrics_reply}");
        assert!(get("GET /healthz HTTP/1.1\r\n\r\n").await.ends_with("\r\n\r\nok\n"));
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        stop_tx.send(true).expect("stop");
        server.await.expect("server ends");
    }
}
