//! `--metrics-addr`: the Prometheus endpoint after real traffic.

use std::collections::HashMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::helpers::*;

/// GETs `path` over plain HTTP/1.1 and returns the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Samples of the text format: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_hold_histograms_with_sane_counts() {
    let app = spawn_app_with(&shipped_models(), |a| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let churn = latest_version("churn");
    for _ in 0..5 {
        app.score(request(matrix(full_rows(20)), vec![model("churn", 0)]))
            .await
            .unwrap();
    }
    let bad = app
        .score(request(matrix(full_rows(1)), vec![model("nope", 0)]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::NotFound);

    let (status, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let s = samples(&text);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in:\n{text}"))
    };
    let v = format!("model=\"churn\",version=\"{churn}\"");
    assert_eq!(
        get("segscore_requests_total{code=\"Ok\",method=\"Score\",protocol=\"grpc\"}"),
        5.0
    );
    assert_eq!(
        get("segscore_requests_total{code=\"NotFound\",method=\"Score\",protocol=\"grpc\"}"),
        1.0
    );
    assert_eq!(
        get("segscore_request_duration_seconds_count{code=\"Ok\",method=\"Score\",protocol=\"grpc\"}"),
        5.0
    );
    assert_eq!(
        get(&format!(
            "segscore_model_request_duration_seconds_count{{{v}}}"
        )),
        5.0
    );
    assert_eq!(get(&format!("segscore_rows_total{{{v}}}")), 100.0);
    // Batches: at least one model call, every row counted once.
    let batches = get(&format!("segscore_batch_rows_count{{{v}}}"));
    assert!((1.0..=5.0).contains(&batches), "{batches}");
    assert_eq!(get(&format!("segscore_batch_rows_sum{{{v}}}")), 100.0);
    assert_eq!(
        get(&format!("segscore_compute_seconds_count{{{v}}}")),
        batches
    );
    assert_eq!(
        get(&format!("segscore_queue_wait_seconds_count{{{v}}}")),
        5.0
    );
    // The score distribution: 100 probabilities, all in the last bucket <= 1.
    assert_eq!(
        get(&format!("segscore_score_probability_count{{{v}}}")),
        100.0
    );
    assert_eq!(
        get(&format!(
            "segscore_score_probability_bucket{{{v},le=\"1\"}}"
        )),
        100.0
    );
    let sum = get(&format!("segscore_score_probability_sum{{{v}}}"));
    assert!(sum > 0.0 && sum < 100.0, "{sum}");
    assert_eq!(get(&format!("segscore_queue_depth{{{v}}}")), 0.0);
    assert_eq!(get("segscore_in_flight_requests"), 0.0);
    // The heap as jemalloc sees it: a live server holds something, and the
    // allocator maps at least what is held.
    let allocated = get("segscore_allocator_allocated_bytes");
    assert!(allocated > 0.0, "{allocated}");
    assert!(get("segscore_allocator_resident_bytes") >= allocated);
    // The standard process metrics and which build this is.
    assert!(get("process_resident_memory_bytes") > 0.0);
    assert!(get("process_open_fds") > 0.0);
    assert!(get("process_cpu_seconds_total") >= 0.0);
    assert!(get("process_start_time_seconds") > 1.7e9);
    assert_eq!(
        get(&format!(
            "segscore_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // churn ships two valid versions; both loaded.
    assert_eq!(get("segscore_loaded_versions{model=\"churn\"}"), 2.0);
    assert_eq!(
        get("segscore_model_loads_total{model=\"churn\",result=\"passed\"}"),
        2.0
    );
    // Histograms, not summaries.
    assert!(text.contains("# TYPE segscore_request_duration_seconds histogram"));
    assert!(!text.contains("summary"));
    assert_eq!(http_get(app.metrics_addr.unwrap(), "/nope").await.0, 404);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_limit_are_refused_at_once() {
    let app = spawn_app_with(&shipped_models(), |a| a.max_concurrent_requests = 2).await;
    // 64 concurrent 20k-row requests: at most 2 admitted at a time, the rest
    // refused at once with RESOURCE_EXHAUSTED; none fails another way.
    let calls = (0..64).map(|_| {
        let mut client = app.client.clone();
        async move {
            client
                .score(request(matrix(full_rows(20_000)), vec![model("ltv", 0)]))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(ok >= 1, "nothing was admitted");
    assert!(!refused.is_empty(), "the limit never triggered ({ok} ok)");
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("--max-concurrent-requests"));
    }
    // Once the burst is over the server admits again.
    app.score(request(matrix(full_rows(1)), vec![model("ltv", 0)]))
        .await
        .unwrap();
    app.stop().await.unwrap();
}

/// The value of the sample `series` (name and labels exactly as exposed, e.g.
/// `segscore_queue_depth{model="ltv",version="1"}`) in one scrape, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Scrapes `/metrics` until `series` reaches at least `at_least`: the way a
/// test waits for an event the server counts (a reload refused, a request
/// answered, chunks queued) instead of guessing how long it takes. Gives up
/// after 60 s so a server that never counts it fails the test, not hangs it.
pub async fn wait_for_metric(addr: std::net::SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, text) = http_get(addr, "/metrics").await;
        if sample(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
