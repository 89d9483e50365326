//! Graceful shutdown: in-flight requests complete, then the server exits.

use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_in_flight_requests() {
    let mut app = spawn_app_with(&shipped_models(), |a| {
        a.engine.workers = Some(1);
        a.engine.max_batch_rows = 512;
    })
    .await;
    let rows = 200_000;
    let client = app.client.clone();
    let in_flight = tokio::spawn(async move {
        let mut client = client;
        client
            .score(request(matrix(full_rows(rows)), vec![model("churn", 0)]))
            .await
    });
    // Wait until the request is being scored, then ask the server to stop.
    let churn = app.repository.load().resolve("churn", 0, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while churn.queued() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the workers"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    app.trigger_shutdown();
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(resp.into_inner().models[0].scores.len(), rows);
    app.handle.take().unwrap().await.unwrap().unwrap();
    // Stopped means stopped: new connections are refused.
    let again =
        segscore::api::pb::scoring_client::ScoringClient::connect(format!("http://{}", app.addr))
            .await;
    assert!(again.is_err());
}

#[test]
fn the_binary_serves_and_exits_zero_on_sigterm() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_segscore"));
    command
        .args([
            "--log-format",
            "json",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--model-repository",
        ])
        .arg(shipped_models())
        .env_remove("RUST_LOG");
    let mut server = ServedBinary::start(command);
    let addr = server.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client =
            segscore::api::pb::scoring_client::ScoringClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        let resp = client
            .score(request(matrix(full_rows(2)), vec![model("ltv", 0)]))
            .await
            .unwrap();
        assert_eq!(resp.into_inner().models[0].scores.len(), 2);
    });
    let status = server.terminate();
    // The log after `serving` says why, should a loaded machine ever make
    // this fail (seen once in a full parallel run, not reproduced since).
    let rest: Vec<String> = server.log.try_iter().collect();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}; log after serving: {rest:#?}"
    );
}
