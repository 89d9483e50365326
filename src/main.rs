//! The `segscore` binary: parse the command line, set up logging, run the
//! subcommand, and turn its outcome into an exit code.

use std::{path::Path, process::ExitCode};

use segscore::{
    app::{shutdown_signal, Application},
    bench, bulk,
    cli::{self, Command, ModelsCommand, SegmentsCommand},
    compare,
    repository::{self, load, Manifest},
    segments, telemetry,
    telemetry::LogFormat,
    train,
};

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(parsed) => {
            for warning in &parsed.warnings {
                eprintln!("warning: {warning}");
            }
            parsed.cli
        }
        Err(cli::ParseError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let log_format = cli.log_format;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel lives on this runtime.
    let telemetry = {
        let _runtime = rt.enter();
        match telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    let result = match cli.command {
        Command::Serve(args) => rt.block_on(async {
            tracing::info!(config = ?args, "starting");
            // Installed first: a SIGTERM during start-up drains, not kills.
            let shutdown = shutdown_signal();
            let app = Application::build(args).await?;
            app.run_until_stopped(shutdown).await
        }),
        Command::Score(args) => rt.block_on(async {
            let s = bulk::run(args).await?;
            let models: Vec<String> = s
                .models
                .iter()
                .map(|m| {
                    match s.fallbacks.iter().find(|f| f.name == m.name) {
                        Some(f) => format!(
                            "{}:{} (fallback: version {} cannot be used)",
                            m.name, m.version, f.wanted
                        ),
                        None => format!("{}:{}", m.name, m.version),
                    }
                })
                .collect();
            let see = s
                .rejects
                .as_ref()
                .map_or(String::new(), |r| format!(" (see {})", r.display()));
            eprintln!(
                "read {} rows: {} scored, {} rejected{see}, with {} in {:.2}s ({:.0} rows/s); wrote {}",
                s.rows_read,
                s.rows_scored,
                s.rows_rejected,
                models.join(", "),
                s.seconds,
                s.rows_per_second,
                s.output.display()
            );
            for (name, members, errors) in &s.segments {
                eprintln!(
                    "segment {name}: {members} members ({:.2}% of scored rows), {errors} rows in error",
                    100.0 * *members as f64 / s.rows_scored.max(1) as f64
                );
            }
            Ok(())
        }),
        Command::Bench(args) => rt.block_on(async { bench::run(args).await.map(|_| ()) }),
        Command::Models(ModelsCommand::Validate { dir, engine }) => {
            validate(&dir, &engine.engine_config())
        }
        Command::Models(ModelsCommand::Import(args)) => import_model(args),
        Command::Models(ModelsCommand::Reference {
            dirs,
            sample,
            engine,
        }) => write_references(&dirs, &sample, &engine),
        Command::Models(ModelsCommand::Compare(args)) => rt.block_on(async {
            let c = compare::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                print!("{}", compare::table(&c));
            }
            Ok(())
        }),
        Command::Segments(command) => run_segments(command),
        Command::Train(args) => train::run(&args).map(|summary| println!("{summary}")),
    };
    // Flush spans while the runtime still runs the exporter.
    {
        let _runtime = rt.enter();
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: a JSON log event for log shippers, else plain text.
            let message = telemetry::error_line(&e);
            if log_format == LogFormat::Json && tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{message}");
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `models import`: prints the manifest with --dry-run, else where the new
/// version went.
fn import_model(args: cli::ImportArgs) -> anyhow::Result<()> {
    let request = repository::import::ImportRequest {
        onnx: args.onnx,
        sample: args.sample,
        name: args.name,
        task: args.task,
        features: args.features,
        positive_class: args.positive_class,
        model_repository: args.model_repository,
        dry_run: args.dry_run,
    };
    let imported = repository::import::import(&request, &args.engine.engine_config())?;
    if request.dry_run {
        print!("{}", imported.manifest_toml);
        return Ok(());
    }
    let m = &imported.manifest;
    println!(
        "imported {} v{} into {} ({:?}, {} features, golden set of {} rows); \
         a server watching {} serves it once it passes validation",
        m.name,
        m.version,
        imported.dir.display(),
        m.task,
        m.features.len(),
        imported.golden_rows,
        request.model_repository.display()
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Validates one version directory, or every version under a repository root,
/// through the server's gate: each version is checked for breaking changes
/// against the previous version of its model that passes.
fn validate(dir: &Path, engine: &repository::EngineConfig) -> anyhow::Result<()> {
    let no_phase = |_| {};
    let check = |target: &Path, previous: Option<&Manifest>| {
        let options = load::ValidateOptions {
            backends: 1,
            previous,
            on_phase: &no_phase,
        };
        load::validate(target, engine, &options)
    };
    let mut checked = 0;
    let mut failed = 0;
    let mut report = |target: &Path, result: &Validation, previous: Option<u64>| {
        checked += 1;
        let against = previous.map_or(String::new(), |v| format!(", compatible with v{v}"));
        match result {
            Ok(v) => println!(
                "ok      {} ({} v{}, {}, golden {} rows, max |diff| {:.2e}, warm-up {} rows {:.2} ms{against})",
                target.display(),
                v.manifest.name,
                v.manifest.version,
                v.manifest.format.as_str(),
                v.golden.rows,
                v.golden.max_abs_diff,
                load::WARMUP_ROWS,
                v.golden.warmup_ms,
            ),
            Err(e) => {
                failed += 1;
                println!("FAILED  {}: {e}", target.display());
            }
        }
    };
    if dir.join(repository::MANIFEST_FILE).is_file() {
        let previous = previous_valid_version(dir, &check)?;
        let result = check(dir, previous.as_ref());
        report(dir, &result, previous.map(|m| m.version));
    } else {
        for versions in repository::scan(dir)?.into_values() {
            let mut previous: Option<Manifest> = None;
            for target in versions.into_values() {
                let result = check(&target, previous.as_ref());
                report(&target, &result, previous.as_ref().map(|m| m.version));
                if let Ok(v) = result {
                    previous = Some(v.manifest);
                }
            }
        }
    }
    if checked == 0 {
        anyhow::bail!(
            "{}: no model version (no {} found)",
            dir.display(),
            repository::MANIFEST_FILE
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {checked} model versions failed validation");
    }
    Ok(())
}

type Validation = Result<load::Validated, load::LoadError>;

/// The manifest of the highest version below `dir` (a version directory
/// inside `<root>/<name>/`) that passes validation: what the server would
/// compare `dir` with.
fn previous_valid_version(
    dir: &Path,
    check: &dyn Fn(&Path, Option<&Manifest>) -> Validation,
) -> anyhow::Result<Option<Manifest>> {
    let (Some(model_dir), Some(version)) = (
        dir.parent(),
        dir.file_name()
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return Ok(None);
    };
    let (Some(root), Some(name)) = (model_dir.parent(), model_dir.file_name()) else {
        return Ok(None);
    };
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    let siblings = repository::scan(root)?
        .remove(name.to_string_lossy().as_ref())
        .unwrap_or_default();
    Ok(siblings
        .range(..version)
        .rev()
        .find_map(|(_, d)| check(d, None).ok().map(|v| v.manifest)))
}

/// `segscore segments check|stats`.
fn run_segments(command: SegmentsCommand) -> anyhow::Result<()> {
    match command {
        SegmentsCommand::Check {
            file,
            model_repository,
        } => {
            let rules = segments::RulesFile::read(&file)?;
            let catalog = segments::Catalog::from_directory(&model_repository).map_err(|e| {
                anyhow::anyhow!(
                    "reading the model repository {}: {e}",
                    model_repository.display()
                )
            })?;
            let compiled =
                segments::Segments::compile(&rules, &catalog, Some(file.display().to_string()));
            let mut failed = 0;
            for segment in compiled.segments() {
                match &segment.state {
                    Ok(rule) => println!(
                        "ok      {} (models: {}; {})",
                        segment.name,
                        if rule.models().is_empty() {
                            "none".to_string()
                        } else {
                            rule.models().join(", ")
                        },
                        if rule.is_compiled() {
                            "compiled"
                        } else {
                            "interpreted"
                        }
                    ),
                    Err(reason) => {
                        failed += 1;
                        println!("FAILED  {}: {reason}", segment.name);
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} segments refused", compiled.segments().len());
            }
            Ok(())
        }
        SegmentsCommand::Stats {
            input,
            baseline,
            id_column,
            json,
        } => {
            let now = segments::stats::read(&input, &id_column)?;
            let before = baseline
                .map(|b| segments::stats::read(&b, &id_column))
                .transpose()?;
            let stats = segments::stats::compare(&now, before.as_ref());
            if json {
                for s in &stats {
                    println!("{}", serde_json::to_string(s)?);
                }
            } else {
                print!("{}", segments::stats::table(&stats));
            }
            Ok(())
        }
    }
}

/// `segscore models reference`: one line per version written.
fn write_references(
    dirs: &[std::path::PathBuf],
    sample: &std::path::Path,
    engine: &segscore::config::EngineArgs,
) -> anyhow::Result<()> {
    let engine = engine.engine_config();
    for dir in dirs {
        let reference = segscore::repository::reference::write_from_csv(dir, sample, &engine)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        println!(
            "{}: reference of {} rows from {} ({} features)",
            dir.display(),
            reference.rows,
            sample.display(),
            reference.features.len()
        );
    }
    Ok(())
}
