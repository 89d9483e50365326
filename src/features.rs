//! Feature schemas and feature batches: the contract between callers and models.
//!
//! A [`FeatureSchema`] is a model's ordered input columns as its manifest declares
//! them (name, dtype, range, what to do when a value is missing). A [`FeatureBatch`]
//! is what a caller sent: named, typed, columnar values with explicit missing
//! values, already checked for shape at the edge. [`FeatureSchema::encode`] turns the
//! two into the row-major `f32` matrix a backend scores, validating every value on
//! the way, so an error names the feature and row and nothing reaches a model
//! unchecked.

use std::{collections::HashMap, fmt, ops::Range};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::echo::echo;

/// The dtype a manifest declares for a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I64,
    Bool,
    Category,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::Category => "category",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value a manifest imputes for a missing feature, typed as the TOML wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImputeValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl fmt::Display for ImputeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImputeValue::Bool(b) => write!(f, "{b}"),
            ImputeValue::Number(n) => write!(f, "{n}"),
            ImputeValue::Text(s) => f.write_str(s),
        }
    }
}

/// What happens to a missing (or NaN) value: `missing = "reject"` or
/// `missing = { impute = X }` in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MissingRepr", into = "MissingRepr")]
pub enum MissingPolicy {
    Reject,
    Impute(ImputeValue),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum MissingRepr {
    Keyword(String),
    Impute { impute: ImputeValue },
}

impl TryFrom<MissingRepr> for MissingPolicy {
    type Error = String;
    fn try_from(repr: MissingRepr) -> Result<Self, String> {
        match repr {
            MissingRepr::Keyword(k) if k == "reject" => Ok(MissingPolicy::Reject),
            MissingRepr::Keyword(k) => Err(format!(
                "missing = \"{k}\" is not a policy: use \"reject\" or {{ impute = <value> }}"
            )),
            MissingRepr::Impute { impute } => Ok(MissingPolicy::Impute(impute)),
        }
    }
}

impl From<MissingPolicy> for MissingRepr {
    fn from(policy: MissingPolicy) -> Self {
        match policy {
            MissingPolicy::Reject => MissingRepr::Keyword("reject".into()),
            MissingPolicy::Impute(impute) => MissingRepr::Impute { impute },
        }
    }
}

/// One `[[features]]` entry of a manifest, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub dtype: DType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    pub missing: MissingPolicy,
}

/// Why a manifest's feature list cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error("the feature list is empty")]
    Empty,
    #[error("feature `{0}` is declared twice")]
    Duplicate(String),
    #[error("feature `{0}`: dtype category needs a non-empty `categories` list")]
    NoCategories(String),
    #[error("feature `{0}`: `categories` is only allowed with dtype category")]
    UnexpectedCategories(String),
    #[error("feature `{0}`: min is greater than max")]
    BadRange(String),
    #[error("feature `{feature}`: impute value {value} does not fit dtype {dtype} and its range/categories")]
    BadImpute {
        feature: String,
        dtype: DType,
        value: ImputeValue,
    },
}

/// A feature with its imputation already encoded as the model sees it.
#[derive(Debug, Clone)]
struct Feature {
    spec: FeatureSpec,
    /// Encoded imputation (None = reject), computed once at load so the hot
    /// path never re-interprets the manifest.
    impute: Option<f32>,
}

/// A model's validated, ordered input schema.
#[derive(Debug, Clone)]
pub struct FeatureSchema {
    features: Vec<Feature>,
}

/// Why a batch could not be encoded for a model. Messages name the feature and
/// row but never a value: values are personal data.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FeatureError {
    #[error(
        "feature `{}` is required (missing = \"reject\") but the request has no such column",
        echo(.feature)
    )]
    MissingColumn { feature: String },
    #[error("feature `{}` row {row}: value is missing (or NaN) and the model rejects missing values", echo(.feature))]
    MissingValue { feature: String, row: usize },
    #[error(
        "feature `{}`: the model expects dtype {expected} but the column holds {got} values",
        echo(.feature)
    )]
    WrongDtype {
        feature: String,
        expected: DType,
        got: &'static str,
    },
    #[error("feature `{}` row {row}: value out of range [{min}, {max}]", echo(.feature))]
    OutOfRange {
        feature: String,
        row: usize,
        min: f64,
        max: f64,
    },
    #[error("feature `{}` row {row}: value is not an integer", echo(.feature))]
    NotInteger { feature: String, row: usize },
    #[error("feature `{}` row {row}: unknown category (expected one of: {expected})", echo(.feature))]
    UnknownCategory {
        feature: String,
        row: usize,
        expected: String,
    },
}

impl FeatureError {
    /// The feature the error is about.
    pub fn feature(&self) -> &str {
        match self {
            FeatureError::MissingColumn { feature }
            | FeatureError::MissingValue { feature, .. }
            | FeatureError::WrongDtype { feature, .. }
            | FeatureError::OutOfRange { feature, .. }
            | FeatureError::NotInteger { feature, .. }
            | FeatureError::UnknownCategory { feature, .. } => feature,
        }
    }

    /// The row (index in the batch) for a per-value error; None when the
    /// whole column is unusable.
    pub fn row(&self) -> Option<usize> {
        match self {
            FeatureError::MissingColumn { .. } | FeatureError::WrongDtype { .. } => None,
            FeatureError::MissingValue { row, .. }
            | FeatureError::OutOfRange { row, .. }
            | FeatureError::NotInteger { row, .. }
            | FeatureError::UnknownCategory { row, .. } => Some(*row),
        }
    }

    /// What is wrong with the value, without the feature and row (for a
    /// rejects file that has its own columns for those).
    pub fn reason(&self) -> String {
        match self {
            FeatureError::MissingColumn { .. } => {
                "required column is absent (missing = \"reject\")".into()
            }
            FeatureError::MissingValue { .. } => {
                "missing (or NaN) and the model rejects missing values".into()
            }
            FeatureError::WrongDtype { expected, got, .. } => {
                format!("expected dtype {expected}, the column holds {got} values")
            }
            FeatureError::OutOfRange { min, max, .. } => format!("out of range [{min}, {max}]"),
            FeatureError::NotInteger { .. } => "not an integer".into(),
            FeatureError::UnknownCategory { expected, .. } => {
                format!("unknown category (expected one of: {expected})")
            }
        }
    }
}

impl FeatureSchema {
    pub fn new(specs: Vec<FeatureSpec>) -> Result<Self, SchemaError> {
        if specs.is_empty() {
            return Err(SchemaError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        let mut features = Vec::with_capacity(specs.len());
        for spec in specs {
            if !seen.insert(spec.name.clone()) {
                return Err(SchemaError::Duplicate(spec.name));
            }
            match (spec.dtype, spec.categories.is_empty()) {
                (DType::Category, true) => return Err(SchemaError::NoCategories(spec.name)),
                (DType::Category, false) | (_, true) => {}
                (_, false) => return Err(SchemaError::UnexpectedCategories(spec.name)),
            }
            if let (Some(min), Some(max)) = (spec.min, spec.max) {
                if min > max || min.is_nan() || max.is_nan() {
                    return Err(SchemaError::BadRange(spec.name));
                }
            }
            let impute = match &spec.missing {
                MissingPolicy::Reject => None,
                MissingPolicy::Impute(value) => Some(encode_impute(&spec, value).ok_or_else(
                    || SchemaError::BadImpute {
                        feature: spec.name.clone(),
                        dtype: spec.dtype,
                        value: value.clone(),
                    },
                )?),
            };
            features.push(Feature { spec, impute });
        }
        Ok(Self { features })
    }

    /// Number of input columns the model takes.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    pub fn specs(&self) -> impl Iterator<Item = &FeatureSpec> {
        self.features.iter().map(|f| &f.spec)
    }

    pub fn spec(&self, name: &str) -> Option<&FeatureSpec> {
        self.specs().find(|s| s.name == name)
    }

    /// Encodes rows `rows` of `batch` into a row-major `[rows, features]` matrix in
    /// the model's column order, imputing and validating every value.
    pub fn encode(
        &self,
        batch: &FeatureBatch,
        rows: Range<usize>,
    ) -> Result<Array2<f32>, FeatureError> {
        self.encode_rows(batch, rows)
    }

    /// Like [`encode`](Self::encode) for any row selection (a canary's share of
    /// a request); errors name the row's index in `batch`.
    pub fn encode_rows<I>(&self, batch: &FeatureBatch, rows: I) -> Result<Array2<f32>, FeatureError>
    where
        I: ExactSizeIterator<Item = usize> + Clone,
    {
        let width = self.features.len();
        let n = rows.len();
        let mut out = vec![0f32; n * width];
        for (j, feature) in self.features.iter().enumerate() {
            let column = batch.columns.get(&feature.spec.name);
            let mut sink = Sink {
                feature,
                out: &mut out,
                width,
                col: j,
            };
            match column {
                None => match feature.impute {
                    Some(v) => (0..n).for_each(|i| sink.out[i * width + j] = v),
                    None => {
                        return Err(FeatureError::MissingColumn {
                            feature: feature.spec.name.clone(),
                        })
                    }
                },
                Some(column) => sink.fill(column, rows.clone())?,
            }
        }
        Ok(
            Array2::from_shape_vec((n, width), out)
                .expect("buffer sized rows*width; this is a bug"),
        )
    }
}

impl FeatureSchema {
    /// Every invalid value of `batch` for this model, at most one per (row,
    /// feature), in feature then row order: the checks [`encode`](Self::encode)
    /// makes, run to the end instead of stopping at the first failure, so a
    /// bulk job can set bad rows aside and send only valid ones. Err for a
    /// column-level problem (a required column absent, a wrong dtype), which
    /// no row selection can fix.
    pub fn row_errors(&self, batch: &FeatureBatch) -> Result<Vec<FeatureError>, FeatureError> {
        let n = batch.rows();
        let mut errors = Vec::new();
        // A one-column scratch buffer: the encoded values are discarded.
        let mut scratch = vec![0f32; n];
        for feature in &self.features {
            let Some(column) = batch.columns.get(&feature.spec.name) else {
                if feature.impute.is_none() {
                    return Err(FeatureError::MissingColumn {
                        feature: feature.spec.name.clone(),
                    });
                }
                continue;
            };
            let mut start = 0;
            while start < n {
                let mut sink = Sink {
                    feature,
                    out: &mut scratch,
                    width: 1,
                    col: 0,
                };
                match sink.fill(column, start..n) {
                    Ok(()) => break,
                    Err(e) => match e.row() {
                        Some(row) => {
                            start = row + 1;
                            errors.push(e);
                        }
                        None => return Err(e),
                    },
                }
            }
        }
        Ok(errors)
    }
}

/// Writes one feature's column into the output matrix.
struct Sink<'a> {
    feature: &'a Feature,
    out: &'a mut [f32],
    width: usize,
    col: usize,
}

impl Sink<'_> {
    fn name(&self) -> String {
        self.feature.spec.name.clone()
    }

    fn wrong_dtype(&self, got: &'static str) -> FeatureError {
        FeatureError::WrongDtype {
            feature: self.name(),
            expected: self.feature.spec.dtype,
            got,
        }
    }

    /// `at` is the output row, `row` the row's index in the batch (for errors).
    #[inline]
    fn put(&mut self, at: usize, value: f32) {
        self.out[at * self.width + self.col] = value;
    }

    #[inline]
    fn missing(&mut self, at: usize, row: usize) -> Result<(), FeatureError> {
        match self.feature.impute {
            Some(v) => {
                self.put(at, v);
                Ok(())
            }
            None => Err(FeatureError::MissingValue {
                feature: self.name(),
                row,
            }),
        }
    }

    #[inline]
    fn number(&mut self, at: usize, row: usize, value: f64) -> Result<(), FeatureError> {
        if value.is_nan() {
            return self.missing(at, row);
        }
        let spec = &self.feature.spec;
        let min = spec.min.unwrap_or(f64::NEG_INFINITY);
        let max = spec.max.unwrap_or(f64::INFINITY);
        if !(value >= min && value <= max) || value.is_infinite() {
            return Err(FeatureError::OutOfRange {
                feature: self.name(),
                row,
                min,
                max,
            });
        }
        if spec.dtype == DType::I64 && value.fract() != 0.0 {
            return Err(FeatureError::NotInteger {
                feature: self.name(),
                row,
            });
        }
        self.put(at, value as f32);
        Ok(())
    }

    fn fill(
        &mut self,
        column: &Column,
        rows: impl Iterator<Item = usize>,
    ) -> Result<(), FeatureError> {
        let dtype = self.feature.spec.dtype;
        let numeric = matches!(dtype, DType::F32 | DType::F64 | DType::I64);
        match &column.values {
            ColumnValues::F32(v) if numeric => {
                for (at, r) in rows.enumerate() {
                    if column.is_missing(r) {
                        self.missing(at, r)?
                    } else {
                        self.number(at, r, f64::from(v[r]))?
                    }
                }
            }
            ColumnValues::F64(v) if numeric => {
                for (at, r) in rows.enumerate() {
                    if column.is_missing(r) {
                        self.missing(at, r)?
                    } else {
                        self.number(at, r, v[r])?
                    }
                }
            }
            ColumnValues::I64(v) if numeric => {
                for (at, r) in rows.enumerate() {
                    if column.is_missing(r) {
                        self.missing(at, r)?
                    } else {
                        self.number(at, r, v[r] as f64)?
                    }
                }
            }
            ColumnValues::Bool(v) if dtype == DType::Bool => {
                for (at, r) in rows.enumerate() {
                    if column.is_missing(r) {
                        self.missing(at, r)?
                    } else {
                        self.put(at, if v[r] { 1.0 } else { 0.0 })
                    }
                }
            }
            ColumnValues::Category(v) if dtype == DType::Category => {
                let categories = &self.feature.spec.categories;
                for (at, r) in rows.enumerate() {
                    if column.is_missing(r) {
                        self.missing(at, r)?;
                        continue;
                    }
                    match categories.iter().position(|c| *c == v[r]) {
                        Some(code) => self.put(at, code as f32),
                        None => {
                            return Err(FeatureError::UnknownCategory {
                                feature: self.name(),
                                row: r,
                                expected: categories.join(", "),
                            })
                        }
                    }
                }
            }
            other => return Err(self.wrong_dtype(other.kind())),
        }
        Ok(())
    }
}

/// Encodes a manifest's impute value the way [`FeatureSchema::encode`] would
/// encode the same value arriving in a request; None if it does not fit.
fn encode_impute(spec: &FeatureSpec, value: &ImputeValue) -> Option<f32> {
    match (spec.dtype, value) {
        (DType::F32 | DType::F64 | DType::I64, ImputeValue::Number(n)) => {
            let in_range = spec.min.is_none_or(|m| *n >= m) && spec.max.is_none_or(|m| *n <= m);
            let integral = spec.dtype != DType::I64 || n.fract() == 0.0;
            (n.is_finite() && in_range && integral).then_some(*n as f32)
        }
        (DType::Bool, ImputeValue::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
        (DType::Category, ImputeValue::Text(t)) => spec
            .categories
            .iter()
            .position(|c| c == t)
            .map(|i| i as f32),
        _ => None,
    }
}

/// One column's values, typed as the caller sent them.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    Category(Vec<String>),
}

impl ColumnValues {
    pub fn len(&self) -> usize {
        match self {
            ColumnValues::F32(v) => v.len(),
            ColumnValues::F64(v) => v.len(),
            ColumnValues::I64(v) => v.len(),
            ColumnValues::Bool(v) => v.len(),
            ColumnValues::Category(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name of the array kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ColumnValues::F32(_) => "f32",
            ColumnValues::F64(_) => "f64",
            ColumnValues::I64(_) => "i64",
            ColumnValues::Bool(_) => "bool",
            ColumnValues::Category(_) => "category (string)",
        }
    }
}

/// A named column with its explicit missing-value mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub values: ColumnValues,
    /// `Some(mask)` with one flag per row when any value is missing; None keeps
    /// the common fully-present column free of a per-row mask.
    missing: Option<Vec<bool>>,
}

impl Column {
    pub fn new(values: ColumnValues) -> Self {
        Self {
            values,
            missing: None,
        }
    }

    /// Marks rows as missing; indices must be < the column length.
    pub fn with_missing_rows(mut self, rows: &[u32]) -> Result<Self, BatchError> {
        if rows.is_empty() {
            return Ok(self);
        }
        let len = self.values.len();
        let mask = self.missing.get_or_insert_with(|| vec![false; len]);
        for &r in rows {
            let slot = mask
                .get_mut(r as usize)
                .ok_or(BatchError::MissingRowOutOfRange { row: r, rows: len })?;
            *slot = true;
        }
        Ok(self)
    }

    /// Indices of the missing rows (the wire form of the mask).
    pub fn missing_rows(&self) -> Vec<u32> {
        self.missing.as_ref().map_or_else(Vec::new, |m| {
            m.iter()
                .enumerate()
                .filter(|(_, &x)| x)
                .map(|(i, _)| i as u32)
                .collect()
        })
    }

    /// The values at `rows` (indices into this column, in the given order).
    pub fn select(&self, rows: &[usize]) -> Column {
        fn pick<T: Clone>(v: &[T], rows: &[usize]) -> Vec<T> {
            rows.iter().map(|&r| v[r].clone()).collect()
        }
        let values = match &self.values {
            ColumnValues::F32(v) => ColumnValues::F32(pick(v, rows)),
            ColumnValues::F64(v) => ColumnValues::F64(pick(v, rows)),
            ColumnValues::I64(v) => ColumnValues::I64(pick(v, rows)),
            ColumnValues::Bool(v) => ColumnValues::Bool(pick(v, rows)),
            ColumnValues::Category(v) => ColumnValues::Category(pick(v, rows)),
        };
        let missing = self.missing.as_ref().map(|m| pick(m, rows));
        Column { values, missing }
    }

    #[inline]
    pub fn is_missing(&self, row: usize) -> bool {
        self.missing.as_ref().is_some_and(|m| m[row])
    }
}

/// Why a request's feature matrix is malformed, independent of any model.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BatchError {
    #[error("the feature matrix has no rows")]
    Empty,
    #[error("column `{}` appears more than once", echo(.0))]
    DuplicateColumn(String),
    #[error("column `{}` has {len} values but the matrix has {rows} rows", echo(.name))]
    Length {
        name: String,
        len: usize,
        rows: usize,
    },
    #[error("missing_rows index {row} is out of range for a column of {rows} rows")]
    MissingRowOutOfRange { row: u32, rows: usize },
    #[error("{rows} rows exceed the limit of {limit} rows per request")]
    TooManyRows { rows: usize, limit: usize },
}

/// A caller's rows: named typed columns of equal length.
#[derive(Debug, Clone, Default)]
pub struct FeatureBatch {
    rows: usize,
    columns: HashMap<String, Column>,
}

impl FeatureBatch {
    /// Builds a batch, checking that names are unique and lengths agree. `rows`
    /// is the declared row count (0 = take it from the columns).
    pub fn new(rows: usize, columns: Vec<(String, Column)>) -> Result<Self, BatchError> {
        let rows = match (rows, columns.first()) {
            (0, Some((_, c))) => c.values.len(),
            (rows, _) => rows,
        };
        if rows == 0 {
            return Err(BatchError::Empty);
        }
        let mut map = HashMap::with_capacity(columns.len());
        for (name, column) in columns {
            if column.values.len() != rows {
                return Err(BatchError::Length {
                    name,
                    len: column.values.len(),
                    rows,
                });
            }
            if map.contains_key(&name) {
                return Err(BatchError::DuplicateColumn(name));
            }
            map.insert(name, column);
        }
        Ok(Self { rows, columns: map })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.get(name)
    }

    /// A batch of the rows `rows` (indices into this batch, in that order);
    /// Err(Empty) when `rows` is empty.
    pub fn select_rows(&self, rows: &[usize]) -> Result<FeatureBatch, BatchError> {
        if rows.is_empty() {
            return Err(BatchError::Empty);
        }
        let columns = self
            .columns
            .iter()
            .map(|(name, c)| (name.clone(), c.select(rows)))
            .collect();
        Ok(FeatureBatch {
            rows: rows.len(),
            columns,
        })
    }

    /// Consumes the batch into its named columns (any order).
    pub fn into_columns(self) -> impl Iterator<Item = (String, Column)> {
        self.columns.into_iter()
    }
}

/// Builds one typed column from text cells (CSV input, golden sets): an empty
/// cell is a missing value.
#[derive(Debug)]
pub struct ColumnBuilder {
    values: ColumnValues,
    missing: Vec<u32>,
}

impl ColumnBuilder {
    pub fn new(dtype: DType) -> Self {
        let values = match dtype {
            DType::F32 => ColumnValues::F32(Vec::new()),
            DType::F64 => ColumnValues::F64(Vec::new()),
            // Counts often arrive as "3.0" from tools that stored them as floats
            // next to missing values; f64 keeps them exact and encode() still
            // rejects a fractional value for an i64 feature.
            DType::I64 => ColumnValues::F64(Vec::new()),
            DType::Bool => ColumnValues::Bool(Vec::new()),
            DType::Category => ColumnValues::Category(Vec::new()),
        };
        Self {
            values,
            missing: Vec::new(),
        }
    }

    /// Appends one cell; Err names what the cell should have been.
    pub fn push(&mut self, cell: &str) -> Result<(), &'static str> {
        let cell = cell.trim();
        let row = self.values.len() as u32;
        let blank = cell.is_empty();
        if blank {
            self.missing.push(row);
        }
        match &mut self.values {
            ColumnValues::F32(v) => v.push(if blank {
                f32::NAN
            } else {
                cell.parse().map_err(|_| "a number")?
            }),
            ColumnValues::F64(v) => v.push(if blank {
                f64::NAN
            } else {
                cell.parse().map_err(|_| "a number")?
            }),
            ColumnValues::I64(_) => {
                unreachable!("new() builds i64 features as f64 columns; this is a bug")
            }
            ColumnValues::Bool(v) => v.push(match cell {
                "" => false,
                "true" | "True" | "TRUE" | "1" => true,
                "false" | "False" | "FALSE" | "0" => false,
                _ => return Err("true or false"),
            }),
            ColumnValues::Category(v) => v.push(cell.to_owned()),
        }
        Ok(())
    }

    /// Appends a missing value (a cell that could not be parsed, once the
    /// caller has recorded why), keeping the column aligned with its rows.
    pub fn push_missing(&mut self) {
        let row = self.values.len() as u32;
        self.missing.push(row);
        match &mut self.values {
            ColumnValues::F32(v) => v.push(f32::NAN),
            ColumnValues::F64(v) => v.push(f64::NAN),
            ColumnValues::I64(v) => v.push(0),
            ColumnValues::Bool(v) => v.push(false),
            ColumnValues::Category(v) => v.push(String::new()),
        }
    }

    /// Number of cells pushed so far.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn finish(self) -> Column {
        Column::new(self.values)
            .with_missing_rows(&self.missing)
            .expect("missing rows recorded while pushing; this is a bug")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, missing: MissingPolicy) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            description: None,
            dtype,
            min: Some(0.0),
            max: Some(100.0),
            categories: if dtype == DType::Category {
                vec!["a".into(), "b".into()]
            } else {
                vec![]
            },
            missing,
        }
    }

    fn schema() -> FeatureSchema {
        FeatureSchema::new(vec![
            spec(
                "x",
                DType::F32,
                MissingPolicy::Impute(ImputeValue::Number(7.0)),
            ),
            spec("n", DType::I64, MissingPolicy::Reject),
            spec(
                "flag",
                DType::Bool,
                MissingPolicy::Impute(ImputeValue::Bool(true)),
            ),
            spec(
                "cat",
                DType::Category,
                MissingPolicy::Impute(ImputeValue::Text("b".into())),
            ),
        ])
        .unwrap()
    }

    fn batch(cols: Vec<(&str, Column)>) -> FeatureBatch {
        FeatureBatch::new(
            0,
            cols.into_iter().map(|(n, c)| (n.to_string(), c)).collect(),
        )
        .unwrap()
    }

    #[test]
    fn encodes_in_schema_order_with_imputation() {
        let b = batch(vec![
            (
                "cat",
                Column::new(ColumnValues::Category(vec!["a".into(), "b".into()])),
            ),
            ("n", Column::new(ColumnValues::I64(vec![1, 2]))),
            ("x", Column::new(ColumnValues::F32(vec![1.5, f32::NAN]))),
            ("extra", Column::new(ColumnValues::Bool(vec![true, false]))),
        ]);
        let m = schema().encode(&b, 0..2).unwrap();
        assert_eq!(
            m.as_slice().unwrap(),
            &[1.5, 1.0, 1.0, 0.0, 7.0, 2.0, 1.0, 1.0]
        );
        let tail = schema().encode(&b, 1..2).unwrap();
        assert_eq!(tail.as_slice().unwrap(), &[7.0, 2.0, 1.0, 1.0]);
    }

    #[test]
    fn rejects_what_the_manifest_rejects() {
        let s = schema();
        let no_n = batch(vec![("x", Column::new(ColumnValues::F32(vec![1.0])))]);
        assert!(matches!(
            s.encode(&no_n, 0..1),
            Err(FeatureError::MissingColumn { .. })
        ));
        let missing_n = batch(vec![(
            "n",
            Column::new(ColumnValues::I64(vec![1, 2]))
                .with_missing_rows(&[1])
                .unwrap(),
        )]);
        assert_eq!(
            s.encode(&missing_n, 0..2),
            Err(FeatureError::MissingValue {
                feature: "n".into(),
                row: 1
            })
        );
        let frac = batch(vec![("n", Column::new(ColumnValues::F64(vec![1.5])))]);
        assert!(matches!(
            s.encode(&frac, 0..1),
            Err(FeatureError::NotInteger { .. })
        ));
        let range = batch(vec![
            ("n", Column::new(ColumnValues::I64(vec![1]))),
            ("x", Column::new(ColumnValues::F64(vec![101.0]))),
        ]);
        assert!(matches!(
            s.encode(&range, 0..1),
            Err(FeatureError::OutOfRange { row: 0, .. })
        ));
        let dtype = batch(vec![
            ("n", Column::new(ColumnValues::I64(vec![1]))),
            ("flag", Column::new(ColumnValues::F32(vec![1.0]))),
        ]);
        assert!(matches!(
            s.encode(&dtype, 0..1),
            Err(FeatureError::WrongDtype { .. })
        ));
        let cat = batch(vec![
            ("n", Column::new(ColumnValues::I64(vec![1]))),
            (
                "cat",
                Column::new(ColumnValues::Category(vec!["zz".into()])),
            ),
        ]);
        assert!(matches!(
            s.encode(&cat, 0..1),
            Err(FeatureError::UnknownCategory { .. })
        ));
    }

    #[test]
    fn batch_shape_is_checked() {
        let short = FeatureBatch::new(
            2,
            vec![("x".into(), Column::new(ColumnValues::F32(vec![1.0])))],
        );
        assert!(matches!(short, Err(BatchError::Length { .. })));
        let dup = FeatureBatch::new(
            0,
            vec![
                ("x".into(), Column::new(ColumnValues::F32(vec![1.0]))),
                ("x".into(), Column::new(ColumnValues::F32(vec![1.0]))),
            ],
        );
        assert_eq!(dup.unwrap_err(), BatchError::DuplicateColumn("x".into()));
        assert_eq!(FeatureBatch::new(0, vec![]).unwrap_err(), BatchError::Empty);
        let oob = Column::new(ColumnValues::F32(vec![1.0])).with_missing_rows(&[3]);
        assert!(matches!(
            oob,
            Err(BatchError::MissingRowOutOfRange { row: 3, .. })
        ));
    }

    #[test]
    fn bad_manifests_are_refused() {
        let bad_impute = spec(
            "c",
            DType::Category,
            MissingPolicy::Impute(ImputeValue::Text("zz".into())),
        );
        assert!(matches!(
            FeatureSchema::new(vec![bad_impute]),
            Err(SchemaError::BadImpute { .. })
        ));
        let twice = vec![
            spec("x", DType::F32, MissingPolicy::Reject),
            spec("x", DType::F32, MissingPolicy::Reject),
        ];
        assert!(matches!(
            FeatureSchema::new(twice),
            Err(SchemaError::Duplicate(_))
        ));
        let parsed: FeatureSpec =
            toml::from_str("name = \"a\"\ndtype = \"i64\"\nmissing = { impute = 3 }\n").unwrap();
        assert_eq!(
            parsed.missing,
            MissingPolicy::Impute(ImputeValue::Number(3.0))
        );
        let reject: FeatureSpec =
            toml::from_str("name = \"a\"\ndtype = \"f32\"\nmissing = \"reject\"\n").unwrap();
        assert_eq!(reject.missing, MissingPolicy::Reject);
        assert!(toml::from_str::<FeatureSpec>(
            "name = \"a\"\ndtype = \"f32\"\nmissing = \"drop\"\n"
        )
        .is_err());
    }

    #[test]
    fn row_errors_lists_every_bad_value_and_matches_encode() {
        let s = schema();
        let b = batch(vec![
            (
                "n",
                Column::new(ColumnValues::F64(vec![1.0, 1.5, 2.0, f64::NAN, 200.0]))
                    .with_missing_rows(&[3])
                    .unwrap(),
            ),
            (
                "cat",
                Column::new(ColumnValues::Category(vec![
                    "a".into(),
                    "zz".into(),
                    "b".into(),
                    "a".into(),
                    "a".into(),
                ])),
            ),
        ]);
        let errors = s.row_errors(&b).unwrap();
        let got: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.feature(), e.row())).collect();
        assert_eq!(
            got,
            vec![
                ("n", Some(1)),
                ("n", Some(3)),
                ("n", Some(4)),
                ("cat", Some(1))
            ]
        );
        assert_eq!(errors[0].reason(), "not an integer");
        // encode() fails on the first of them; the good rows encode.
        assert_eq!(s.encode(&b, 0..5).unwrap_err(), errors[0]);
        let good = b.select_rows(&[0, 2]).unwrap();
        assert!(s.row_errors(&good).unwrap().is_empty());
        assert_eq!(s.encode(&good, 0..2).unwrap().nrows(), 2);
        let no_n = batch(vec![("x", Column::new(ColumnValues::F32(vec![1.0])))]);
        assert!(matches!(
            s.row_errors(&no_n),
            Err(FeatureError::MissingColumn { .. })
        ));
    }

    #[test]
    fn csv_cells_parse_by_dtype() {
        let mut b = ColumnBuilder::new(DType::I64);
        b.push("3").unwrap();
        b.push("").unwrap();
        b.push("4.0").unwrap();
        assert!(b.push("x").is_err());
        let col = b.finish();
        assert!(col.is_missing(1) && !col.is_missing(0));
        let mut flags = ColumnBuilder::new(DType::Bool);
        assert!(flags.push("maybe").is_err());
    }
}
