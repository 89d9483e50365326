//! The command line: the subcommands and their arguments, every option also
//! read from `SEGSCORE_<OPTION>` and from the TOML file of `--config`
//! (precedence: flag > env > file > default), and the old spellings of the
//! model repository option, still accepted with a warning. The option groups
//! the subcommands share live in [`crate::config`]; each tool's own
//! arguments live beside the tool.

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
};

use clap::{
    error::ContextKind, parser::ValueSource, Arg, ArgAction, Args, CommandFactory, FromArgMatches,
    Parser, Subcommand,
};

use crate::{
    config::{EngineArgs, ScoreArgs, ServeArgs},
    telemetry::LogFormat,
};

#[derive(Debug, Parser)]
#[command(
    name = "segscore",
    version,
    about = "Scores customer churn, lifetime value and purchase propensity models over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: one-line text, multi-line pretty text, or one JSON object
    /// per line (for log shippers).
    #[arg(long, global = true, env = "SEGSCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export request spans to an OpenTelemetry collector over OTLP/gRPC
    /// (e.g. http://127.0.0.1:4317); off by default.
    #[arg(long, global = true, env = "SEGSCORE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// TOML file with options of the subcommand (and the global ones) as keys,
    /// snake_case or kebab-case: `metrics_addr = "0.0.0.0:9090"`,
    /// `auth_tokens = ["score:t1"]`. Flags and env vars override it; an
    /// unknown key is an error.
    #[arg(long, global = true, env = "SEGSCORE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository over gRPC.
    Serve(ServeArgs),
    /// Score a CSV file of customers, in-process or against running servers.
    Score(ScoreArgs),
    /// Model repository tools.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Segment rules tools: check a rules file, compare scored files.
    #[command(subcommand)]
    Segments(SegmentsCommand),
    /// Train a smartcore model from a feature CSV and write a model version.
    Train(crate::train::TrainArgs),
    /// Run the benchmark suite (in-process ORT vs the service) and write
    /// BENCHMARKS.md; traffic only to 127.0.0.1, bounded in time.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Check a model version directory (or a whole repository) exactly as the
    /// server does before serving it; exit 1 with the reasons if any fails.
    Validate {
        /// A version directory (models/churn/2) or a repository root (models).
        dir: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Import a foreign ONNX model (skl2onnx, onnxmltools, …) as the next
    /// version of NAME: reads its signature, infers the feature schema from
    /// a sample CSV, computes the golden set with the real engine, checks
    /// the version like the server does and only then moves it into place.
    Import(ImportArgs),
    /// Champion / challenger: score a labelled file with two versions
    /// (NAME:VERSION NAME:VERSION) through the engine and print ROC AUC, log
    /// loss, reliability, Spearman, MAE, Σpredicted/Σactual and top-decile
    /// lift side by side.
    Compare(crate::compare::CompareArgs),
    /// Write a version's reference distributions (reference.json, named in
    /// its manifest with its sha256) from a sample CSV scored by the version
    /// itself: per-feature quantile bins and missing shares, score bins.
    /// Live drift (segscore_feature_drift_psi …) is measured against it.
    /// The model file is not touched.
    Reference {
        /// Version directories (models/churn/2 …).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// A CSV with a header row and a column per feature (extra columns
        /// are ignored; an empty cell is a missing value): the data the
        /// version was trained on, or a sample of it.
        #[arg(long, env = "SEGSCORE_REFERENCE_SAMPLE", value_name = "CSV")]
        sample: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

/// `segscore models import`; the rules are in `repository::import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The ONNX model file.
    #[arg(long, env = "SEGSCORE_IMPORT_ONNX", value_name = "FILE")]
    pub onnx: PathBuf,
    /// A CSV with a header row and feature rows (a few hundred are enough):
    /// feature names, dtypes, ranges, categories and missing policies are
    /// inferred from it, and its first 200 rows become the golden set.
    #[arg(long, env = "SEGSCORE_IMPORT_SAMPLE", value_name = "CSV")]
    pub sample: PathBuf,
    /// The model's name (its directory under the repository).
    #[arg(long, env = "SEGSCORE_IMPORT_NAME")]
    pub name: String,
    /// Override the detected task: binary_classification,
    /// multiclass_classification or regression.
    #[arg(long, env = "SEGSCORE_IMPORT_TASK", value_parser = parse_task)]
    pub task: Option<crate::repository::Task>,
    /// The features in the graph's column order (comma-separated), when the
    /// sample has other columns too or the graph's inputs do not name them.
    #[arg(long, env = "SEGSCORE_IMPORT_FEATURES", value_delimiter = ',')]
    pub features: Option<Vec<String>>,
    /// Binary classifiers: the class label whose probability is the score.
    /// Default: the second class (label 1, True, or the later of two sorted
    /// string labels), as sklearn's `predict_proba(x)[:, 1]`.
    #[arg(long, env = "SEGSCORE_IMPORT_POSITIVE_CLASS", value_name = "LABEL")]
    pub positive_class: Option<String>,
    /// Model repository root the version is written into.
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// Check everything and print the manifest; write nothing.
    #[arg(long, env = "SEGSCORE_IMPORT_DRY_RUN")]
    pub dry_run: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn parse_task(s: &str) -> Result<crate::repository::Task, String> {
    use crate::repository::Task;
    match s {
        "binary_classification" => Ok(Task::BinaryClassification),
        "multiclass_classification" => Ok(Task::MulticlassClassification),
        "regression" => Ok(Task::Regression),
        "clustering" => Ok(Task::Clustering),
        _ => Err(
            "expected binary_classification, multiclass_classification, regression or clustering"
                .into(),
        ),
    }
}

#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// Compile and type-check a segments file against a model repository's
    /// manifests (the highest version of each model; models are not loaded)
    /// and print each segment's state; exit 1 if any segment is refused.
    Check {
        /// The rules file (segments.toml).
        file: PathBuf,
        /// Model repository whose features and models the rules may name.
        #[arg(
            long,
            env = "SEGSCORE_MODEL_REPOSITORY",
            default_value = "models",
            value_name = "DIR"
        )]
        model_repository: PathBuf,
    },
    /// Segment sizes in a scored CSV file (an id column plus boolean
    /// `segment:<name>` columns) and, with --baseline, their change: size
    /// change, members entering and leaving, Jaccard overlap of member ids.
    Stats {
        /// The scored file.
        #[arg(long, env = "SEGSCORE_STATS_INPUT")]
        input: PathBuf,
        /// An earlier scored file to compare with.
        #[arg(long, env = "SEGSCORE_STATS_BASELINE")]
        baseline: Option<PathBuf>,
        /// The id column that matches rows between the two files.
        #[arg(long, env = "SEGSCORE_ID_COLUMN", default_value = "customer_id")]
        id_column: String,
        /// Print one JSON object per segment instead of a table.
        #[arg(long, env = "SEGSCORE_STATS_JSON")]
        json: bool,
    },
}

/// An old spelling of an option, still accepted with a warning. Before
/// `--model-repository` the repository was `--models` on some subcommands and
/// `--models-dir` on `score` (where `--models` is the list of models), and
/// `SEGSCORE_MODELS` meant the directory wherever it was read.
struct Deprecated {
    /// The subcommand, e.g. `["segments", "check"]`.
    path: &'static [&'static str],
    /// Id of the hidden argument that takes the old spelling.
    id: &'static str,
    long: &'static str,
    env: Option<&'static str>,
    /// Id of the argument it stands for.
    replacement: &'static str,
}

const DEPRECATED: &[Deprecated] = &[
    Deprecated {
        path: &["serve"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["score"],
        id: "deprecated_models_dir",
        long: "models-dir",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["segments", "check"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["train"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["bench"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
];

/// The command line's definition: the derived [`Cli`] plus a hidden argument
/// for each [`DEPRECATED`] spelling, so clap parses the old spellings exactly
/// as it parses the new ones.
pub fn command() -> clap::Command {
    fn at(cmd: clap::Command, path: &[&str], arg: Arg) -> clap::Command {
        match path {
            [] => cmd.arg(arg),
            [first, rest @ ..] => cmd.mut_subcommand(first, |sub| at(sub, rest, arg)),
        }
    }
    DEPRECATED.iter().fold(Cli::command(), |cmd, d| {
        let mut arg = Arg::new(d.id)
            .long(d.long)
            .value_name("DIR")
            .value_parser(clap::value_parser!(PathBuf))
            .hide(true);
        if let Some(env) = d.env {
            arg = arg.env(env);
        }
        at(cmd, d.path, arg)
    })
}

/// Why the command line could not become a [`Cli`].
#[derive(Debug)]
pub enum ParseError {
    /// A usage error on the command line or in the environment, or `--help`
    /// / `--version`: [`clap::Error::exit`] prints it with its exit code.
    Usage(clap::Error),
    /// The `--config` file cannot be read, or holds a key or value no option
    /// of the subcommand takes; names the file and the key.
    Config(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(e) => write!(f, "{}", clap_message(e)),
            Self::Config(message) => f.write_str(message),
        }
    }
}

/// A clap error's message on one line, without its `error: ` prefix and
/// usage footer.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let message = text.split("\n\n").next().unwrap_or_default();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The parsed command line and the deprecation warnings it earned (each
/// once), for the caller to print.
#[derive(Debug)]
pub struct Parsed {
    pub cli: Cli,
    pub warnings: Vec<String>,
}

/// Parses the process's command line; see [`parse_from`].
pub fn parse() -> Result<Parsed, ParseError> {
    parse_from(std::env::args_os())
}

/// Parses a command line (flags, then env vars, through clap), then fills the
/// options still at their defaults from the `--config` TOML file, and the
/// model repository from a deprecated spelling.
///
/// File values are added to the command line as `--key=value` flags and the
/// whole is parsed again, so they go through the same clap value parsers and
/// checks as flags (and a required option such as `score --input` may come
/// from the file). A key is checked against the subcommand's declared options
/// (flattened and global ones included), whether or not they got a value.
pub fn parse_from<I, T>(args: I) -> Result<Parsed, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = command();
    cmd.build();
    let full = |argv: &[OsString]| {
        let matches = cmd.clone().try_get_matches_from(argv)?;
        Cli::from_arg_matches(&matches)
    };
    // Lenient first pass: only where the file is, which subcommand runs and
    // where each value came from. Missing required options may be in the
    // file; any other error (and --help) is reported by the full parse.
    let Ok(first) = command().ignore_errors(true).try_get_matches_from(&args) else {
        let cli = full(&args).map_err(ParseError::Usage)?;
        return Ok(Parsed {
            cli,
            warnings: Vec::new(),
        });
    };
    let mut path = Vec::new();
    let mut matches = &first;
    let mut leaf = &cmd;
    while let Some((name, sub)) = matches.subcommand() {
        path.push(name.to_owned());
        matches = sub;
        leaf = leaf
            .find_subcommand(name)
            .expect("clap matched this subcommand; this is a bug");
    }
    // Options set by a flag or an env var: the file does not override them.
    let mut set: HashSet<String> = leaf
        .get_arguments()
        .filter(|a| {
            matches!(
                matches.value_source(a.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|a| a.get_id().to_string())
        .collect();
    let mut warnings = Vec::new();
    let mut warn = |text: String| {
        if !warnings.contains(&text) {
            warnings.push(text);
        }
    };
    let mut added = Vec::new();
    for d in DEPRECATED.iter().filter(|d| d.path == path) {
        let source = matches.value_source(d.id);
        match (source, d.env) {
            (Some(ValueSource::CommandLine), _) => warn(format!(
                "`segscore {} --{}` is deprecated; use --{}",
                path.join(" "),
                d.long,
                d.replacement.replace('_', "-")
            )),
            (Some(ValueSource::EnvVariable), Some(env)) => warn(format!(
                "{env} is deprecated; use SEGSCORE_{}",
                d.replacement.to_uppercase()
            )),
            _ => continue,
        }
        let replacement_source = matches.value_source(d.replacement);
        let outranked = match replacement_source {
            Some(ValueSource::CommandLine) => true,
            Some(ValueSource::EnvVariable) => source != Some(ValueSource::CommandLine),
            _ => false,
        };
        if !outranked {
            let value = matches
                .get_raw(d.id)
                .into_iter()
                .flatten()
                .next()
                .expect("a deprecated option with a source has a value; this is a bug");
            added.push(flag(&d.replacement.replace('_', "-"), value));
        }
        set.insert(d.replacement.to_owned());
    }
    let config = first.get_one::<PathBuf>("config");
    let from_file = match config {
        Some(file) => file_flags(file, leaf, &path, &set, &mut warn)?,
        None => Vec::new(),
    };
    if added.is_empty() && from_file.is_empty() {
        let cli = full(&args).map_err(ParseError::Usage)?;
        return Ok(Parsed { cli, warnings });
    }
    // Before a `--`, after which everything is positional.
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let splice = |extra: &[OsString]| {
        let mut argv = args[..at].to_vec();
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&args[at..]);
        argv
    };
    let without_file = splice(&added);
    added.extend(from_file);
    match full(&splice(&added)) {
        Ok(cli) => Ok(Parsed { cli, warnings }),
        // A required option neither given nor in the file is a usage error.
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            Err(ParseError::Usage(e))
        }
        Err(e) => {
            // The same error without the file's values is the command line's
            // (or the environment's) to report; a new one is the file's.
            let what = |e: &clap::Error| {
                (
                    e.kind(),
                    e.get(ContextKind::InvalidArg).map(ToString::to_string),
                    e.get(ContextKind::InvalidValue).map(ToString::to_string),
                )
            };
            match full(&without_file) {
                Err(without) if what(&without) == what(&e) => Err(ParseError::Usage(e)),
                _ => Err(ParseError::Config(format!(
                    "--config {}: {}",
                    config.map_or(String::new(), |f| f.display().to_string()),
                    clap_message(&e)
                ))),
            }
        }
    }
}

fn flag(long: &str, value: &OsStr) -> OsString {
    let mut flag = OsString::from(format!("--{long}="));
    flag.push(value);
    flag
}

/// The `--config` file's keys as flags of the subcommand `leaf`, leaving out
/// options in `set` (given by a flag or an env var, which take precedence).
fn file_flags(
    file: &Path,
    leaf: &clap::Command,
    path: &[String],
    set: &HashSet<String>,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<OsString>, ParseError> {
    let fail = |what: String| ParseError::Config(format!("--config {}: {what}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(
            e.message().to_owned()
                + &e.span().map_or(String::new(), |s| {
                    let line = text[..s.start].lines().count().max(1);
                    format!(" (line {line})")
                }),
        )
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let kebab = key.replace('_', "-");
        let found = leaf.get_arguments().find(|a| {
            let id = a.get_id().as_str();
            is_option(a)
                && id != "config"
                && (a.get_long() == Some(kebab.as_str()) || id == key.replace('-', "_"))
        });
        let Some(mut arg) = found else {
            return Err(fail(format!(
                "unknown option `{key}` for `segscore {}` (keys are its long options: `segscore {} --help`)",
                path.join(" "),
                path.join(" ")
            )));
        };
        if let Some(d) = DEPRECATED
            .iter()
            .find(|d| d.path == path && d.id == arg.get_id().as_str())
        {
            warn(format!(
                "--config {}: `{key}` is deprecated; use `{}`",
                file.display(),
                d.replacement
            ));
            arg = leaf
                .get_arguments()
                .find(|a| a.get_id().as_str() == d.replacement)
                .expect("a deprecated option's replacement exists; this is a bug");
        }
        let id = arg.get_id().as_str();
        if set.contains(id) {
            continue;
        }
        let long = arg
            .get_long()
            .expect("options have a long name; this is a bug");
        let bad = |why: &str| fail(format!("`{key}`: {why}"));
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    flags.push(OsString::from(format!("--{long}")));
                }
            }
            (ArgAction::SetTrue, _) => return Err(bad("expected true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    let text = scalar(item).ok_or_else(|| bad("expected a list of values"))?;
                    flags.push(flag(long, OsStr::new(&text)));
                }
            }
            (_, toml::Value::Array(_)) => return Err(bad("takes one value, not a list")),
            (_, value) => {
                let text = scalar(value).ok_or_else(|| bad("expected a value, not a table"))?;
                flags.push(flag(long, OsStr::new(&text)));
            }
        }
    }
    Ok(flags)
}

/// An option that takes or sets a value (not `--help` or `--version`).
fn is_option(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// A TOML value as the command line would spell it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => Some(value.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A `--config` file with `text` in a fresh directory.
    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segscore.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    fn parse_args(args: &[&str]) -> Result<Parsed, ParseError> {
        parse_from(std::iter::once("segscore").chain(args.iter().copied()))
    }

    fn serve(args: &[&str]) -> (ServeArgs, Vec<String>) {
        let parsed = parse_args(&[&["serve"], args].concat()).unwrap();
        match parsed.cli.command {
            Command::Serve(serve) => (serve, parsed.warnings),
            other => panic!("not serve: {other:?}"),
        }
    }

    fn score(args: &[&str]) -> (ScoreArgs, Vec<String>) {
        let parsed = parse_args(&[&["score"], args].concat()).unwrap();
        match parsed.cli.command {
            Command::Score(score) => (score, parsed.warnings),
            other => panic!("not score: {other:?}"),
        }
    }

    fn config_error(args: &[&str]) -> String {
        match parse_args(args) {
            Err(ParseError::Config(message)) => message,
            other => panic!("expected a --config error, got {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_any_option_of_serve_including_flattened_and_list_ones() {
        let (_dir, file) = config_file(
            r#"
            metrics_addr = "127.0.0.1:9464"
            workers = 3
            segments = "rules.toml"
            max-batch-rows = 512
            batching = false
            auth_tokens = ["first", "second"]
            log_format = "json"
            "#,
        );
        let parsed = parse_args(&["serve", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(parsed.cli.log_format, LogFormat::Json);
        let Command::Serve(args) = parsed.cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(args.engine.workers, Some(3));
        assert_eq!(args.segments, Some(PathBuf::from("rules.toml")));
        assert_eq!(args.engine.max_batch_rows, 512);
        assert!(!args.engine.batching);
        assert_eq!(args.auth_tokens.len(), 2);
        // Untouched options keep their defaults.
        assert_eq!(args.engine.intra_threads, 1);
        assert_eq!(args.model_repository, PathBuf::from("models"));
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let (_dir, file) = config_file("workers = 5\naddr = \"127.0.0.1:7000\"\n");
        let file = file.to_str().unwrap();
        let (args, _) = serve(&["--workers", "2", "--config", file]);
        assert_eq!(args.engine.workers, Some(2));
        assert_eq!(args.addr, "127.0.0.1:7000".parse().unwrap());
        // Global, so it may also come after the subcommand's own flags or
        // before the subcommand.
        let parsed = parse_args(&["--config", file, "serve"]).unwrap();
        let Command::Serve(args) = parsed.cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.engine.workers, Some(5));
    }

    #[test]
    fn score_takes_required_options_lists_and_switches_from_the_file() {
        let (_dir, file) = config_file(
            r#"
            input = "in.parquet"
            output = "out.parquet"
            models = ["churn:1", "ltv"]
            addr = ["127.0.0.1:50051", "http://10.0.0.2:50051"]
            resume = true
            strict = false
            model_repository = "repo"
            "#,
        );
        let (args, warnings) = score(&["--config", file.to_str().unwrap()]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(args.input, PathBuf::from("in.parquet"));
        assert_eq!(args.models, ["churn:1", "ltv"]);
        assert_eq!(
            args.addr,
            ["http://127.0.0.1:50051", "http://10.0.0.2:50051"]
        );
        assert!(args.resume);
        assert!(!args.strict);
        assert_eq!(args.model_repository, PathBuf::from("repo"));
        // A list on the command line replaces the file's, not adds to it.
        let (args, _) = score(&["--config", file.to_str().unwrap(), "--models", "churn"]);
        assert_eq!(args.models, ["churn"]);
    }

    #[test]
    fn every_subcommand_with_options_reads_the_file() {
        let (_dir, file) = config_file("model_repository = \"repo\"\n");
        let file = file.to_str().unwrap();
        let parsed = parse_args(&["segments", "check", "rules.toml", "--config", file]).unwrap();
        assert!(matches!(
            parsed.cli.command,
            Command::Segments(SegmentsCommand::Check { model_repository, .. })
                if model_repository == Path::new("repo")
        ));
        let (_dir, train) = config_file(
            "train = \"t.csv\"\nvalid = \"v.csv\"\nname = \"churn\"\nversion = 3\nmodel_repository = \"repo\"\n",
        );
        let parsed = parse_args(&["train", "--config", train.to_str().unwrap()]).unwrap();
        let Command::Train(args) = parsed.cli.command else {
            panic!("not train")
        };
        assert_eq!((args.version, args.model_repository), (3, "repo".into()));
        let (_dir, validate) = config_file("workers = 1\n");
        let parsed = parse_args(&[
            "models",
            "validate",
            "models",
            "--config",
            validate.to_str().unwrap(),
        ])
        .unwrap();
        assert!(matches!(
            parsed.cli.command,
            Command::Models(ModelsCommand::Validate { engine, .. }) if engine.workers == Some(1)
        ));
    }

    #[test]
    fn an_unknown_key_names_the_key_the_file_and_the_subcommand() {
        let (_dir, file) = config_file("workers = 2\nmetrics_adr = \"127.0.0.1:9464\"\n");
        let file = file.to_str().unwrap();
        let message = config_error(&["serve", "--config", file]);
        assert!(message.contains("`metrics_adr`"), "{message}");
        assert!(message.contains(file), "{message}");
        assert!(message.contains("segscore serve"), "{message}");
        // A positional argument and `config` itself are not keys.
        let (_dir, file) = config_file("config = \"other.toml\"\n");
        let message = config_error(&["serve", "--config", file.to_str().unwrap()]);
        assert!(message.contains("`config`"), "{message}");
        // An option of another subcommand is unknown here.
        let (_dir, file) = config_file("metrics_addr = \"127.0.0.1:9464\"\n");
        let message = config_error(&[
            "segments",
            "check",
            "rules.toml",
            "--config",
            file.to_str().unwrap(),
        ]);
        assert!(message.contains("`metrics_addr`"), "{message}");
    }

    #[test]
    fn a_bad_value_in_the_file_is_the_file_s_error() {
        let (_dir, file) = config_file("metrics_addr = \"not an address\"\n");
        let file = file.to_str().unwrap();
        let message = config_error(&["serve", "--config", file]);
        assert!(message.contains(file), "{message}");
        assert!(message.contains("--metrics-addr"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
        let (_dir, file) = config_file("workers = [1, 2]\n");
        let message = config_error(&["serve", "--config", file.to_str().unwrap()]);
        assert!(message.contains("`workers`: takes one value"), "{message}");
        let (_dir, file) = config_file("input = \"i.csv\"\noutput = \"o.csv\"\nresume = \"yes\"\n");
        let message = config_error(&["score", "--config", file.to_str().unwrap()]);
        assert!(
            message.contains("`resume`: expected true or false"),
            "{message}"
        );
        let (_dir, file) = config_file("workers = \n");
        let message = config_error(&["serve", "--config", file.to_str().unwrap()]);
        assert!(message.contains("line 1"), "{message}");
        let message = config_error(&["serve", "--config", "/nonexistent/segscore.toml"]);
        assert!(message.contains("/nonexistent/segscore.toml"), "{message}");
        // A bad flag stays the command line's error, even with a file.
        let (_dir, file) = config_file("workers = 2\n");
        let e = parse_args(&[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--max-batch-rows",
            "many",
        ]);
        assert!(matches!(e, Err(ParseError::Usage(_))), "{e:?}");
        // So is a required option in neither place.
        let (_dir, file) = config_file("input = \"i.csv\"\n");
        let e = parse_args(&["score", "--config", file.to_str().unwrap()]);
        assert!(
            matches!(&e, Err(ParseError::Usage(e))
                if e.kind() == clap::error::ErrorKind::MissingRequiredArgument),
            "{e:?}"
        );
    }

    #[test]
    fn old_spellings_of_the_model_repository_still_work_with_one_warning() {
        let (args, warnings) = serve(&["--models", "old"]);
        assert_eq!(args.model_repository, PathBuf::from("old"));
        assert_eq!(
            warnings,
            ["`segscore serve --models` is deprecated; use --model-repository"]
        );
        let (args, warnings) = score(&[
            "--input",
            "i.csv",
            "--output",
            "o.csv",
            "--models-dir",
            "old",
        ]);
        assert_eq!(args.model_repository, PathBuf::from("old"));
        assert!(
            args.models.is_empty(),
            "--models-dir is not a list of models"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        // On score `--models` is the list of models, not deprecated.
        let (args, warnings) =
            score(&["--input", "i.csv", "--output", "o.csv", "--models", "churn"]);
        assert_eq!(args.models, ["churn"]);
        assert_eq!(args.model_repository, PathBuf::from("models"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let parsed = parse_args(&["segments", "check", "rules.toml", "--models", "old"]).unwrap();
        assert_eq!(parsed.warnings.len(), 1);
        assert!(matches!(
            parsed.cli.command,
            Command::Segments(SegmentsCommand::Check { model_repository, .. })
                if model_repository == Path::new("old")
        ));
        let parsed = parse_args(&[
            "train",
            "--train",
            "t.csv",
            "--valid",
            "v.csv",
            "--name",
            "churn",
            "--version",
            "1",
            "--models",
            "old",
        ])
        .unwrap();
        let Command::Train(args) = parsed.cli.command else {
            panic!("not train")
        };
        assert_eq!(args.model_repository, PathBuf::from("old"));
        // The new spelling wins over the old one.
        let (args, _) = serve(&["--models", "old", "--model-repository", "new"]);
        assert_eq!(args.model_repository, PathBuf::from("new"));
        // The file's old key, too, and a flag still beats it.
        let (_dir, file) = config_file("models = \"old\"\n");
        let file = file.to_str().unwrap();
        let (args, warnings) = serve(&["--config", file]);
        assert_eq!(args.model_repository, PathBuf::from("old"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("`models` is deprecated"),
            "{warnings:?}"
        );
        let (args, _) = serve(&["--config", file, "--model-repository", "new"]);
        assert_eq!(args.model_repository, PathBuf::from("new"));
    }

    #[test]
    fn every_option_reads_an_env_var() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if is_option(arg) && !arg.is_hide_set() && arg.get_env().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "segscore", &mut missing);
        assert!(
            missing.is_empty(),
            "options without an env var: {missing:?}"
        );
    }
}
