//! `segscore score` as a bulk job: ScoreStream, CSV and Parquet in and out,
//! rejects, --strict, --resume, --shard and several --addr servers, each
//! checked against scores computed another way (Score, LoadedModel).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use arrow_array::{
    cast::AsArray, types::Float32Type, ArrayRef, BooleanArray, Float32Array, Int64Array,
    RecordBatch, StringArray,
};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter},
    file::properties::WriterProperties,
};
use segscore::{
    features::{DType, FeatureSchema},
    proto::pb,
    repository::{load::read_csv_batch, Repository},
};

use crate::{helpers::*, metrics::http_get};

const MODELS: [&str; 3] = ["churn", "ltv", "propensity"];

/// `rows` data rows cut (cycling) from sample_users.csv, with fresh ids, as
/// CSV text with its header.
fn tiled_csv(rows: usize) -> String {
    let text = std::fs::read_to_string(sample_users()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let data: Vec<&str> = lines.collect();
    let mut out = format!("{header}\n");
    for i in 0..rows {
        let line = data[i % data.len()];
        let rest = line.split_once(',').unwrap().1;
        out.push_str(&format!("T{i:07},{rest}\n"));
    }
    out
}

/// The dtype of every input column (features.toml; ids are text).
fn dtypes() -> HashMap<String, DType> {
    let manifest = manifest("churn", latest_version("churn"));
    manifest
        .features
        .iter()
        .map(|f| (f.name.clone(), f.dtype))
        .collect()
}

/// The same rows as typed Parquet (nulls for empty cells), `group_rows` rows
/// per row group.
fn cell(r: &csv::StringRecord, i: usize) -> Option<&str> {
    r.get(i).filter(|c| !c.is_empty())
}

fn csv_to_parquet(csv_text: &str, path: &Path, group_rows: usize) {
    let dtypes = dtypes();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let arrays: Vec<(String, ArrayRef)> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let array: ArrayRef = match dtypes.get(name) {
                Some(DType::F32) => Arc::new(Float32Array::from_iter(
                    records
                        .iter()
                        .map(|r| cell(r, i).map(|c| c.parse::<f32>().unwrap())),
                )),
                Some(DType::I64) => Arc::new(Int64Array::from_iter(
                    records
                        .iter()
                        .map(|r| cell(r, i).map(|c| c.parse::<i64>().unwrap())),
                )),
                Some(DType::Bool) => Arc::new(BooleanArray::from_iter(
                    records.iter().map(|r| cell(r, i).map(|c| c == "true")),
                )),
                _ => Arc::new(StringArray::from_iter(records.iter().map(|r| cell(r, i)))),
            };
            (name.clone(), array)
        })
        .collect();
    let batch = RecordBatch::try_from_iter(arrays).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// An output file's rows: id → scores, in file order.
fn read_output(path: &Path) -> Vec<(String, Vec<f32>)> {
    if path.extension().unwrap() == "csv" {
        let mut r = csv::Reader::from_path(path).unwrap();
        return r
            .records()
            .map(|rec| {
                let rec = rec.unwrap();
                let scores = rec.iter().skip(1).map(|c| c.parse().unwrap()).collect();
                (rec[0].to_string(), scores)
            })
            .collect();
    }
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column(0).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let scores = (1..batch.num_columns())
                .map(|c| batch.column(c).as_primitive::<Float32Type>().value(row))
                .collect();
            out.push((ids.value(row).to_string(), scores));
        }
    }
    out
}

fn parquet_metadata(path: &Path) -> BTreeMap<String, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect()
}

/// Runs `segscore score` (embedded unless `extra` has --addr).
fn score(input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segscore"))
        .arg("score")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--model-repository")
        .arg(shipped_models())
        .args(["--models", "churn,ltv,propensity", "--workers", "1"])
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "segscore score failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Scores from the models themselves (LoadedModel), per id, for `csv`.
async fn model_scores(csv: &Path) -> HashMap<String, Vec<f32>> {
    let mut engine = segscore::config::ServeArgs::for_models(shipped_models())
        .engine
        .engine_config();
    engine.workers = 1;
    let repo = Repository::load(&shipped_models(), &engine).unwrap();
    let mut by_id: HashMap<String, Vec<f32>> = HashMap::new();
    for name in MODELS {
        let model = repo.resolve(name, 0, "").unwrap();
        let schema = FeatureSchema::new(model.manifest.features.clone()).unwrap();
        let (batch, ids) = read_csv_batch(csv, &schema, "customer_id").unwrap();
        let scores = model.score(&batch).await.unwrap().scores;
        for (id, s) in ids.into_iter().zip(scores) {
            by_id.entry(id).or_default().push(s);
        }
    }
    by_id
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The first `rows` rows of `base`, cycling, as a request matrix.
fn cycle_matrix(base: &pb::FeatureMatrix, rows: usize) -> pb::FeatureMatrix {
    use pb::feature_column::Values;
    fn cycle<T: Clone>(v: &[T], rows: usize) -> Vec<T> {
        v.iter().cycle().take(rows).cloned().collect()
    }
    let n = base.columns[0].len();
    let columns = base
        .columns
        .iter()
        .map(|c| pb::FeatureColumn {
            name: c.name.clone(),
            values: c.values.as_ref().map(|v| match v {
                Values::F32(v) => Values::F32(pb::FloatValues {
                    values: cycle(&v.values, rows),
                }),
                Values::F64(v) => Values::F64(pb::DoubleValues {
                    values: cycle(&v.values, rows),
                }),
                Values::I64(v) => Values::I64(pb::Int64Values {
                    values: cycle(&v.values, rows),
                }),
                Values::Bool(v) => Values::Bool(pb::BoolValues {
                    values: cycle(&v.values, rows),
                }),
                Values::Category(v) => Values::Category(pb::StringValues {
                    values: cycle(&v.values, rows),
                }),
            }),
            missing_rows: (0..rows as u32)
                .filter(|r| c.missing_rows.binary_search(&(r % n as u32)).is_ok())
                .collect(),
        })
        .collect();
    pb::FeatureMatrix {
        rows: rows as u32,
        columns,
    }
}

/// Rows `range` of `m`.
fn slice_matrix(m: &pb::FeatureMatrix, range: std::ops::Range<usize>) -> pb::FeatureMatrix {
    use pb::feature_column::Values;
    let columns = m
        .columns
        .iter()
        .map(|c| pb::FeatureColumn {
            name: c.name.clone(),
            values: c.values.as_ref().map(|v| match v {
                Values::F32(v) => Values::F32(pb::FloatValues {
                    values: v.values[range.clone()].to_vec(),
                }),
                Values::F64(v) => Values::F64(pb::DoubleValues {
                    values: v.values[range.clone()].to_vec(),
                }),
                Values::I64(v) => Values::I64(pb::Int64Values {
                    values: v.values[range.clone()].to_vec(),
                }),
                Values::Bool(v) => Values::Bool(pb::BoolValues {
                    values: v.values[range.clone()].to_vec(),
                }),
                Values::Category(v) => Values::Category(pb::StringValues {
                    values: v.values[range.clone()].to_vec(),
                }),
            }),
            missing_rows: c
                .missing_rows
                .iter()
                .filter(|&&r| range.contains(&(r as usize)))
                .map(|&r| r - range.start as u32)
                .collect(),
        })
        .collect();
    pb::FeatureMatrix {
        rows: range.len() as u32,
        columns,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_stream_round_trip_equals_score_bitwise() {
    let app = spawn_app().await;
    let (base, _) = csv_matrix(
        &sample_users(),
        &manifest("churn", latest_version("churn")),
        "customer_id",
    );
    const ROWS: usize = 200_000;
    const CHUNK: usize = 10_000;
    let all = cycle_matrix(&base, ROWS);
    let models: Vec<pb::ModelRef> = MODELS.iter().map(|m| model(m, 0)).collect();
    let whole = app
        .score(request(all.clone(), models.clone()))
        .await
        .unwrap();
    let requests: Vec<pb::ScoreRequest> = (0..ROWS / CHUNK)
        .map(|i| pb::ScoreRequest {
            sequence: i as u64,
            features: Some(slice_matrix(&all, i * CHUNK..(i + 1) * CHUNK)),
            models: models.clone(),
            ..Default::default()
        })
        .collect();
    let mut stream = app
        .client
        .clone()
        .score_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut streamed: Vec<Vec<f32>> = vec![Vec::new(); MODELS.len()];
    let mut expected_sequence = 0;
    while let Some(resp) = stream.message().await.unwrap() {
        assert_eq!(resp.error, None);
        assert_eq!(
            resp.sequence, expected_sequence,
            "answers come in request order"
        );
        expected_sequence += 1;
        for (m, scores) in resp.models.into_iter().enumerate() {
            streamed[m].extend(scores.scores);
        }
    }
    assert_eq!(expected_sequence as usize, ROWS / CHUNK);
    for (m, model_scores) in whole.models.iter().enumerate() {
        let a: Vec<u32> = model_scores.scores.iter().map(|s| s.to_bits()).collect();
        let b: Vec<u32> = streamed[m].iter().map(|s| s.to_bits()).collect();
        assert_eq!(a.len(), ROWS);
        assert!(
            a == b,
            "model {} differs between Score and ScoreStream",
            MODELS[m]
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_parquet_inputs_and_outputs_agree_with_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiled_csv(3_000);
    let csv_in = write(dir.path(), "in.csv", &text);
    let pq_in = dir.path().join("in.parquet");
    csv_to_parquet(&text, &pq_in, 700);
    let a = dir.path().join("from-csv.parquet");
    let b = dir.path().join("from-parquet.parquet");
    let c = dir.path().join("from-parquet.csv");
    let out = ok(score(&csv_in, &a, &["--batch-rows", "512"]));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("read 3000 rows: 3000 scored, 0 rejected"),
        "{summary}"
    );
    ok(score(&pq_in, &b, &["--batch-rows", "512"]));
    ok(score(&pq_in, &c, &["--batch-rows", "300"]));
    let rows = read_output(&a);
    assert_eq!(rows.len(), 3_000);
    assert_eq!(rows, read_output(&b));
    assert_eq!(rows, read_output(&c));
    // Input order, and the models' own scores, bit for bit.
    let expected = model_scores(&csv_in).await;
    for (i, (id, scores)) in rows.iter().enumerate() {
        assert_eq!(id, &format!("T{i:07}"));
        assert_eq!(scores, &expected[id], "row {i}");
    }
    // The models that scored the file, in its metadata.
    let meta = parquet_metadata(&a);
    let models: serde_json::Value = serde_json::from_str(&meta["segscore.models"]).unwrap();
    for (i, name) in MODELS.iter().enumerate() {
        let m = manifest(name, latest_version(name));
        assert_eq!(models[i]["name"], *name);
        assert_eq!(models[i]["version"], m.version);
        assert_eq!(models[i]["sha256"], m.sha256);
    }
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("from-parquet.csv.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["models"], models);
    // Nothing rejected: no rejects file.
    assert!(!dir.path().join("from-csv.parquet.rejects.csv").exists());
    assert!(!dir.path().join("from-csv.parquet.parts").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_go_to_the_rejects_file_and_strict_fails_on_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiled_csv(8);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<String> = lines[0].split(',').map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut set = |row: usize, name: &str, value: &str| {
        let mut cells: Vec<String> = lines[row + 1].split(',').map(String::from).collect();
        cells[col(name)] = value.into();
        lines[row + 1] = cells.join(",");
    };
    set(1, "frequency", "abc"); // unparseable
    set(2, "tenure_days", ""); // missing where the models reject it
    set(3, "recency_days", "99999"); // out of range
    set(4, "region", "mars"); // unknown category
    set(6, "frequency", "2.5"); // not an integer
    set(6, "email_engagement", "NaN"); // imputed: fine on its own
    set(7, "email_engagement", "150"); // out of range
    let input = write(dir.path(), "bad.csv", &(lines.join("\n") + "\n"));
    let output = dir.path().join("out.csv");
    let out = ok(score(&input, &output, &["--batch-rows", "3"]));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("read 8 rows: 2 scored, 6 rejected"),
        "{summary}"
    );
    let rejects = std::fs::read_to_string(dir.path().join("out.csv.rejects.csv")).unwrap();
    let categories =
        "north_america, europe, asia_pacific, latin_america, middle_east_africa, unknown";
    assert_eq!(
        rejects,
        format!(
            "row,column,reason\n\
             1,frequency,not a number\n\
             2,tenure_days,missing (or NaN) and the model rejects missing values\n\
             3,recency_days,\"out of range [0, 3650]\"\n\
             4,region,\"unknown category (expected one of: {categories})\"\n\
             6,frequency,not an integer\n\
             7,email_engagement,\"out of range [0, 100]\"\n"
        )
    );
    let rows = read_output(&output);
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["T0000000", "T0000005"]);
    let good: Vec<String> = [0usize, 5].iter().map(|&i| lines[i + 1].clone()).collect();
    let good_csv = write(
        dir.path(),
        "good.csv",
        &format!("{}\n{}\n", lines[0], good.join("\n")),
    );
    let expected = model_scores(&good_csv).await;
    for (id, scores) in &rows {
        assert_eq!(scores, &expected[id]);
    }

    let strict = score(&input, &dir.path().join("strict.csv"), &["--strict"]);
    assert!(!strict.status.success());
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains("row 1 column `frequency`: not a number"),
        "{err}"
    );
    assert!(!dir.path().join("strict.csv").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_crash_gives_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    // A few bad rows, so the rejects file is resumed too.
    let text = tiled_csv(6_000)
        .replace("T0001234,", "T0001234,x")
        .replace("\nT0004321,", "\nT0004321,-1");
    let input = write(dir.path(), "in.csv", &text);
    let opts = ["--batch-rows", "250", "--part-rows", "1000"];
    for ext in ["parquet", "csv"] {
        let whole = dir.path().join(format!("whole.{ext}"));
        ok(score(&input, &whole, &opts));
        let resumed = dir.path().join(format!("resumed.{ext}"));
        let crashed = score(
            &input,
            &resumed,
            &[&opts[..], &["--fail-after-parts", "2"]].concat(),
        );
        assert_eq!(
            crashed.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        assert!(!resumed.exists());
        let staging = dir.path().join(format!("resumed.{ext}.parts"));
        let mut files: Vec<String> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        // Two committed parts, and the third half written.
        assert!(files.contains(&format!("part-000001.{ext}")), "{files:?}");
        assert!(
            files.contains(&format!("part-000002.{ext}.tmp")),
            "{files:?}"
        );
        let out = ok(score(
            &input,
            &resumed,
            &[&opts[..], &["--resume"]].concat(),
        ));
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(
            summary.contains("read 6000 rows: 5998 scored, 2 rejected"),
            "{summary}"
        );
        assert_eq!(read_output(&resumed), read_output(&whole));
        assert_eq!(read_output(&whole).len(), 5_998);
        let rejects = |p: &Path| {
            let mut name = p.as_os_str().to_os_string();
            name.push(".rejects.csv");
            std::fs::read_to_string(name).unwrap()
        };
        assert_eq!(rejects(&resumed), rejects(&whole));
        assert_eq!(rejects(&whole).lines().count(), 3, "{}", rejects(&whole));
        if ext == "parquet" {
            assert_eq!(parquet_metadata(&resumed), parquet_metadata(&whole));
        }
    }
    // Resuming with other options is refused, not silently mixed.
    let out = dir.path().join("mixed.csv");
    let crashed = score(
        &input,
        &out,
        &[&opts[..], &["--fail-after-parts", "1"]].concat(),
    );
    assert_eq!(crashed.status.code(), Some(3));
    let refused = score(&input, &out, &["--batch-rows", "500", "--resume"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--batch-rows"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_cover_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiled_csv(2_500);
    let csv_in = write(dir.path(), "in.csv", &text);
    let pq_in = dir.path().join("in.parquet");
    csv_to_parquet(&text, &pq_in, 300); // 9 row groups
    let whole = dir.path().join("whole.csv");
    ok(score(&csv_in, &whole, &["--batch-rows", "200"]));
    let expected: HashMap<String, Vec<f32>> = read_output(&whole).into_iter().collect();
    for input in [&csv_in, &pq_in] {
        let mut seen: HashMap<String, Vec<f32>> = HashMap::new();
        for k in 0..3 {
            let out = dir.path().join(format!("shard-{k}.csv"));
            ok(score(
                input,
                &out,
                &["--batch-rows", "200", "--shard", &format!("{k}/3")],
            ));
            let rows = read_output(&out);
            assert!(
                !rows.is_empty() && rows.len() < 2_500,
                "shard {k} of {input:?}"
            );
            for (id, scores) in rows {
                assert!(seen.insert(id.clone(), scores).is_none(), "{id} twice");
            }
        }
        assert_eq!(seen, expected, "{input:?}");
    }
    let bad = score(&csv_in, &dir.path().join("x.csv"), &["--shard", "3/3"]);
    assert!(!bad.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_the_work_and_match_embedded_scoring() {
    let with_metrics = |a: &mut segscore::config::ServeArgs| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        a.engine.workers = Some(1);
    };
    let one = spawn_app_with(&shipped_models(), with_metrics).await;
    let two = spawn_app_with(&shipped_models(), with_metrics).await;
    let dir = tempfile::tempdir().unwrap();
    let text = tiled_csv(20_000);
    let input = dir.path().join("in.parquet");
    csv_to_parquet(&text, &input, 5_000);
    let embedded = dir.path().join("embedded.parquet");
    ok(score(&input, &embedded, &["--batch-rows", "500"]));
    let remote = dir.path().join("remote.parquet");
    let addr_one = format!("http://{}", one.addr);
    let addr_two = format!("http://{}", two.addr);
    ok(score(
        &input,
        &remote,
        &[
            "--batch-rows",
            "500",
            "--in-flight",
            "2",
            "--addr",
            &addr_one,
            "--addr",
            &addr_two,
        ],
    ));
    let rows = read_output(&remote);
    assert_eq!(rows.len(), 20_000);
    assert_eq!(rows, read_output(&embedded));
    assert_eq!(
        parquet_metadata(&remote)["segscore.models"],
        parquet_metadata(&embedded)["segscore.models"]
    );
    let csv_in = write(dir.path(), "in.csv", &text);
    let expected = model_scores(&csv_in).await;
    for (id, scores) in rows.iter().step_by(37) {
        assert_eq!(scores, &expected[id]);
    }
    let mut total = 0.0;
    for app in [&one, &two] {
        let (_, body) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
        let chunks: f64 = body
            .lines()
            .find(|l| {
                l.starts_with(
                    "segscore_requests_total{code=\"Ok\",method=\"ScoreStream\",protocol=\"grpc\"}",
                )
            })
            .and_then(|l| l.rsplit_once(' '))
            .map_or(0.0, |(_, v)| v.parse().unwrap());
        assert!(chunks >= 1.0, "a server received no chunk:\n{body}");
        total += chunks;
    }
    assert_eq!(total, 40.0, "every chunk scored exactly once");
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// Runs `segscore score` embedded on the repository `models` with `extra`
/// only (no --models unless given), ONNX Runtime from `ort` when given.
fn score_on(
    models: &Path,
    input: &Path,
    output: &Path,
    ort: Option<&str>,
    extra: &[&str],
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_segscore"));
    command
        .arg("score")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--models-dir")
        .arg(models)
        .args(["--workers", "1"])
        .args(extra);
    if let Some(path) = ort {
        command.env("ORT_DYLIB_PATH", path);
    }
    command.output().unwrap()
}

fn failed(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "segscore score succeeded: {err}");
    err
}

/// `<path><suffix>`, e.g. the rejects file or the staging directory.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// (name, version) of each model in an output's `segscore.models`.
fn metadata_versions(meta: &BTreeMap<String, String>) -> Vec<(String, u64)> {
    let models: Vec<serde_json::Value> = serde_json::from_str(&meta["segscore.models"]).unwrap();
    models
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The highest shipped version of `name` that runs without ONNX Runtime.
fn smartcore_version(name: &str) -> Option<u64> {
    (1..=latest_version(name))
        .rev()
        .find(|v| manifest(name, *v).format.as_str() == "smartcore")
}

#[test]
fn a_model_version_that_cannot_load_fails_the_job_unless_fallback_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.parquet");
    let no_ort = Some("/nonexistent/libonnxruntime.so");
    let run = |extra: &[&str]| score_on(&shipped_models(), &sample_users(), &output, no_ort, extra);
    // The newest shipped churn, ltv and propensity are ONNX; churn and
    // propensity also ship an older smartcore version, ltv does not.
    for name in MODELS {
        assert_eq!(manifest(name, latest_version(name)).format.as_str(), "onnx");
    }
    let churn = (latest_version("churn"), smartcore_version("churn").unwrap());
    let propensity = (
        latest_version("propensity"),
        smartcore_version("propensity").unwrap(),
    );
    let ltv = latest_version("ltv");
    assert_eq!(smartcore_version("ltv"), None);

    // No --models: every model at its newest version, and three cannot load.
    let err = failed(&run(&[]));
    for expected in [
        format!("model `churn` version {}", churn.0),
        format!("model `ltv` version {ltv}"),
        format!("model `propensity` version {}", propensity.0),
        "ONNX Runtime is not available".into(),
        "Fix: ".into(),
        format!(
            "--allow-fallback would score churn with version {} and propensity with version {} instead; ltv cannot fall back.",
            churn.1, propensity.1
        ),
    ] {
        assert!(err.contains(&expected), "{expected:?} not in: {err}");
    }
    assert!(!output.exists());
    assert!(!beside(&output, ".parts").exists());

    // --allow-fallback cannot make up a version ltv does not have.
    let err = failed(&run(&["--allow-fallback"]));
    assert!(
        err.contains(&format!(
            "model `ltv` version {ltv} cannot be used: ONNX Runtime"
        )),
        "{err}"
    );
    assert!(!err.contains("model `churn` version"), "{err}");
    assert!(!output.exists());

    // A pinned version never falls back...
    let pinned = format!("churn:{}", churn.0);
    let err = failed(&run(&["--models", &pinned, "--allow-fallback"]));
    assert!(
        err.contains(&format!("model `churn` version {} cannot be used", churn.0)),
        "{err}"
    );
    // ...and only the versions the job asks for matter.
    let pinned = format!("churn:{}", churn.1);
    let out = ok(run(&["--models", &pinned]));
    let meta = parquet_metadata(&output);
    assert_eq!(metadata_versions(&meta), [("churn".to_string(), churn.1)]);
    assert!(!meta.contains_key("segscore.fallbacks"), "{meta:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("falling back"));

    // Asked for, a fallback is taken, warned about and recorded.
    let out = ok(run(&["--models", "churn,propensity", "--allow-fallback"]));
    let log = String::from_utf8_lossy(&out.stderr);
    for (name, (wanted, used)) in [("churn", churn), ("propensity", propensity)] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("falling back")
                && l.contains(&format!("model={name} wanted={wanted} used={used}"))),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "{name}:{used} (fallback: version {wanted} cannot be used)"
            )),
            "{log}"
        );
    }
    let meta = parquet_metadata(&output);
    assert_eq!(
        metadata_versions(&meta),
        [
            ("churn".to_string(), churn.1),
            ("propensity".to_string(), propensity.1)
        ]
    );
    let fallbacks: serde_json::Value = serde_json::from_str(&meta["segscore.fallbacks"]).unwrap();
    assert_eq!(fallbacks.as_array().unwrap().len(), 2, "{fallbacks}");
    for (i, (name, (wanted, used))) in [("churn", churn), ("propensity", propensity)]
        .into_iter()
        .enumerate()
    {
        let f = &fallbacks[i];
        assert_eq!(
            (f["name"].as_str(), f["wanted"].as_u64(), f["used"].as_u64()),
            (Some(name), Some(wanted), Some(used)),
            "{fallbacks}"
        );
        assert!(
            f["reason"].as_str().unwrap().contains("ONNX Runtime"),
            "{fallbacks}"
        );
    }
    assert_eq!(read_output(&output).len(), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_validation_fails_the_job_embedded_and_remote_unless_fallback_is_allowed()
{
    // propensity's newest version with a golden set it does not reproduce.
    let repo = copy_models();
    let broken = latest_version("propensity");
    let previous = broken - 1;
    let golden = repo.path().join(format!("propensity/{broken}/golden.csv"));
    let text = std::fs::read_to_string(&golden).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (rest, expected) = lines[1].rsplit_once(',').unwrap();
    let e: f64 = expected.parse().unwrap();
    lines[1] = format!("{rest},{}", if e > 0.5 { e - 0.3 } else { e + 0.3 });
    std::fs::write(&golden, lines.join("\n") + "\n").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.csv", &tiled_csv(500));
    let check = |err: &str| {
        for expected in [
            format!("model `propensity` version {broken} cannot be used: "),
            "golden set".into(),
            format!("--allow-fallback would score propensity with version {previous} instead."),
        ] {
            assert!(err.contains(&expected), "{expected:?} not in: {err}");
        }
    };
    let embedded = dir.path().join("embedded.parquet");
    check(&failed(&score_on(
        repo.path(),
        &input,
        &embedded,
        None,
        &[],
    )));
    assert!(!embedded.exists());
    ok(score_on(
        repo.path(),
        &input,
        &embedded,
        None,
        &["--allow-fallback"],
    ));

    let app = spawn_app_with(repo.path(), |a| a.engine.workers = Some(1)).await;
    let addr = format!("http://{}", app.addr);
    let remote = dir.path().join("remote.parquet");
    let err = failed(&score_on(
        repo.path(),
        &input,
        &remote,
        None,
        &["--addr", &addr],
    ));
    check(&err);
    assert!(err.contains(&app.addr.to_string()), "{err}");
    assert!(!remote.exists());
    ok(score_on(
        repo.path(),
        &input,
        &remote,
        None,
        &["--addr", &addr, "--allow-fallback"],
    ));
    app.stop().await.unwrap();

    // Both fell back the same way and scored the same (every column: the
    // clustering model's too).
    let batches = |path: &Path| -> Vec<RecordBatch> {
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let scored = batches(&embedded);
    assert_eq!(scored.iter().map(|b| b.num_rows()).sum::<usize>(), 500);
    assert_eq!(batches(&remote), scored);
    let (e, r) = (parquet_metadata(&embedded), parquet_metadata(&remote));
    assert_eq!(e["segscore.models"], r["segscore.models"]);
    assert!(metadata_versions(&e).contains(&("propensity".to_string(), previous)));
    for meta in [&e, &r] {
        let fallbacks: serde_json::Value =
            serde_json::from_str(&meta["segscore.fallbacks"]).unwrap();
        assert_eq!(fallbacks.as_array().unwrap().len(), 1, "{fallbacks}");
        assert_eq!(fallbacks[0]["name"], "propensity");
        assert_eq!(fallbacks[0]["wanted"], broken);
        assert_eq!(fallbacks[0]["used"], previous);
    }
}

/// `rows` tiled rows where each of `bad_rows` has two bad cells.
fn with_two_bad_cells(rows: usize, bad_rows: &[usize]) -> String {
    let text = tiled_csv(rows);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<String> = lines[0].split(',').map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for &row in bad_rows {
        let mut cells: Vec<String> = lines[row + 1].split(',').map(String::from).collect();
        cells[col("frequency")] = "abc".into(); // not a number
        cells[col("recency_days")] = "99999".into(); // out of range
        lines[row + 1] = cells.join(",");
    }
    lines.join("\n") + "\n"
}

#[test]
fn rejected_rows_are_counted_once_however_many_cells_are_bad_across_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "in.csv",
        &with_two_bad_cells(40, &[3, 4, 17, 33]),
    );
    // Chunks of 5 rows; a part commits once it holds 10 scored rows, so
    // parts 0 and 1 hold rows 0-14 (bad: 3, 4) and 15-29 (bad: 17).
    let opts = ["--batch-rows", "5", "--part-rows", "10"];
    let whole = dir.path().join("whole.parquet");
    let out = ok(score(&input, &whole, &opts));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("read 40 rows: 36 scored, 4 rejected (see "),
        "{summary}"
    );
    let meta = parquet_metadata(&whole);
    assert_eq!(meta["segscore.rows_read"], "40");
    assert_eq!(meta["segscore.rows_scored"], "36");
    assert_eq!(meta["segscore.rows_rejected"], "4");
    let rejects = std::fs::read_to_string(beside(&whole, ".rejects.csv")).unwrap();
    assert_eq!(
        rejects.lines().count(),
        1 + 8,
        "a line per bad cell: {rejects}"
    );

    let resumed = dir.path().join("resumed.parquet");
    let crashed = score(
        &input,
        &resumed,
        &[&opts[..], &["--fail-after-parts", "2"]].concat(),
    );
    assert_eq!(crashed.status.code(), Some(3));
    let progress: serde_json::Value = serde_json::from_slice(
        &std::fs::read(beside(&resumed, ".parts").join("progress.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(progress["parts"].as_array().unwrap().len(), 2, "{progress}");
    assert_eq!(progress["rows_read"], 30, "{progress}");
    assert_eq!(progress["rows_scored"], 27, "{progress}");
    assert_eq!(progress["rows_rejected"], 3, "{progress}");
    assert_eq!(progress["parts"][0]["rejects"], 2, "{progress}");
    assert_eq!(progress["parts"][1]["rejects"], 1, "{progress}");

    let out = ok(score(
        &input,
        &resumed,
        &[&opts[..], &["--resume"]].concat(),
    ));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("read 40 rows: 36 scored, 4 rejected (see "),
        "{summary}"
    );
    assert_eq!(parquet_metadata(&resumed), parquet_metadata(&whole));
    assert_eq!(
        std::fs::read_to_string(beside(&resumed, ".rejects.csv")).unwrap(),
        rejects
    );
}

#[test]
fn no_rejects_file_is_written_when_no_row_is_rejected_even_across_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.csv", &tiled_csv(3_000));
    let opts = ["--batch-rows", "250", "--part-rows", "1000"];
    for ext in ["csv", "parquet"] {
        // A rejects file left by an earlier run of the same output would
        // describe rows this output does not have: it goes.
        let output = dir.path().join(format!("out.{ext}"));
        let rejects = beside(&output, ".rejects.csv");
        std::fs::write(&rejects, "row,column,reason\n7,frequency,not a number\n").unwrap();
        let out = ok(score(&input, &output, &opts));
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(
            summary.contains("read 3000 rows: 3000 scored, 0 rejected, with "),
            "{summary}"
        );
        assert!(!rejects.exists());

        let resumed = dir.path().join(format!("resumed.{ext}"));
        let crashed = score(
            &input,
            &resumed,
            &[&opts[..], &["--fail-after-parts", "1"]].concat(),
        );
        assert_eq!(crashed.status.code(), Some(3));
        let out = ok(score(
            &input,
            &resumed,
            &[&opts[..], &["--resume"]].concat(),
        ));
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(
            summary.contains("read 3000 rows: 3000 scored, 0 rejected, with "),
            "{summary}"
        );
        assert!(!beside(&resumed, ".rejects.csv").exists());
        assert!(!beside(&resumed, ".parts").exists());
        assert_eq!(read_output(&resumed), read_output(&output));
    }
}
