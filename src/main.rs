//! The `segscore` binary: parse the command line, set up logging, run the
//! subcommand, and turn its outcome into an exit code.

use std::process::ExitCode;

use segscore::{
    app::{shutdown_signal, Application},
    bench, bulk,
    config::{self, Command, ModelsCommand},
    repository::{self, load},
    telemetry, train,
};

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                tracing::info!(config = ?args, "starting");
                let app = Application::build(args).await?;
                app.run_until_stopped(shutdown_signal()).await
            })
        }),
        Command::Score(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let summary = bulk::run(args).await?;
                eprintln!(
                    "scored {} rows with {:?} in {:.2}s ({:.0} rows/s)",
                    summary.rows,
                    summary.models,
                    summary.seconds,
                    summary.rows as f64 / summary.seconds.max(1e-9)
                );
                Ok(())
            })
        }),
        Command::Bench(args) => {
            runtime().and_then(|rt| rt.block_on(async { bench::run(args).await.map(|_| ()) }))
        }
        Command::Models(ModelsCommand::Validate { dir, engine }) => {
            validate(&dir, &engine.engine_config())
        }
        Command::Train(args) => train::run(&args).map(|m| {
            println!(
                "trained {} v{}: validation roc_auc {:.4}, log_loss {:.4}, brier {:.4}",
                args.name, args.version, m.roc_auc, m.log_loss, m.brier
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Validates one version directory, or every version under a repository root.
fn validate(dir: &std::path::Path, engine: &repository::EngineConfig) -> anyhow::Result<()> {
    let targets: Vec<std::path::PathBuf> = if dir.join(repository::MANIFEST_FILE).is_file() {
        vec![dir.to_path_buf()]
    } else {
        repository::scan(dir)?
            .into_values()
            .flat_map(|versions| versions.into_values())
            .collect()
    };
    if targets.is_empty() {
        anyhow::bail!(
            "{}: no model version (no {} found)",
            dir.display(),
            repository::MANIFEST_FILE
        );
    }
    let mut failed = 0;
    for target in &targets {
        match load::validate(target, engine, 1) {
            Ok(v) => println!(
                "ok      {} ({} v{}, {}, golden {} rows, max |diff| {:.2e})",
                target.display(),
                v.manifest.name,
                v.manifest.version,
                v.manifest.format.as_str(),
                v.golden.rows,
                v.golden.max_abs_diff
            ),
            Err(e) => {
                failed += 1;
                println!("FAILED  {}: {e}", target.display());
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} model versions failed validation",
            targets.len()
        );
    }
    Ok(())
}
