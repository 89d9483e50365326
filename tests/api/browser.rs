//! The segments page snippet of docs/api.md, exactly as the doc prints it,
//! in headless Chromium (Debian's `chromium`, `make chromium`): served from
//! its own origin, it calls segscore across origins (`--http-cors-origin`)
//! on load, and the customer's segments must appear in the DOM. A machine
//! where Chromium cannot start fails this test.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{post_json, spawn_http_app};

const MARKER: &str = "<!-- segments-page -->";

/// The fenced html block right after the marker in docs/api.md.
fn snippet() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.md")).unwrap();
    let after = &doc[doc
        .find(MARKER)
        .expect("docs/api.md has the segments page marker")..];
    let start = after
        .find("```html\n")
        .expect("an html block after the marker")
        + 8;
    let end = after[start..].find("```").unwrap();
    after[start..start + end].to_owned()
}

/// The snippet's customer features: its `features: { k: v, ... }` object
/// literal read as JSON (unquoted keys, a trailing comma).
fn snippet_features(page: &str) -> Value {
    let start = page.find("features: {").unwrap() + "features: {".len();
    let end = start + page[start..].find('}').unwrap();
    let mut object = serde_json::Map::new();
    for pair in page[start..end].split(',') {
        let Some((key, value)) = pair.split_once(':') else {
            continue;
        };
        object.insert(
            key.trim().to_owned(),
            serde_json::from_str(value.trim()).unwrap(),
        );
    }
    Value::Object(object)
}

fn snippet_customer(page: &str) -> String {
    let start = page.find("id: \"").unwrap() + 5;
    page[start..start + page[start..].find('"').unwrap()].to_owned()
}

/// Serves `page` at `/page.html` to any number of requests.
async fn serve_page(page: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /page.html") {
                    ("200 OK", page)
                } else {
                    ("404 Not Found", String::new())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_segments_page_lists_the_customers_segments_in_chromium() {
    let page = snippet();
    let page_addr = serve_page(page.clone()).await;
    let origin = format!("http://{page_addr}");
    let app = spawn_http_app(|a| a.http_cors_origin = vec![origin.clone()]).await;
    let segscore = app.http_addr.unwrap();

    // What the page must show: the server's own answer for that customer.
    let customer = snippet_customer(&page);
    let expected = post_json(
        segscore,
        &format!("/v1/customers/{customer}/segments"),
        &json!({"features": snippet_features(&page)}),
    )
    .await;
    assert_eq!(
        expected.status,
        200,
        "{}",
        String::from_utf8_lossy(&expected.body)
    );
    let expected: Vec<String> = expected.json()["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert!(!expected.is_empty(), "the doc's customer is in no segment");

    let url = format!("{origin}/page.html?segscore=http://{segscore}");
    let profile = tempfile::tempdir().unwrap();
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        user_data.as_str(),
        // Virtual time runs until the page is idle (its fetch answered
        // and the list built), at most this long.
        "--virtual-time-budget=30000",
        "--dump-dom",
        url.as_str(),
    ]
    .map(str::to_owned);
    // On a blocking thread: the page's fetch is answered by this test's own
    // runtime while Chromium runs.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("chromium").args(args).output()
    })
    .await
    .unwrap()
    .expect("chromium starts (make chromium installs Debian's chromium)");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && dom.contains("data-state=\"loaded\""),
        "status {:?}\nDOM:\n{dom}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: Vec<&str> = dom
        .split("<li class=\"segment\">")
        .skip(1)
        .map(|s| &s[..s.find("</li>").unwrap()])
        .collect();
    assert_eq!(shown, expected, "DOM:\n{dom}");
    app.stop().await.unwrap();
}
