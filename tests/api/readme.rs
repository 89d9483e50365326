//! The README's examples, run as a reader would run them, so the front page
//! cannot drift from the binary again.
//!
//! A fenced `sh` or `python` block right after a `<!-- readme-test -->` line
//! is run against a server started here (its `127.0.0.1:50051` becomes the
//! test server's address) in a scratch directory that has the repository's
//! `training/`, `models/`, `segments.toml` and the binary under test at
//! `./target/release/segscore`. If the next fenced block has no language and
//! only blank lines come before it, it is the block's expected stdout, byte
//! for byte.

use std::{path::Path, process::Command};

use crate::helpers::*;

/// One runnable example from the README.
#[derive(Debug)]
struct Example {
    /// 1-based line of the opening fence, for failure messages.
    line: usize,
    language: String,
    code: String,
    expected_stdout: Option<String>,
}

const MARKER: &str = "<!-- readme-test -->";

fn examples(readme: &str) -> Vec<Example> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != MARKER {
            i += 1;
            continue;
        }
        let open = i + 1;
        let language = lines
            .get(open)
            .and_then(|l| l.strip_prefix("```"))
            .unwrap_or_else(|| panic!("README line {}: {MARKER} must precede a fence", i + 1))
            .trim()
            .to_owned();
        let (code, after) = fenced_body(&lines, open);
        // The expected output: the next fence with no language, when only
        // blank lines separate it from the example.
        let mut next = after;
        while next < lines.len() && lines[next].trim().is_empty() {
            next += 1;
        }
        let expected_stdout = (lines.get(next).map(|l| l.trim()) == Some("```")).then(|| {
            let (body, end) = fenced_body(&lines, next);
            next = end;
            body
        });
        found.push(Example {
            line: open + 1,
            language,
            code,
            expected_stdout,
        });
        i = next.max(after);
    }
    found
}

/// The text between the fence at `open` and its closing fence, and the line
/// after the closing fence.
fn fenced_body(lines: &[&str], open: usize) -> (String, usize) {
    let mut body = String::new();
    let mut i = open + 1;
    while i < lines.len() && lines[i].trim() != "```" {
        body.push_str(lines[i]);
        body.push('\n');
        i += 1;
    }
    assert!(i < lines.len(), "README line {}: unclosed fence", open + 1);
    (body, i + 1)
}

/// A directory laid out like a checkout after `make build`, without copying
/// the big parts.
fn scratch_checkout(root: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["training", "models", "segments.toml", ".venv"] {
        std::os::unix::fs::symlink(root.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_segscore"),
        dir.path().join("target/release/segscore"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_run_and_print_what_the_readme_shows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let examples = examples(&readme);
    assert!(
        examples.iter().any(|e| e.expected_stdout.is_some()),
        "no README example with an expected output is marked {MARKER}"
    );
    let app = spawn_app_with(&shipped_models(), |a| {
        a.segments = Some(root.join("segments.toml"));
    })
    .await;
    let addr = app.addr.to_string();
    for example in &examples {
        let dir = scratch_checkout(root);
        let code = example.code.replace("127.0.0.1:50051", &addr);
        let mut command = match example.language.as_str() {
            "sh" | "bash" | "shell" => {
                let mut c = Command::new("bash");
                c.args(["-euo", "pipefail", "-c", &code]);
                c
            }
            "python" => {
                let mut c = Command::new(root.join(".venv/bin/python"));
                c.args(["-c", &code]);
                c
            }
            other => panic!(
                "README line {}: no runner for `{other}` examples",
                example.line
            ),
        };
        let out =
            tokio::task::spawn_blocking(move || command.current_dir(dir.path()).output().unwrap())
                .await
                .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "README line {}: the example failed ({}):\n{code}\nstdout:\n{stdout}\nstderr:\n{}",
            example.line,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(expected) = &example.expected_stdout {
            assert_eq!(
                &*stdout, expected,
                "README line {}: the example prints something else than the README shows",
                example.line
            );
        }
    }
    app.stop().await.unwrap();
}

#[test]
fn markers_find_examples_and_their_outputs() {
    let text = "intro\n<!-- readme-test -->\n```sh\necho hi\n```\n\n```\nhi\n```\n\
                ```sh\nnot marked\n```\n<!-- readme-test -->\n```python\nprint(1)\n```\nprose\n```\nx\n```\n";
    let found = examples(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].language, "sh");
    assert_eq!(found[0].code, "echo hi\n");
    assert_eq!(found[0].expected_stdout.as_deref(), Some("hi\n"));
    assert_eq!(found[1].language, "python");
    assert_eq!(found[1].expected_stdout, None);
}
