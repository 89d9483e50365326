//! Where a job stands, so `--resume` can pick it up: the fingerprint of its
//! input, options and models; the staging directory's checkpoint, resumed or
//! started afresh; and the metadata the assembled output carries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tracing::info;

use super::{
    read::Format,
    select::Fallback,
    write::{Fingerprint, ModelId, OutputColumn, Progress},
};
use crate::config::ScoreArgs;

/// What a checkpoint must match to be resumed: the input file as it is now
/// (path, size, modification time), the options that shape chunks and
/// output, and the models with their versions and sha256.
pub(super) fn fingerprint(
    args: &ScoreArgs,
    output_format: Format,
    batch_rows: usize,
    columns: &[OutputColumn],
    models: &[ModelId],
) -> anyhow::Result<Fingerprint> {
    let input_meta = std::fs::metadata(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    Ok(Fingerprint {
        input: std::path::absolute(&args.input)
            .unwrap_or_else(|_| args.input.clone())
            .display()
            .to_string(),
        input_bytes: input_meta.len(),
        input_modified_ns: input_meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos()),
        output_format,
        shard: args.shard.map(|s| s.to_string()),
        batch_rows,
        id_column: args.id_column.clone(),
        columns: columns.to_vec(),
        models: models.to_vec(),
    })
}

/// The checkpoint in `staging`: with `resume`, the one on disk (which must
/// match `fingerprint`); otherwise, or when there is none, a fresh one
/// (a stale staging directory from an earlier run is removed first).
pub(super) fn open(
    staging: &Path,
    resume: bool,
    fingerprint: Fingerprint,
) -> anyhow::Result<Progress> {
    let resumed = if resume {
        if staging.is_dir() {
            Progress::load_and_clean(staging)?
        } else {
            None
        }
    } else {
        if staging.exists() {
            std::fs::remove_dir_all(staging)
                .with_context(|| format!("removing the stale {}", staging.display()))?;
        }
        None
    };
    if let Some(p) = resumed {
        if let Some(why) = fingerprint.mismatch(&p.fingerprint) {
            bail!(
                "cannot --resume from {}: {why}; rerun without --resume to start over",
                staging.display()
            );
        }
        info!(
            parts = p.parts.len(),
            next_chunk = p.next_chunk,
            rows_read = p.rows_read,
            "resuming"
        );
        return Ok(p);
    }
    std::fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
    let p = Progress::fresh(fingerprint);
    p.save(staging)?;
    Ok(p)
}

/// The key-value metadata of the assembled output: the models and any
/// fallback, the columns, the input and shard, the row counts and the
/// segscore version.
pub(super) fn metadata(
    progress: &Progress,
    models: &[ModelId],
    fallbacks: &[Fallback],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut metadata = serde_json::Map::new();
    metadata.insert("models".into(), serde_json::to_value(models)?);
    if !fallbacks.is_empty() {
        metadata.insert("fallbacks".into(), serde_json::to_value(fallbacks)?);
    }
    let columns: Vec<&String> = progress
        .fingerprint
        .columns
        .iter()
        .map(|c| &c.name)
        .collect();
    metadata.insert("columns".into(), serde_json::to_value(columns)?);
    metadata.insert("input".into(), progress.fingerprint.input.clone().into());
    if let Some(shard) = &progress.fingerprint.shard {
        metadata.insert("shard".into(), shard.clone().into());
    }
    metadata.insert("rows_read".into(), progress.rows_read.into());
    metadata.insert("rows_scored".into(), progress.rows_scored.into());
    metadata.insert("rows_rejected".into(), progress.rows_rejected.into());
    metadata.insert("segscore_version".into(), env!("CARGO_PKG_VERSION").into());
    Ok(metadata)
}

/// The rejects file: `--rejects`, or the output's path plus `.rejects.csv`.
pub(super) fn rejects_path(args: &ScoreArgs) -> PathBuf {
    args.rejects.clone().unwrap_or_else(|| {
        let mut p = args.output.as_os_str().to_os_string();
        p.push(".rejects.csv");
        PathBuf::from(p)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::bulk::write::OutputKind;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        score: ScoreArgs,
    }

    fn args(dir: &Path) -> ScoreArgs {
        let input = dir.join("in.csv");
        let output = dir.join("out.parquet");
        Cli::parse_from([
            "segscore".as_ref(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            output.as_os_str(),
        ])
        .score
    }

    fn model(version: u64) -> ModelId {
        ModelId {
            name: "churn".into(),
            version,
            sha256: format!("{version:064}"),
        }
    }

    fn fingerprint_of(args: &ScoreArgs, version: u64) -> Fingerprint {
        let columns = [OutputColumn {
            name: "customer_id".into(),
            kind: OutputKind::Id,
        }];
        fingerprint(args, Format::Parquet, 4096, &columns, &[model(version)]).unwrap()
    }

    #[test]
    fn a_checkpoint_is_resumed_only_for_the_same_input_and_models() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        std::fs::write(&args.input, "customer_id,x\na,1\n").unwrap();
        let staging = dir.path().join("staging");
        let fresh = open(&staging, false, fingerprint_of(&args, 1)).unwrap();
        assert_eq!((fresh.next_chunk, fresh.complete), (0, false));

        let resumed = open(&staging, true, fingerprint_of(&args, 1)).unwrap();
        assert!(resumed.fingerprint.mismatch(&fresh.fingerprint).is_none());

        let err = open(&staging, true, fingerprint_of(&args, 2)).unwrap_err();
        assert!(
            err.to_string()
                .contains("the models or their versions changed"),
            "{err}"
        );
        std::fs::write(&args.input, "customer_id,x\na,1\nb,2\n").unwrap();
        let err = open(&staging, true, fingerprint_of(&args, 1)).unwrap_err();
        assert!(err.to_string().contains("the input file changed"), "{err}");
    }

    #[test]
    fn without_resume_a_stale_staging_directory_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        std::fs::write(&args.input, "customer_id,x\na,1\n").unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("part-00007.parquet"), b"left over").unwrap();
        open(&staging, false, fingerprint_of(&args, 1)).unwrap();
        assert!(!staging.join("part-00007.parquet").exists());
        // --resume with nothing to resume starts afresh too.
        let other = dir.path().join("other");
        let p = open(&other, true, fingerprint_of(&args, 1)).unwrap();
        assert_eq!(p.rows_read, 0);
    }

    #[test]
    fn the_output_metadata_names_models_columns_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        std::fs::write(&args.input, "customer_id,x\na,1\n").unwrap();
        let mut p = open(&dir.path().join("s"), false, fingerprint_of(&args, 1)).unwrap();
        p.rows_read = 3;
        p.rows_rejected = 1;
        let m = metadata(&p, &[model(1)], &[]).unwrap();
        assert_eq!(m["models"][0]["version"], 1);
        assert_eq!(m["columns"], serde_json::json!(["customer_id"]));
        assert_eq!(m["rows_read"], 3);
        assert_eq!(m["rows_rejected"], 1);
        assert!(!m.contains_key("fallbacks") && !m.contains_key("shard"));
        assert_eq!(
            rejects_path(&args),
            dir.path().join("out.parquet.rejects.csv")
        );
    }
}
