//! `segscore score`: scores a CSV of customers with one or more models and
//! writes the ids plus one score column per model. With `--addr` it calls a
//! running server (Score, one request per chunk); without, it loads the
//! repository and scores in-process through the same engine, so both give the
//! same numbers. The input is read in chunks of `--batch-rows`, never whole.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use anyhow::{bail, Context};
use tonic::transport::Channel;
use tracing::info;

use crate::{
    api::pb::{self, scoring_client::ScoringClient},
    config::ScoreArgs,
    features::{ColumnBuilder, DType, FeatureBatch, FeatureSpec},
    repository::{LoadedModel, Repository},
};

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows: usize,
    /// `name` → version used.
    pub models: Vec<(String, u64)>,
    pub seconds: f64,
}

/// A model selection from `--models`: `name` or `name:version`.
fn parse_model(spec: &str) -> anyhow::Result<(String, u64)> {
    match spec.split_once(':') {
        None => Ok((spec.trim().to_string(), 0)),
        Some((name, version)) => Ok((
            name.trim().to_string(),
            version
                .trim()
                .parse()
                .with_context(|| format!("--models {spec}: version must be a number"))?,
        )),
    }
}

enum Scorer {
    Embedded(Vec<Arc<LoadedModel>>),
    Remote {
        client: ScoringClient<Channel>,
        refs: Vec<pb::ModelRef>,
    },
}

impl Scorer {
    async fn score(&mut self, batch: FeatureBatch, sequence: u64) -> anyhow::Result<Vec<Vec<f32>>> {
        match self {
            Scorer::Embedded(models) => {
                let mut out = Vec::with_capacity(models.len());
                for model in models.iter() {
                    let scores = model.score(&batch).await.with_context(|| {
                        format!("model `{}` version {}", model.name(), model.version())
                    })?;
                    out.push(scores.scores);
                }
                Ok(out)
            }
            Scorer::Remote { client, refs } => {
                let request = pb::ScoreRequest {
                    sequence,
                    entity_ids: Vec::new(), // ids stay on this side of the wire
                    features: Some(batch.into()),
                    models: refs.clone(),
                    segments: Vec::new(),
                };
                let response = client
                    .score(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                Ok(response.models.into_iter().map(|m| m.scores).collect())
            }
        }
    }
}

/// Runs the job described by `args`.
pub async fn run(args: ScoreArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let selected: Vec<(String, u64)> = args
        .models
        .iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| parse_model(m))
        .collect::<anyhow::Result<_>>()?;
    let (mut scorer, models, specs) = match &args.addr {
        None => embedded(&args, selected).await?,
        Some(addr) => remote(addr, selected).await?,
    };
    let dtypes = union_dtypes(&specs)?;

    let mut reader = csv::Reader::from_path(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let headers = reader.headers()?.clone();
    let id_idx = headers
        .iter()
        .position(|h| h == args.id_column)
        .with_context(|| {
            format!(
                "{}: no id column `{}`",
                args.input.display(),
                args.id_column
            )
        })?;
    let feature_cols: Vec<(usize, String, DType)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| dtypes.get(h).map(|d| (i, h.to_string(), *d)))
        .collect();
    let mut writer = csv::Writer::from_path(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut header = vec![args.id_column.clone()];
    header.extend(models.iter().map(|(n, _)| n.clone()));
    writer.write_record(&header)?;

    let batch_rows = args.batch_rows.max(1);
    let mut records = reader.records();
    let mut done = 0usize;
    for sequence in 0u64.. {
        let mut ids = Vec::with_capacity(batch_rows);
        let mut builders: Vec<ColumnBuilder> = feature_cols
            .iter()
            .map(|(_, _, d)| ColumnBuilder::new(*d))
            .collect();
        for record in records.by_ref().take(batch_rows) {
            let record = record?;
            let line = done + ids.len() + 2; // 1-based, after the header
            ids.push(record.get(id_idx).unwrap_or_default().to_string());
            for ((idx, name, _), builder) in feature_cols.iter().zip(builders.iter_mut()) {
                builder
                    .push(record.get(*idx).unwrap_or_default())
                    .map_err(|want| {
                        anyhow::anyhow!("line {line}, column `{name}`: expected {want}")
                    })?;
            }
        }
        if ids.is_empty() {
            break;
        }
        let columns = feature_cols
            .iter()
            .zip(builders)
            .map(|((_, name, _), b)| (name.clone(), b.finish()))
            .collect();
        let batch = FeatureBatch::new(ids.len(), columns)?;
        let scores = scorer.score(batch, sequence).await.with_context(|| {
            format!(
                "rows {}..{} of {}",
                done,
                done + ids.len(),
                args.input.display()
            )
        })?;
        if scores.len() != models.len() || scores.iter().any(|s| s.len() != ids.len()) {
            bail!(
                "the scorer returned a malformed answer for rows {}..{}",
                done,
                done + ids.len()
            );
        }
        for (row, id) in ids.iter().enumerate() {
            let mut record = Vec::with_capacity(models.len() + 1);
            record.push(id.clone());
            record.extend(scores.iter().map(|s| s[row].to_string()));
            writer.write_record(&record)?;
        }
        done += ids.len();
    }
    writer.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    info!(rows = done, seconds, rows_per_second = done as f64 / seconds.max(1e-9), models = ?models, "scored");
    Ok(Summary {
        rows: done,
        models,
        seconds,
    })
}

type Plan = (Scorer, Vec<(String, u64)>, Vec<FeatureSpec>);

async fn embedded(args: &ScoreArgs, selected: Vec<(String, u64)>) -> anyhow::Result<Plan> {
    let engine = args.engine.engine_config();
    let root = args.models_dir.clone();
    let repository = tokio::task::spawn_blocking(move || Repository::load(&root, &engine))
        .await?
        .with_context(|| format!("reading {}", args.models_dir.display()))?;
    let selected = if selected.is_empty() {
        repository
            .serving_names()
            .into_iter()
            .map(|n| (n, 0))
            .collect()
    } else {
        selected
    };
    let mut loaded = Vec::new();
    let mut specs = Vec::new();
    for (name, version) in &selected {
        let model = repository.resolve(name, *version, "")?;
        specs.extend(model.manifest.features.iter().cloned());
        loaded.push(model);
    }
    let models = loaded
        .iter()
        .map(|m| (m.name().to_string(), m.version()))
        .collect();
    Ok((Scorer::Embedded(loaded), models, specs))
}

async fn remote(addr: &str, selected: Vec<(String, u64)>) -> anyhow::Result<Plan> {
    let channel = Channel::from_shared(addr.to_string())
        .with_context(|| format!("--addr {addr}: not a URL such as http://127.0.0.1:50051"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut client = ScoringClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner()
        .models;
    let selected = if selected.is_empty() {
        listed
            .iter()
            .filter(|m| m.default_version != 0)
            .map(|m| (m.name.clone(), 0))
            .collect()
    } else {
        selected
    };
    let mut models = Vec::new();
    let mut specs = Vec::new();
    let mut refs = Vec::new();
    for (name, version) in selected {
        let info = listed
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("model `{name}` not found on {addr}"))?;
        // Pin the version the schema came from, so a concurrent deploy cannot
        // pair this schema with another version's model.
        let version = if version == 0 {
            info.default_version
        } else {
            version
        };
        let v = info
            .versions
            .iter()
            .find(|v| v.version == version && v.state == pb::VersionState::Serving as i32)
            .with_context(|| {
                format!("model `{name}` version {version} is not serving on {addr}")
            })?;
        for f in &v.features {
            let dtype = match f.dtype.as_str() {
                "f32" => DType::F32,
                "f64" => DType::F64,
                "i64" => DType::I64,
                "bool" => DType::Bool,
                "category" => DType::Category,
                other => bail!("model `{name}`: unknown dtype `{other}` from the server"),
            };
            specs.push(FeatureSpec {
                name: f.name.clone(),
                description: None,
                dtype,
                min: f.min,
                max: f.max,
                categories: f.categories.clone(),
                missing: crate::features::MissingPolicy::Reject,
            });
        }
        refs.push(pb::ModelRef {
            name: name.clone(),
            version,
            label: String::new(),
        });
        models.push((name, version));
    }
    Ok((Scorer::Remote { client, refs }, models, specs))
}

/// One dtype per feature name across the selected models; a conflict means
/// one input column cannot feed both models.
fn union_dtypes(specs: &[FeatureSpec]) -> anyhow::Result<BTreeMap<String, DType>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        if let Some(prev) = out.insert(spec.name.clone(), spec.dtype) {
            if prev != spec.dtype {
                bail!(
                    "feature `{}` is {} in one model and {} in another",
                    spec.name,
                    prev,
                    spec.dtype
                );
            }
        }
    }
    Ok(out)
}
