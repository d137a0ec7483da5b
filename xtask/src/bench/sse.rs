//! Scenario 3: SSE. Time from the upstream writing an event to the client reading it, through the
//! gateway and direct. Upstream and client live in this process, so they share one clock.

use std::{
    convert::Infallible,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, channel::Channel};
use hyper::{Request, Response, header::HeaderValue, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};

use super::{
    Bench, CALL_BODY, Spread, bench_keys, free_addr, gateway_config, report::Section, start_gateway,
};

const EVENTS: usize = 200;
const INTERVAL: Duration = Duration::from_millis(5);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn run(bench: &Bench) -> Result<Section> {
    eprintln!("== sse: event latency through the gateway vs direct");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let upstream = start_sse_upstream().await?;
        let upstream_url = format!("http://{upstream}/mcp");
        let key = bench_keys(1).remove(0);
        let addr = free_addr()?;
        let dir = bench.dir("sse");
        let config = gateway_config(
            addr,
            &upstream_url,
            &dir.join("audit.jsonl"),
            std::slice::from_ref(&key),
            "",
        );
        let _gateway = start_gateway(&bench.gateway, &dir, &config, None)?;

        let mut rows = vec![vec![
            "path".to_owned(),
            "median µs".to_owned(),
            "p99 µs".to_owned(),
        ]];
        let mut medians = Vec::new();
        for (name, url) in [
            ("direct", upstream_url.clone()),
            ("through the gateway", format!("http://{addr}/mcp")),
        ] {
            let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
            for _ in 0..bench.plan.runs {
                let mut delays = event_delays(&url, &key).await?;
                delays.sort_unstable();
                let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize] as f64;
                p50s.push(at(0.5));
                p99s.push(at(0.99));
            }
            let (p50, p99) = (Spread::of(&p50s), Spread::of(&p99s));
            medians.push(p50.median);
            rows.push(vec![name.to_owned(), p50.show(0), p99.show(0)]);
        }
        Ok(Section {
            title: "SSE event latency (scenario 3)".into(),
            intro: format!(
                "One `tools/call` answered with an SSE stream of {EVENTS} events, one every {} ms; \
                 each event carries its send time. Latency is read time minus send time.",
                INTERVAL.as_millis()
            ),
            table: rows,
            headline: Vec::new(),
            notes: vec![format!(
                "The gateway adds {:.0} µs at the median.",
                medians[1] - medians[0]
            )],
        })
    })
}

/// The delay of every event of one stream, in µs.
async fn event_delays(url: &str, key: &str) -> Result<Vec<u64>> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from_static(CALL_BODY.as_bytes())))?;
    let mut body = client
        .request(request)
        .await
        .context("SSE request")?
        .into_body();
    let mut pending = String::new();
    let mut delays = Vec::with_capacity(EVENTS);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let received = now_us();
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some((event, rest)) = pending.split_once("\n\n") {
            if let Some(sent) = event
                .strip_prefix("data: ")
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                delays.push(received.saturating_sub(sent));
            }
            pending = rest.to_owned();
        }
    }
    anyhow::ensure!(
        delays.len() == EVENTS,
        "got {} of {EVENTS} events",
        delays.len()
    );
    Ok(delays)
}

/// An upstream answering every request with a stream of timestamped events.
async fn start_sse_upstream() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    let (mut sender, body) = Channel::<Bytes, Infallible>::new(1);
                    tokio::spawn(async move {
                        for _ in 0..EVENTS {
                            tokio::time::sleep(INTERVAL).await;
                            let event = format!("data: {}\n\n", now_us());
                            if sender.send_data(Bytes::from(event)).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut response = Response::new(body);
                    response.headers_mut().insert(
                        "content-type",
                        HeaderValue::from_static("text/event-stream"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
