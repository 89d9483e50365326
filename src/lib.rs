//! segscore: a gRPC service that scores customer models (churn, lifetime value,
//! purchase propensity) for segmentation.
//!
//! The modules follow a request: a front end ([`api`] for gRPC, [`bulk`] for
//! files) converts its wire format ([`proto`]) into the scoring core's
//! request; the core ([`infer`]) resolves versions in the [`repository`],
//! encodes [`features`] against each version's schema, runs them on the
//! [`engine`]'s worker threads (ONNX Runtime or smartcore backends) and
//! evaluates [`segments`] (CEL rules) over the features and scores. [`app`]
//! wires the server, [`config`] parses options, [`compare`] is the
//! champion/challenger report, [`train`] the smartcore trainer and [`bench`]
//! the benchmark suite. docs/architecture.md draws the map.

pub mod alloc;
pub mod api;
pub mod app;
pub mod bench;
pub mod bulk;
pub mod cli;
pub mod compare;
pub mod config;
pub mod drift;
pub mod echo;
pub mod engine;
pub mod error;
pub mod features;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod monitor;
pub mod proto;
pub mod repository;
pub mod security;
pub mod segments;
pub mod telemetry;
pub mod train;

#[cfg(test)]
mod architecture {
    //! docs/architecture.md names every module of src/ and no module that is
    //! gone, so the map cannot drift from the tree.

    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.to_string_lossy().into_owned());
            }
        }
    }

    #[test]
    fn the_architecture_page_matches_the_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let page = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
        let src = root.join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut missing = Vec::new();
        for file in &files {
            let rel = Path::new(file).strip_prefix(&src).unwrap();
            let name = rel.file_name().unwrap().to_string_lossy();
            // A file in a folder is named by the folder and its file name.
            let named = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) => page.contains(&format!("{}/", dir.display())) && page.contains(&*name),
                None => page.contains(&format!("`{name}`")),
            };
            if !named {
                missing.push(rel.display().to_string());
            }
        }
        assert!(
            missing.is_empty(),
            "not in docs/architecture.md: {missing:?}"
        );
        // And every `x.rs` the page names exists under src/ (or tests/).
        sources(&root.join("tests"), &mut files);
        let gone: Vec<&str> = page
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .filter(|w| w.ends_with(".rs") && w.len() > 3)
            .filter(|w| !files.iter().any(|f| f.ends_with(&format!("/{w}"))))
            .collect();
        assert!(
            gone.is_empty(),
            "named in docs/architecture.md but not in src/: {gone:?}"
        );
    }
}
