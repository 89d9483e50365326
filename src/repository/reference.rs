//! A version's `reference.json` on disk: read and checked at load (a bad
//! one refuses the version), and written from a sample of rows scored by the
//! version itself (`segscore models reference`, `models import`, `train`).
//! The format and its arithmetic live in [`crate::drift::reference`].

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{
    files::{self, Cap},
    load::{build_backend, read_csv_batch, EngineConfig, LoadError},
    manifest::{Manifest, ReferenceSpec, ScorePicker, Task, MANIFEST_FILE},
};
use crate::{
    drift::reference::{Reference, REFERENCE_FILE},
    features::{FeatureBatch, FeatureSchema},
};

/// Largest `reference.json` read: 256 bins × a few hundred features fit
/// far below it.
pub const MAX_REFERENCE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and checks the manifest's reference, if it names one.
pub fn read(dir: &Path, manifest: &Manifest) -> Result<Option<Reference>, LoadError> {
    let Some(spec) = &manifest.reference else {
        return Ok(None);
    };
    let bad = |m: String| LoadError::Reference(format!("`{}` {m}", spec.file));
    let cap = Cap::new(MAX_REFERENCE_BYTES, "the reference limit (4 MiB)");
    let (bytes, actual) =
        files::read_in_hashed(dir, &spec.file, cap).map_err(|e| bad(e.to_string()))?;
    if !actual.eq_ignore_ascii_case(spec.sha256.trim()) {
        return Err(LoadError::Sha256 {
            file: spec.file.clone(),
            expected: spec.sha256.clone(),
            actual,
        });
    }
    Reference::parse(&bytes, &manifest.features)
        .map(Some)
        .map_err(bad)
}

/// The reference of `batch` as scored by the version in `dir` (its model
/// file checked as at load). Rows the version would refuse count in the
/// feature distributions but have no score.
pub fn compute(
    dir: &Path,
    manifest: &Manifest,
    batch: &FeatureBatch,
    source: &str,
    engine: &EngineConfig,
) -> Result<Reference, String> {
    let schema = FeatureSchema::new(manifest.features.clone()).map_err(|e| e.to_string())?;
    let cap = Cap::new(engine.max_model_bytes, "--max-model-bytes");
    let (bytes, actual) = files::read_in_hashed(dir, &manifest.file, cap)
        .map_err(|e| format!("model file `{}` {e}", manifest.file))?;
    if !actual.eq_ignore_ascii_case(manifest.sha256.trim()) {
        return Err(format!("sha256 mismatch for {}", manifest.file));
    }
    let mut backend =
        build_backend(manifest, &schema, &bytes, engine).map_err(|e| e.to_string())?;
    let refused: std::collections::BTreeSet<usize> = schema
        .row_errors(batch)
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|e| e.row())
        .collect();
    let rows: Vec<usize> = (0..batch.rows()).filter(|r| !refused.contains(r)).collect();
    let mut scores = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(4096) {
        let input = schema
            .encode_rows(batch, chunk.iter().copied())
            .map_err(|e| e.to_string())?;
        let raw = backend.score(input.view()).map_err(|e| e.to_string())?;
        if manifest.task == Task::Clustering {
            scores.extend(raw.chunks_exact(2).map(|pair| pair[1]));
        } else {
            scores.extend(ScorePicker::of(manifest).scores(&raw));
        }
    }
    Ok(Reference::of_sample(
        &manifest.features,
        batch,
        &scores,
        source,
    ))
}

/// Writes `reference.json` into `dir` and names it in the manifest (the
/// manifest last, atomically, as every writer of a version does). The
/// manifest's text is kept as written apart from its `[reference]` table.
pub fn write(dir: &Path, reference: &Reference) -> Result<(), String> {
    let spec = save(dir, reference)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
    let updated = with_reference_table(&text, &spec);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    std::fs::write(&tmp, updated).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &manifest_path).map_err(io(&manifest_path))
}

fn io(p: &Path) -> impl Fn(std::io::Error) -> String {
    let p = p.display().to_string();
    move |e| format!("{p}: {e}")
}

/// Writes `reference.json` into `dir` and returns the manifest's
/// `[reference]` for it (for writers that write the manifest afterwards).
pub fn save(dir: &Path, reference: &Reference) -> Result<ReferenceSpec, String> {
    let mut json = serde_json::to_vec_pretty(reference).map_err(|e| e.to_string())?;
    json.push(b'\n');
    let path = dir.join(REFERENCE_FILE);
    std::fs::write(&path, &json).map_err(io(&path))?;
    Ok(ReferenceSpec {
        file: REFERENCE_FILE.into(),
        sha256: hex::encode(Sha256::digest(&json)),
    })
}

/// `text` with its `[reference]` table (if any) replaced by `spec`'s,
/// appended at the end (a top-level table may follow any other).
fn with_reference_table(text: &str, spec: &ReferenceSpec) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut skipping = false;
    for line in text.lines() {
        let header = line.trim_start().starts_with('[');
        if header {
            skipping = line.trim() == "[reference]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out.push_str(&format!(
        "\n[reference]\nfile = \"{}\"\nsha256 = \"{}\"\n",
        spec.file, spec.sha256
    ));
    out
}

/// `segscore models reference`: computes the reference of the sample CSV
/// (one column per feature, extra columns ignored) for the version in `dir`
/// and writes it. The model file is not touched.
pub fn write_from_csv(
    dir: &Path,
    sample: &Path,
    engine: &EngineConfig,
) -> Result<Reference, String> {
    let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
    let schema = FeatureSchema::new(manifest.features.clone()).map_err(|e| e.to_string())?;
    let (batch, _) = read_csv_batch(sample, &schema, "")?;
    let source = sample
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reference = compute(dir, &manifest, &batch, &source, engine)?;
    write(dir, &reference)?;
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_table_is_replaced_not_duplicated() {
        let spec = ReferenceSpec {
            file: "reference.json".into(),
            sha256: "ab".into(),
        };
        let text = "name = \"x\"\n\n[card]\na = 1\n";
        let once = with_reference_table(text, &spec);
        let twice = with_reference_table(&once, &spec);
        assert_eq!(once, twice);
        let parsed: toml::Table = toml::from_str(&twice).unwrap();
        assert_eq!(parsed["reference"]["sha256"].as_str(), Some("ab"));
        assert_eq!(parsed["card"]["a"].as_integer(), Some(1));
        // A table after [reference] survives.
        let mid = "[reference]\nfile = \"old\"\n\n[card]\na = 2\n";
        let parsed: toml::Table = toml::from_str(&with_reference_table(mid, &spec)).unwrap();
        assert_eq!(parsed["card"]["a"].as_integer(), Some(2));
        assert_eq!(parsed["reference"]["file"].as_str(), Some("reference.json"));
    }
}
