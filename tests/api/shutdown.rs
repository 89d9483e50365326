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
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_segscore"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--models",
        ])
        .arg(shipped_models())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log on a thread so a server that never says `serving` fails the
    // test after a timeout instead of hanging it.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) {
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["fields"]["message"] == "serving" {
            addr = json["fields"]["addr"].as_str().map(str::to_owned);
            break;
        }
        seen.push(line);
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("no `serving` line; log: {seen:#?}");
    };
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
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    // The log after `serving` says why, should a loaded machine ever make
    // this fail (seen once in a full parallel run, not reproduced since).
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}; log after serving: {rest:#?}"
    );
}
