//! Case (d): what segment rules cost next to the models. One server with
//! `--segments`, the same Score request over every model at
//! `SEGMENT_CASE_ROWS` rows, sent without and then with every segment of the
//! file; the second is reported as a ratio to the first, together with the
//! in-process time of the rules alone (compiled and interpreted).

use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;

use super::{
    emit,
    server::Server,
    service::{measure, request_rows, Call, ServiceCase, ServiceInput},
    BenchArgs, CaseResult, SEGMENT_CASE_ROWS,
};
use crate::{
    proto::pb::{self, scoring_client::ScoringClient},
    repository::scan,
};

/// Both rows of (d): without segments first, so the second can be reported
/// as a ratio to it.
pub(super) async fn suite(
    args: &BenchArgs,
    workers: usize,
    input: &ServiceInput<'_>,
    results: &mut Vec<CaseResult>,
) -> anyhow::Result<()> {
    let file = crate::segments::RulesFile::read(&args.segments)?;
    let names: Vec<String> = file.segments.iter().map(|s| s.name.clone()).collect();
    let all_models: Vec<String> = scan(&args.model_repository)?.into_keys().collect();
    let server = Server::start_with(args, workers, true, Some(&args.segments))?;
    let mut without = None;
    for segments in [Vec::new(), names] {
        let case = ServiceCase {
            rows: SEGMENT_CASE_ROWS,
            concurrency: 1,
            protocol: "score",
        };
        let request = score_request(&input.base, &all_models, segments.clone());
        let eval_cost = if segments.is_empty() {
            None
        } else {
            Some(segment_eval_cost(args, &server, &file, request.clone()).await?)
        };
        let call = Call::Score(request);
        let mut r = measure(args, &server, &input.manifest.name, call, case).await?;
        if let Some((compiled, interpreted)) = eval_cost {
            r.segment_eval_us = Some(compiled);
            r.segment_eval_interpreted_us = Some(interpreted);
        }
        r.suite = "segments";
        r.model = all_models.join("+");
        r.batching = Some(true);
        r.segments = segments;
        match without {
            None => without = Some(r.rows_per_second),
            Some(base) => r.ratio_to_without_segments = Some(r.rows_per_second / base.max(1e-9)),
        }
        emit(&r);
        results.push(r);
    }
    server.stop()
}

/// Score at `SEGMENT_CASE_ROWS` rows over every model, named without a
/// version or label, asking for `segments`.
fn score_request(
    base: &pb::FeatureMatrix,
    models: &[String],
    segments: Vec<String>,
) -> pb::ScoreRequest {
    pb::ScoreRequest {
        features: Some(request_rows(base, SEGMENT_CASE_ROWS)),
        models: models
            .iter()
            .map(|name| pb::ModelRef {
                name: name.clone(),
                ..Default::default()
            })
            .collect(),
        segments,
        ..Default::default()
    }
}

/// Times the evaluation of `request`'s segments in-process over the scores
/// the server returns for it: (compiled, interpreted) µs per request, best of
/// repeated runs, variable binding included.
async fn segment_eval_cost(
    args: &BenchArgs,
    server: &Server,
    file: &crate::segments::RulesFile,
    request: pb::ScoreRequest,
) -> anyhow::Result<(f64, f64)> {
    use crate::segments::{Catalog, ModelScoresView, RuleInput, Segments};
    let channel = Channel::from_shared(server.addr.clone())?.connect().await?;
    let response = ScoringClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .score(request.clone())
        .await?
        .into_inner();
    let catalog = Catalog::from_directory(&args.model_repository)?;
    let segments = Segments::compile(file, &catalog, None);
    let batch = crate::features::FeatureBatch::try_from(
        request.features.context("the bench request has features")?,
    )?;
    // The server's answer, read as rules read it.
    let scores = response
        .models
        .iter()
        .map(|m| (m.name.as_str(), ModelScoresView::from(m)))
        .collect();
    let input = RuleInput {
        batch: &batch,
        scores,
    };
    let rules: Vec<_> = request
        .segments
        .iter()
        .filter_map(|n| segments.get(n)?.state.as_ref().ok())
        .collect();
    let time = |interpreted: bool| {
        let mut best = f64::INFINITY;
        let until = Instant::now() + Duration::from_secs_f64((args.seconds / 4.0).max(0.2));
        let mut runs = 0;
        while runs < 3 || Instant::now() < until {
            let t = Instant::now();
            let mut evaluation = segments.evaluator(&input);
            for rule in &rules {
                let m = if interpreted {
                    evaluation.evaluate_interpreted(rule)
                } else {
                    evaluation.evaluate(rule)
                };
                std::hint::black_box(m);
            }
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
            runs += 1;
        }
        best
    };
    Ok((time(false), time(true)))
}
