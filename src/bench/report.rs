//! The Markdown report (`--output`, BENCHMARKS.md by default) and the
//! figures it is made of: `summarize` turns one case's latency samples into
//! a `CaseResult`; `write_report` writes one table per suite and keeps any
//! hand-written analysis below them, so re-running the suite does not lose
//! it.

use std::{fmt::Write, thread, time::Duration};

use anyhow::Context;

use super::{BenchArgs, CaseResult, SEGMENT_CASE_ROWS};

/// One case's figures from its (latency, ok) samples: throughput counts the
/// successful calls only, over `elapsed`; percentiles are nearest-rank over
/// the successful calls.
pub(super) fn summarize(
    suite: &'static str,
    model: &str,
    rows: usize,
    concurrency: usize,
    samples: Vec<(Duration, bool)>,
    elapsed: Duration,
) -> CaseResult {
    let errors = samples.iter().filter(|(_, ok)| !ok).count() as u64;
    let mut micros: Vec<u64> = samples
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(d, _)| d.as_micros() as u64)
        .collect();
    micros.sort_unstable();
    let pct = |p: f64| -> f64 {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    let calls = samples.len() as u64;
    let ok = calls - errors;
    let secs = elapsed.as_secs_f64().max(1e-9);
    CaseResult {
        suite,
        protocol: "ort",
        model: model.into(),
        rows_per_call: rows,
        concurrency,
        batching: None,
        calls,
        errors,
        seconds: secs,
        rows_per_second: (ok as f64 * rows as f64) / secs,
        calls_per_second: ok as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: micros.last().map_or(0.0, |m| *m as f64 / 1000.0),
        ratio_to_in_process: None,
        server_rss_mib: None,
        segments: Vec::new(),
        ratio_to_without_segments: None,
        segment_eval_us: None,
        segment_eval_interpreted_us: None,
    }
}

/// The CPU the figures were measured on, for the report headers.
pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes the report: a header, then the tables of the suites that ran, then
/// the "## Analysis" part of the existing file, if any.
pub(super) fn write_report(
    args: &BenchArgs,
    workers: usize,
    results: &[CaseResult],
) -> anyhow::Result<()> {
    let mut md = String::new();
    header(&mut md, args, workers)?;
    in_process_table(&mut md, results)?;
    service_table(&mut md, results)?;
    batching_ratio(&mut md, results)?;
    segments_table(&mut md, args, results)?;
    // Keep any hand-written analysis below the generated part.
    let analysis = std::fs::read_to_string(&args.output)
        .ok()
        .and_then(|old| old.find("\n## Analysis").map(|i| old[i..].to_string()))
        .unwrap_or_default();
    md.push_str(&analysis);
    std::fs::write(&args.output, md)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}

/// Title, when and where it was measured, and how to reproduce it.
fn header(md: &mut String, args: &BenchArgs, workers: usize) -> std::fmt::Result {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `segscore bench` ({}). Machine: {cores} cores, {}. Workers: {workers} (one ORT session \
         with 1 intra-op thread each). {} s per case after a 0.3 s warm-up. The load generator runs on the \
         same cores as the server.\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        cpu_model(),
        args.seconds
    )?;
    writeln!(
        md,
        "Reproduce: `make bench` (= `./target/release/segscore bench --seconds {}`).\n",
        args.seconds
    )
}

/// (a): one row per model and rows per call.
fn in_process_table(md: &mut String, results: &[CaseResult]) -> std::fmt::Result {
    writeln!(md, "## (a) In-process ONNX Runtime: the limit\n")?;
    writeln!(
        md,
        "| model | rows/call | rows/s | calls/s | p50 ms | p99 ms |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
    for r in results.iter().filter(|r| r.suite == "in_process") {
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} |",
            r.model, r.rows_per_call, r.rows_per_second, r.calls_per_second, r.p50_ms, r.p99_ms
        )?;
    }
    Ok(())
}

/// (b) and (c): one row per service case, Score and OIP, batching on and off.
/// The header names every cell a row writes (the protocol column was once
/// missing from it, issue 23), which the tests below check.
fn service_table(md: &mut String, results: &[CaseResult]) -> std::fmt::Result {
    writeln!(
        md,
        "\n## (b, c) Service over loopback gRPC (`Score` and OIP `ModelInfer`)\n"
    )?;
    writeln!(
        md,
        "| model | protocol | batching | rows/req | concurrency | req/s | rows/s | × in-process | p50 ms | p90 ms | p99 ms | max ms | errors | server RSS MiB |"
    )?;
    writeln!(
        md,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in results
        .iter()
        .filter(|r| r.suite != "in_process" && r.suite != "segments")
    {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.model,
            if r.protocol == "oip" { "ModelInfer" } else { "Score" },
            if r.batching == Some(true) {
                "on"
            } else {
                "off"
            },
            r.rows_per_call,
            r.concurrency,
            r.calls_per_second,
            r.rows_per_second,
            r.ratio_to_in_process
                .map_or("-".into(), |x| format!("{x:.2}")),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.errors,
            r.server_rss_mib.map_or("-".into(), |x| format!("{x:.0}")),
        )?;
    }
    Ok(())
}

/// The one figure batching is judged by: single-row Score at concurrency 64,
/// batching on over off, when both cases ran.
fn batching_ratio(md: &mut String, results: &[CaseResult]) -> std::fmt::Result {
    let on = results.iter().find(|r| {
        r.suite == "service" && r.protocol == "score" && r.rows_per_call == 1 && r.concurrency == 64
    });
    let off = results
        .iter()
        .find(|r| r.suite == "service_batching_off" && r.concurrency == 64);
    if let (Some(on), Some(off)) = (on, off) {
        writeln!(
            md,
            "\nSingle-row requests at concurrency 64: batching on / off = {:.2}× requests/s.",
            on.calls_per_second / off.calls_per_second.max(1e-9)
        )?;
    }
    Ok(())
}

/// (d), if it ran: without and with segments.
fn segments_table(md: &mut String, args: &BenchArgs, results: &[CaseResult]) -> std::fmt::Result {
    let segment_cases: Vec<&CaseResult> =
        results.iter().filter(|r| r.suite == "segments").collect();
    if segment_cases.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "\n## (d) Segment rules: Score at {SEGMENT_CASE_ROWS} rows, every model, with and without segments\n"
    )?;
    writeln!(
        md,
        "Same server (`--segments {}`), same requests, concurrency 1; the second row also asks for every segment of the file. \
         Target: rows/s with segments ≥ 0.8 × without (≤ 25% extra time).\n",
        args.segments.display()
    )?;
    writeln!(
        md,
        "| models | segments | rows/s | p50 ms | p99 ms | × without segments | rules in-process µs (compiled / interpreter) |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|")?;
    for r in segment_cases {
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
            r.model,
            if r.segments.is_empty() {
                "none".to_string()
            } else {
                r.segments.join(", ")
            },
            r.rows_per_second,
            r.p50_ms,
            r.p99_ms,
            r.ratio_to_without_segments
                .map_or("-".into(), |x| format!("{x:.3}")),
            match (r.segment_eval_us, r.segment_eval_interpreted_us) {
                (Some(c), Some(i)) => format!("{c:.0} / {i:.0}"),
                _ => "-".into(),
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(suite: &'static str, protocol: &'static str, samples: &[(u64, bool)]) -> CaseResult {
        let samples = samples
            .iter()
            .map(|&(ms, ok)| (Duration::from_millis(ms), ok))
            .collect();
        let mut r = summarize(suite, "churn", 64, 16, samples, Duration::from_secs(2));
        r.protocol = protocol;
        r
    }

    /// Cells per line of a Markdown table, for every line that is a row.
    fn widths(md: &str) -> Vec<usize> {
        md.lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| l.matches('|').count() - 1)
            .collect()
    }

    #[test]
    fn service_table_header_has_a_cell_per_column() {
        let mut on = case("service", "oip", &[(1, true)]);
        on.batching = Some(true);
        on.ratio_to_in_process = Some(0.5);
        let off = case("service_batching_off", "score", &[(1, true)]);
        let mut md = String::new();
        service_table(&mut md, &[on, off]).unwrap();
        let widths = widths(&md);
        assert_eq!(widths.len(), 4, "header, alignment, two rows:\n{md}");
        assert!(widths.iter().all(|&w| w == 14), "{widths:?}\n{md}");
        assert!(md.contains("| model | protocol | batching |"), "{md}");
        assert!(md.contains("| churn | ModelInfer | on | 64 | 16 |"), "{md}");
        assert!(md.contains("| churn | Score | off | 64 | 16 |"), "{md}");
    }

    #[test]
    fn in_process_table_header_has_a_cell_per_column() {
        let mut md = String::new();
        in_process_table(&mut md, &[case("in_process", "ort", &[(1, true)])]).unwrap();
        let widths = widths(&md);
        assert_eq!(widths, vec![6, 6, 6], "{md}");
    }

    #[test]
    fn summarize_counts_only_successful_calls() {
        // 100 ok calls of 1..=100 ms and one failed call, over 2 s.
        let mut samples: Vec<(u64, bool)> = (1..=100).map(|ms| (ms, true)).collect();
        samples.push((5000, false));
        let r = case("in_process", "ort", &samples);
        assert_eq!((r.calls, r.errors), (101, 1));
        assert_eq!(r.calls_per_second, 50.0);
        assert_eq!(r.rows_per_second, 50.0 * 64.0);
        // Nearest rank over the successful calls; the failure is not the max.
        assert_eq!(
            (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
    }
}
