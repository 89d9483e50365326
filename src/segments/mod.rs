//! Segments: named CEL rules over a request's features and model scores
//! (`segments.toml`), compiled and type-checked at load against a [`Catalog`]
//! of what the repository serves, and evaluated per row into membership.
//!
//! A segment that fails to parse or check is kept with its reason (requests
//! naming it get FAILED_PRECONDITION) and never stops the others; on a reload,
//! a segment whose edited rule is refused keeps serving its previous rule.
//! A rules file is untrusted input: see [`limits`] for what a rule may be
//! before the parser sees it. Evaluation
//! never turns a problem into a silent `false`: a row whose rule cannot be
//! evaluated (a rejected missing feature, a division by zero) is reported as
//! an error for that segment, with the reason.

pub mod check;
pub mod eval;
pub mod limits;
pub mod reload;
pub mod stats;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use serde::Deserialize;

use crate::{
    features::{DType, FeatureBatch, FeatureSpec},
    repository::{
        files::{self, Cap, ReadError},
        Manifest, Repository, Task,
    },
};
use check::{Checked, Lit, Node, Type};
use eval::{Binding, EvalError};

/// The file the server reads when `--segments` is not given (if present).
pub const DEFAULT_FILE: &str = "segments.toml";

/// A variable a rule reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Var {
    Feature(String),
    Score(String),
    Version(String),
    /// `scores.<model>.label`: a classifier's predicted class (models whose
    /// manifest declares `classes`).
    Label(String),
}

/// A named constant from `[constants]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant(pub Lit);

/// The CEL type of a feature of `dtype`.
pub fn feature_type(dtype: DType) -> Type {
    match dtype {
        DType::F32 | DType::F64 => Type::Double,
        DType::I64 => Type::Int,
        DType::Bool => Type::Bool,
        DType::Category => Type::String,
    }
}

/// The CEL type of `scores.<model>` for a model of `task`: a probability or
/// a value is a double; a clustering model's score in rules is its cluster id.
pub fn score_type(task: Task) -> Type {
    match task {
        Task::BinaryClassification | Task::MulticlassClassification | Task::Regression => {
            Type::Double
        }
        Task::Clustering => Type::Int,
    }
}

/// What rules may name: every feature of the serving models' default
/// versions (the first model in name order that declares a feature defines
/// its dtype and missing policy) and every serving model's task.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub features: BTreeMap<String, FeatureSpec>,
    pub models: BTreeMap<String, Task>,
}

impl Catalog {
    /// Builds a catalog from the manifests of the models' default versions.
    pub fn from_manifests<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Self {
        let mut catalog = Catalog::default();
        for manifest in manifests {
            catalog.models.insert(manifest.name.clone(), manifest.task);
            for spec in &manifest.features {
                catalog
                    .features
                    .entry(spec.name.clone())
                    .or_insert_with(|| spec.clone());
            }
        }
        catalog
    }

    /// What the repository serves now.
    pub fn from_repository(repository: &Repository) -> Self {
        let manifests: Vec<&Manifest> = repository
            .models()
            .values()
            .filter_map(|e| e.default_version().map(|m| &m.manifest))
            .collect();
        Self::from_manifests(manifests)
    }

    /// Offline (`segscore segments check`): the highest version of each model
    /// whose manifest parses, without loading or validating the models.
    pub fn from_directory(root: &Path) -> std::io::Result<Self> {
        let mut manifests = Vec::new();
        for (_, versions) in crate::repository::scan(root)? {
            if let Some(m) = versions
                .values()
                .rev()
                .find_map(|dir| Manifest::read(&dir.join(crate::repository::MANIFEST_FILE)).ok())
            {
                manifests.push(m);
            }
        }
        Ok(Self::from_manifests(&manifests))
    }
}

/// `segments.toml` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Named constants usable in every rule (thresholds), by name.
    #[serde(default)]
    pub constants: toml::Table,
    #[serde(default)]
    pub segments: Vec<SegmentDef>,
}

/// One `[[segments]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rule: String,
}

/// Why a rules file cannot be used at all (per-segment problems are kept on
/// the segment instead).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: ReadError },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
}

impl RulesFile {
    pub fn read(path: &Path) -> Result<Self, FileError> {
        Self::parse(&read_text(path)?).map_err(|message| FileError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Why `[constants]` cannot be used, if it cannot (every segment would
    /// be refused).
    pub fn constants_error(&self) -> Option<String> {
        let errors: Vec<String> = self
            .constants
            .iter()
            .filter_map(|(name, value)| constant(name, value).err())
            .collect();
        (!errors.is_empty()).then(|| format!("[constants]: {}", errors.join("; ")))
    }
}

/// The text of a rules file: a regular file (symlinks followed: the operator
/// chose the path) within [`files::MAX_RULES_FILE_BYTES`], so a FIFO or a
/// device put in its place is refused instead of blocking or filling memory.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    let cap = Cap::new(files::MAX_RULES_FILE_BYTES, "the rules file limit");
    files::read_text(path, cap).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A rule ready to run.
pub struct CompiledRule {
    program: cel::Program,
    engine: Engine,
    /// The variables the rule reads, in slot order.
    vars: Vec<Var>,
    /// Models whose scores (or versions) the rule reads, sorted.
    models: Vec<String>,
}

enum Engine {
    Compiled(Node),
    Interpreted,
}

impl CompiledRule {
    pub fn models(&self) -> &[String] {
        &self.models
    }

    pub fn is_compiled(&self) -> bool {
        matches!(self.engine, Engine::Compiled(_))
    }
}

/// A segment from the file: ready, or refused with the reason.
pub struct Segment {
    pub name: String,
    pub description: String,
    /// The rule that serves (READY) or was refused (FAILED).
    pub rule: String,
    pub state: Result<CompiledRule, String>,
    /// READY only: the file now holds an edit of this segment's rule that
    /// was refused, for this reason; `rule` is the previous one, still
    /// serving. Cleared by the next edit that compiles (a restart, which has
    /// no previous rule, refuses the segment instead).
    pub refused_edit: Option<String>,
}

impl Segment {
    /// Models the rule needs (empty for a refused segment).
    pub fn models(&self) -> &[String] {
        self.state.as_ref().map_or(&[], |r| r.models())
    }

    /// What ListSegments and `segments check` say about the segment: why it
    /// was refused, or why the edit of a still-serving rule was; empty when
    /// all is well.
    pub fn reason(&self) -> String {
        match (&self.state, &self.refused_edit) {
            (Err(reason), _) => reason.clone(),
            (Ok(_), Some(reason)) => {
                format!("edit refused, the previous rule keeps serving: {reason}")
            }
            (Ok(_), None) => String::new(),
        }
    }
}

/// Every segment of a rules file, compiled against one catalog.
pub struct Segments {
    segments: Vec<Segment>,
    /// Constants as typed literals (the interpreter binds them too).
    constants: BTreeMap<String, Constant>,
    /// Feature specs the rules read, for binding values.
    specs: HashMap<String, FeatureSpec>,
    /// Where the rules came from (None = no rules file).
    pub source: Option<String>,
    /// The file's text these segments were compiled from, so the watcher
    /// knows whether the file changed since (whenever it starts).
    pub source_text: Option<String>,
    env: Arc<cel::Env>,
}

impl Default for Segments {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
            constants: BTreeMap::new(),
            specs: HashMap::new(),
            source: None,
            source_text: None,
            env: eval::environment(),
        }
    }
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field("names", &self.names())
            .finish()
    }
}

/// The segments as the services see them: swapped on reloads.
pub type SharedSegments = Arc<arc_swap::ArcSwap<Segments>>;

fn constant(name: &str, value: &toml::Value) -> Result<Constant, String> {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!(
            "constant `{name}` is not an identifier (letters, digits, `_`)"
        ));
    }
    if matches!(name, "features" | "scores" | "versions") || cel_reserved(name) {
        return Err(format!("constant `{name}` shadows a reserved name"));
    }
    Ok(Constant(match value {
        toml::Value::Boolean(b) => Lit::Bool(*b),
        toml::Value::Integer(i) => Lit::Int(*i),
        toml::Value::Float(f) => Lit::Double(*f),
        toml::Value::String(s) => Lit::Str(s.clone()),
        other => {
            return Err(format!(
                "constant `{name}` is a {}; use a bool, integer, float or string",
                other.type_str()
            ))
        }
    }))
}

fn cel_reserved(name: &str) -> bool {
    matches!(
        name,
        "true"
            | "false"
            | "null"
            | "in"
            | "as"
            | "break"
            | "const"
            | "continue"
            | "else"
            | "for"
            | "function"
            | "if"
            | "import"
            | "let"
            | "loop"
            | "package"
            | "namespace"
            | "return"
            | "var"
            | "void"
            | "while"
    )
}

/// `rule` with the expression `expr_id` pointed at, for error messages.
fn locate(program: &cel::Program, rule: &str, expr_id: u64) -> String {
    let Some((start, stop)) = program.source_info().offset_for(expr_id) else {
        return String::new();
    };
    let snippet: String = rule
        .chars()
        .skip(start as usize)
        .take(stop.saturating_sub(start) as usize)
        .collect();
    if snippet.is_empty() {
        format!(" (at offset {start})")
    } else {
        format!(" (at offset {start}: `{snippet}`)")
    }
}

impl Segments {
    /// Compiles every segment of `file` against `catalog`. A bad constant
    /// refuses every segment that could read it (all of them); a bad rule
    /// refuses only its segment.
    pub fn compile(file: &RulesFile, catalog: &Catalog, source: Option<String>) -> Self {
        Self::compile_over(file, catalog, source, None)
    }

    /// Like [`compile`](Self::compile), replacing `previous` (a reload): a
    /// segment whose rule was edited into one that is refused keeps its
    /// previous rule when that still compiles against `catalog` (a rule
    /// refused because its model left is refused either way), with the
    /// refusal in [`Segment::refused_edit`].
    pub fn compile_over(
        file: &RulesFile,
        catalog: &Catalog,
        source: Option<String>,
        previous: Option<&Segments>,
    ) -> Self {
        let mut constants = BTreeMap::new();
        let mut constant_errors = Vec::new();
        for (name, value) in &file.constants {
            match constant(name, value) {
                Ok(c) => {
                    constants.insert(name.clone(), c);
                }
                Err(e) => constant_errors.push(e),
            }
        }
        let mut seen = BTreeSet::new();
        let mut segments = Vec::with_capacity(file.segments.len());
        for def in &file.segments {
            let state = if !constant_errors.is_empty() {
                Err(format!("[constants]: {}", constant_errors.join("; ")))
            } else if def.name.is_empty()
                || !def
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                Err(format!(
                    "segment name `{}` is not valid (letters, digits, `_`, `-`)",
                    def.name
                ))
            } else if !seen.insert(def.name.clone()) {
                Err(format!("segment `{}` is defined twice", def.name))
            } else {
                compile_rule(&def.rule, catalog, &constants)
            };
            let kept = match (&state, previous.and_then(|p| p.get(&def.name))) {
                (Err(reason), Some(before))
                    if constant_errors.is_empty()
                        && before.state.is_ok()
                        && before.rule != def.rule =>
                {
                    compile_rule(&before.rule, catalog, &constants)
                        .ok()
                        .map(|rule| Segment {
                            name: def.name.clone(),
                            description: before.description.clone(),
                            rule: before.rule.clone(),
                            state: Ok(rule),
                            refused_edit: Some(reason.clone()),
                        })
                }
                _ => None,
            };
            segments.push(kept.unwrap_or_else(|| Segment {
                name: def.name.clone(),
                description: def.description.clone(),
                rule: def.rule.clone(),
                state,
                refused_edit: None,
            }));
        }
        let specs = segments
            .iter()
            .filter_map(|s| s.state.as_ref().ok())
            .flat_map(|r| r.vars.iter())
            .filter_map(|v| match v {
                Var::Feature(n) => catalog.features.get(n).map(|s| (n.clone(), s.clone())),
                _ => None,
            })
            .collect();
        Self {
            segments,
            constants,
            specs,
            source,
            source_text: None,
            env: eval::environment(),
        }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn get(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.segments.iter().map(|s| s.name.as_str()).collect()
    }

    /// Evaluates the ready segment `segment` over `input`, binding each
    /// variable once per [`Evaluation`].
    pub fn evaluator<'a>(&'a self, input: &'a RuleInput<'a>) -> Evaluation<'a> {
        Evaluation {
            segments: self,
            input,
            bindings: HashMap::new(),
        }
    }
}

/// Parses, checks and compiles one rule: over a [`limits`] limit it is
/// refused unparsed, and a panic in the parser refuses it too.
fn compile_rule(
    rule: &str,
    catalog: &Catalog,
    constants: &BTreeMap<String, Constant>,
) -> Result<CompiledRule, String> {
    limits::check(rule)?;
    limits::contain(|| compile_checked(rule, catalog, constants))
}

fn compile_checked(
    rule: &str,
    catalog: &Catalog,
    constants: &BTreeMap<String, Constant>,
) -> Result<CompiledRule, String> {
    let program = cel::Program::compile(rule).map_err(|e| {
        let detail = e.to_string().replace("<input>", "rule");
        format!("syntax error: {detail}")
    })?;
    let checked = check::check(program.expression(), catalog, constants)
        .map_err(|e| format!("{}{}", e.message, locate(&program, rule, e.expr_id)))?;
    let (engine, vars) = match checked {
        Checked::Compiled { node, vars } => (Engine::Compiled(node), vars),
        Checked::Interpreted { vars, construct } => {
            tracing::debug!(%construct, "rule uses the cel interpreter");
            (Engine::Interpreted, vars)
        }
    };
    let models: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| match v {
            Var::Score(m) | Var::Version(m) | Var::Label(m) => Some(m.clone()),
            Var::Feature(_) => None,
        })
        .collect();
    Ok(CompiledRule {
        program,
        engine,
        vars,
        models: models.into_iter().collect(),
    })
}

/// One model's scores in a response, as rules read them.
#[derive(Debug, Clone, Copy)]
pub struct ModelScoresView<'a> {
    pub task: Task,
    pub scores: &'a [f32],
    pub cluster_ids: &'a [u32],
    /// Classifiers with declared classes: each row's predicted class;
    /// empty otherwise.
    pub labels: &'a [String],
    pub version: u64,
    /// Rows scored by `canary_version` (0 = none).
    pub canary_version: u64,
    pub canary_rows: &'a [u32],
}

/// What rules are evaluated over: the request's features and, per model
/// name, the scores the rules read.
pub struct RuleInput<'a> {
    pub batch: &'a FeatureBatch,
    pub scores: HashMap<&'a str, ModelScoresView<'a>>,
}

/// One segment's result over a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    /// Member rows, ascending.
    pub member_rows: Vec<u32>,
    /// Rows the rule could not be evaluated on, ascending, with the reason.
    pub errors: Vec<(u32, String)>,
}

/// Evaluates segments over one request, sharing variable bindings.
pub struct Evaluation<'a> {
    segments: &'a Segments,
    input: &'a RuleInput<'a>,
    bindings: HashMap<&'a Var, Binding<'a>>,
}

impl<'a> Evaluation<'a> {
    fn bind(&mut self, rule: &'a CompiledRule) {
        for var in &rule.vars {
            if !self.bindings.contains_key(var) {
                let binding = eval::bind(var, self.input, &self.segments.specs);
                self.bindings.insert(var, binding);
            }
        }
    }

    /// The membership of `rule` (from a ready segment of these segments).
    pub fn evaluate(&mut self, rule: &'a CompiledRule) -> Membership {
        self.bind(rule);
        let slots: Vec<&Binding> = rule.vars.iter().map(|v| &self.bindings[v]).collect();
        self.run(rule, &slots, false)
    }

    /// Like [`evaluate`](Self::evaluate) but always on the cel interpreter:
    /// the reference the compiled evaluator is tested against.
    pub fn evaluate_interpreted(&mut self, rule: &'a CompiledRule) -> Membership {
        self.bind(rule);
        let slots: Vec<&Binding> = rule.vars.iter().map(|v| &self.bindings[v]).collect();
        self.run(rule, &slots, true)
    }

    fn run(&self, rule: &CompiledRule, slots: &[&Binding], interpreted: bool) -> Membership {
        let rows = self.input.batch.rows();
        let mut out = Membership::default();
        // A variable with no value on any row fails every row.
        if let Some(reason) = slots.iter().find_map(|b| match &b.values {
            eval::Bound::Unavailable(reason) => Some(reason),
            _ => None,
        }) {
            out.errors = (0..rows).map(|r| (r as u32, reason.clone())).collect();
            return out;
        }
        // Rows where a variable has no value, merged across variables.
        let mut failing: BTreeMap<usize, &str> = BTreeMap::new();
        for binding in slots {
            for (row, reason) in &binding.errors {
                failing.entry(*row).or_insert(reason.as_str());
            }
        }
        let mut next_failing = failing.iter().peekable();
        for row in 0..rows {
            if let Some((_, reason)) = next_failing.next_if(|(r, _)| **r == row) {
                out.errors.push((row as u32, (*reason).to_owned()));
                continue;
            }
            let result = match (&rule.engine, interpreted) {
                (Engine::Compiled(node), false) => match eval::eval(node, slots, row) {
                    Ok(eval::V::Bool(b)) => Ok(b),
                    Ok(_) => Err(EvalError("the rule did not evaluate to a bool".into())),
                    Err(e) => Err(e),
                },
                _ => eval::interpret(
                    &rule.program,
                    &self.segments.env,
                    &self.segments.constants,
                    &rule.vars,
                    slots,
                    row,
                ),
            };
            match result {
                Ok(true) => out.member_rows.push(row as u32),
                Ok(false) => {}
                Err(EvalError(reason)) => out.errors.push((row as u32, reason)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
