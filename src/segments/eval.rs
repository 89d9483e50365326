//! Evaluating rules over one request: each referenced variable is bound once
//! per request into a typed column (imputation and row errors applied), then
//! every compiled rule walks its [`Node`] tree per row over those columns
//! with no allocation. Interpreted rules (and the drift tests) run the cel
//! interpreter with a context holding only the variables the rule reads.

use std::{collections::HashMap, sync::Arc};

use super::{
    check::{ArithOp, CmpOp, Lit, Node},
    Constant, ModelScoresView, RuleInput, Var,
};
use crate::{
    features::{ColumnValues, DType, FeatureSpec, ImputeValue, MissingPolicy},
    repository::Task,
};

/// One row's value of a variable, or of an expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum V<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
}

/// A variable's values for every row of a request.
#[derive(Debug)]
pub enum Bound<'a> {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Double(Vec<f64>),
    Str(Vec<&'a str>),
    /// No row has a value; the reason is each row's error.
    Unavailable(String),
}

/// A variable bound for a request: its values and the rows where it has
/// none (a rejected missing value, an out-of-range value), with the reason.
#[derive(Debug)]
pub struct Binding<'a> {
    pub values: Bound<'a>,
    /// Sorted by row; one entry per failing row.
    pub errors: Vec<(usize, String)>,
}

impl<'a> Binding<'a> {
    #[inline]
    pub fn get(&self, row: usize) -> V<'a> {
        match &self.values {
            Bound::Bool(v) => V::Bool(v[row]),
            Bound::Int(v) => V::Int(v[row]),
            Bound::Double(v) => V::Double(v[row]),
            Bound::Str(v) => V::Str(v[row]),
            Bound::Unavailable(_) => V::Bool(false),
        }
    }
}

/// Binds `var` over the request's rows.
pub fn bind<'a>(
    var: &Var,
    input: &RuleInput<'a>,
    specs: &'a HashMap<String, FeatureSpec>,
) -> Binding<'a> {
    let rows = input.batch.rows();
    match var {
        Var::Feature(name) => match specs.get(name) {
            Some(spec) => bind_feature(spec, input, rows),
            None => unavailable(format!(
                "feature `{name}` is no longer in any serving model"
            )),
        },
        Var::Score(model) => match input.scores.get(model.as_str()) {
            Some(view) => bind_score(model, view, rows),
            None => unavailable(format!("model `{model}` was not scored")),
        },
        Var::Label(model) => match input.scores.get(model.as_str()) {
            Some(view) if view.labels.len() == rows => Binding {
                values: Bound::Str(view.labels.iter().map(String::as_str).collect()),
                errors: Vec::new(),
            },
            Some(_) => unavailable(format!("model `{model}` returned no class labels")),
            None => unavailable(format!("model `{model}` was not scored")),
        },
        Var::Version(model) => match input.scores.get(model.as_str()) {
            Some(view) => {
                let mut versions = vec![view.version as i64; rows];
                for &r in view.canary_rows {
                    if let Some(slot) = versions.get_mut(r as usize) {
                        *slot = view.canary_version as i64;
                    }
                }
                Binding {
                    values: Bound::Int(versions),
                    errors: Vec::new(),
                }
            }
            None => unavailable(format!("model `{model}` was not scored")),
        },
    }
}

fn unavailable<'a>(reason: String) -> Binding<'a> {
    Binding {
        values: Bound::Unavailable(reason),
        errors: Vec::new(),
    }
}

fn bind_score<'a>(model: &str, view: &ModelScoresView<'a>, rows: usize) -> Binding<'a> {
    if view.task == Task::Clustering {
        if view.cluster_ids.len() != rows {
            return unavailable(format!("model `{model}` returned no cluster ids"));
        }
        return Binding {
            values: Bound::Int(view.cluster_ids.iter().map(|&c| i64::from(c)).collect()),
            errors: Vec::new(),
        };
    }
    if view.scores.len() != rows {
        return unavailable(format!(
            "model `{model}` returned {} scores for {rows} rows",
            view.scores.len()
        ));
    }
    Binding {
        values: Bound::Double(view.scores.iter().map(|&s| f64::from(s)).collect()),
        errors: Vec::new(),
    }
}

/// Where the row's value comes from before typing.
enum Raw<'a> {
    Missing,
    Number(f64),
    Bool(bool),
    Text(&'a str),
}

fn bind_feature<'a>(spec: &'a FeatureSpec, input: &RuleInput<'a>, rows: usize) -> Binding<'a> {
    let name = &spec.name;
    let column = input.batch.column(name);
    let mut errors = Vec::new();
    let raw = |r: usize| -> Result<Raw<'a>, &'static str> {
        let Some(column) = column else {
            return Ok(Raw::Missing);
        };
        if column.is_missing(r) {
            return Ok(Raw::Missing);
        }
        Ok(match &column.values {
            ColumnValues::F32(v) => Raw::Number(f64::from(v[r])),
            ColumnValues::F64(v) => Raw::Number(v[r]),
            ColumnValues::I64(v) => Raw::Number(v[r] as f64),
            ColumnValues::Bool(v) => Raw::Bool(v[r]),
            ColumnValues::Category(v) => Raw::Text(v[r].as_str()),
        })
    };
    // A column of the wrong kind fails every row the same way.
    if let Some(column) = column {
        let fits = matches!(
            (spec.dtype, &column.values),
            (
                DType::F32 | DType::F64 | DType::I64,
                ColumnValues::F32(_) | ColumnValues::F64(_) | ColumnValues::I64(_)
            ) | (DType::Bool, ColumnValues::Bool(_))
                | (DType::Category, ColumnValues::Category(_))
        );
        if !fits {
            return unavailable(format!(
                "feature `{name}`: dtype {} but the column holds {} values",
                spec.dtype,
                column.values.kind()
            ));
        }
    }
    let impute = match &spec.missing {
        MissingPolicy::Impute(v) => Some(v),
        MissingPolicy::Reject => None,
    };
    let missing_reason =
        || format!("feature `{name}` is missing and its manifest rejects missing values");
    let min = spec.min.unwrap_or(f64::NEG_INFINITY);
    let max = spec.max.unwrap_or(f64::INFINITY);
    let number = |r: usize, errors: &mut Vec<(usize, String)>| -> Option<f64> {
        let value = match raw(r) {
            Ok(Raw::Number(n)) if !n.is_nan() => n,
            Ok(Raw::Number(_) | Raw::Missing) => match impute {
                Some(ImputeValue::Number(n)) => return Some(*n),
                _ => {
                    errors.push((r, missing_reason()));
                    return None;
                }
            },
            _ => return None,
        };
        if !(value >= min && value <= max) || value.is_infinite() {
            errors.push((
                r,
                format!("feature `{name}`: value out of range [{min}, {max}]"),
            ));
            return None;
        }
        Some(value)
    };
    let values = match spec.dtype {
        // The model sees f32 features rounded to f32; rules see the same value.
        DType::F32 => Bound::Double(
            (0..rows)
                .map(|r| number(r, &mut errors).map_or(0.0, |v| f64::from(v as f32)))
                .collect(),
        ),
        DType::F64 => Bound::Double(
            (0..rows)
                .map(|r| number(r, &mut errors).unwrap_or(0.0))
                .collect(),
        ),
        DType::I64 => Bound::Int(
            (0..rows)
                .map(|r| match number(r, &mut errors) {
                    Some(v) if v.fract() == 0.0 => v as i64,
                    Some(_) => {
                        errors.push((r, format!("feature `{name}`: value is not an integer")));
                        0
                    }
                    None => 0,
                })
                .collect(),
        ),
        DType::Bool => Bound::Bool(
            (0..rows)
                .map(|r| match raw(r) {
                    Ok(Raw::Bool(b)) => b,
                    _ => match impute {
                        Some(ImputeValue::Bool(b)) => *b,
                        _ => {
                            errors.push((r, missing_reason()));
                            false
                        }
                    },
                })
                .collect(),
        ),
        DType::Category => Bound::Str(
            (0..rows)
                .map(|r| match raw(r) {
                    Ok(Raw::Text(t)) => {
                        if spec.categories.iter().any(|c| c == t) {
                            t
                        } else {
                            errors.push((
                                r,
                                format!(
                                    "feature `{name}`: unknown category (expected one of: {})",
                                    spec.categories.join(", ")
                                ),
                            ));
                            ""
                        }
                    }
                    _ => match impute {
                        Some(ImputeValue::Text(t)) => t.as_str(),
                        _ => {
                            errors.push((r, missing_reason()));
                            ""
                        }
                    },
                })
                .collect(),
        ),
    };
    errors.sort_by_key(|(r, _)| *r);
    errors.dedup_by_key(|(r, _)| *r);
    Binding { values, errors }
}

/// Why a rule could not be evaluated on a row.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

type EvalResult<'a> = Result<V<'a>, EvalError>;

fn type_bug(what: &str) -> EvalError {
    EvalError(format!("internal type error in {what}; this is a bug"))
}

/// Evaluates a compiled node on one row. `slots[i]` is the rule's i-th variable.
pub fn eval<'a>(node: &'a Node, slots: &[&Binding<'a>], row: usize) -> EvalResult<'a> {
    Ok(match node {
        Node::Lit(lit) => match lit {
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::UInt(u) => V::UInt(*u),
            Lit::Double(d) => V::Double(*d),
            Lit::Str(s) => V::Str(s.as_str()),
        },
        Node::Slot(i) => slots[*i].get(row),
        Node::Not(a) => match eval(a, slots, row)? {
            V::Bool(b) => V::Bool(!b),
            _ => return Err(type_bug("!")),
        },
        Node::Neg(a) => match eval(a, slots, row)? {
            V::Int(i) => V::Int(
                i.checked_neg()
                    .ok_or_else(|| EvalError("integer overflow in unary `-`".into()))?,
            ),
            V::Double(d) => V::Double(-d),
            _ => return Err(type_bug("unary -")),
        },
        // CEL's commutative logic: an error on one side is absorbed when the
        // other side decides the result.
        Node::And(a, b) => {
            let left = eval(a, slots, row);
            if left == Ok(V::Bool(false)) {
                return Ok(V::Bool(false));
            }
            match (left, eval(b, slots, row)?) {
                (Ok(V::Bool(true)), V::Bool(r)) => V::Bool(r),
                (Err(_), V::Bool(false)) => V::Bool(false),
                (Err(e), _) => return Err(e),
                _ => return Err(type_bug("&&")),
            }
        }
        Node::Or(a, b) => {
            let left = eval(a, slots, row);
            if left == Ok(V::Bool(true)) {
                return Ok(V::Bool(true));
            }
            match (left, eval(b, slots, row)?) {
                (Ok(V::Bool(false)), V::Bool(r)) => V::Bool(r),
                (Err(_), V::Bool(true)) => V::Bool(true),
                (Err(e), _) => return Err(e),
                _ => return Err(type_bug("||")),
            }
        }
        Node::Cmp(op, a, b) => {
            let l = eval(a, slots, row)?;
            let r = eval(b, slots, row)?;
            V::Bool(compare(*op, l, r))
        }
        Node::Arith(op, a, b) => {
            let l = eval(a, slots, row)?;
            let r = eval(b, slots, row)?;
            arith(*op, l, r)?
        }
        Node::Cond(c, a, b) => match eval(c, slots, row)? {
            V::Bool(true) => eval(a, slots, row)?,
            V::Bool(false) => eval(b, slots, row)?,
            _ => return Err(type_bug("?:")),
        },
        Node::In(a, items) => {
            let v = eval(a, slots, row)?;
            V::Bool(items.iter().any(|item| {
                let item = match item {
                    Lit::Bool(b) => V::Bool(*b),
                    Lit::Int(i) => V::Int(*i),
                    Lit::UInt(u) => V::UInt(*u),
                    Lit::Double(d) => V::Double(*d),
                    Lit::Str(s) => V::Str(s.as_str()),
                };
                compare(CmpOp::Eq, v, item)
            }))
        }
        Node::ToDouble(a) => match eval(a, slots, row)? {
            V::Int(i) => V::Double(i as f64),
            V::UInt(u) => V::Double(u as f64),
            _ => return Err(type_bug("double()")),
        },
        Node::ToInt(a) => match eval(a, slots, row)? {
            V::Double(d)
                if d.is_finite()
                    && d > -9.223_372_036_854_776e18
                    && d < 9.223_372_036_854_776e18 =>
            {
                V::Int(d as i64)
            }
            V::Double(_) => return Err(EvalError("int() of a double out of the int range".into())),
            _ => return Err(type_bug("int()")),
        },
    })
}

/// Numbers compare across int, uint and double as CEL defines it.
fn compare(op: CmpOp, l: V, r: V) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (l, r) {
        (V::Bool(a), V::Bool(b)) => Some(a.cmp(&b)),
        (V::Int(a), V::Int(b)) => Some(a.cmp(&b)),
        (V::UInt(a), V::UInt(b)) => Some(a.cmp(&b)),
        (V::Double(a), V::Double(b)) => a.partial_cmp(&b),
        (V::Str(a), V::Str(b)) => Some(a.cmp(b)),
        (V::Int(a), V::UInt(b)) => Some(u64::try_from(a).map_or(Ordering::Less, |a| a.cmp(&b))),
        (V::UInt(a), V::Int(b)) => Some(i64::try_from(a).map_or(Ordering::Greater, |a| a.cmp(&b))),
        (V::Int(a), V::Double(b)) => (a as f64).partial_cmp(&b),
        (V::Double(a), V::Int(b)) => a.partial_cmp(&(b as f64)),
        (V::UInt(a), V::Double(b)) => (a as f64).partial_cmp(&b),
        (V::Double(a), V::UInt(b)) => a.partial_cmp(&(b as f64)),
        _ => None,
    };
    match op {
        CmpOp::Eq => ordering == Some(Ordering::Equal),
        CmpOp::Ne => ordering != Some(Ordering::Equal),
        CmpOp::Lt => ordering == Some(Ordering::Less),
        CmpOp::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ordering == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
    }
}

fn arith<'a>(op: ArithOp, l: V<'a>, r: V<'a>) -> EvalResult<'a> {
    let overflow = |what: &str| EvalError(format!("integer {what}"));
    Ok(match (l, r) {
        (V::Int(a), V::Int(b)) => V::Int(match op {
            ArithOp::Add => a
                .checked_add(b)
                .ok_or_else(|| overflow("overflow in `+`"))?,
            ArithOp::Sub => a
                .checked_sub(b)
                .ok_or_else(|| overflow("overflow in `-`"))?,
            ArithOp::Mul => a
                .checked_mul(b)
                .ok_or_else(|| overflow("overflow in `*`"))?,
            ArithOp::Div if b == 0 => return Err(EvalError("division by zero".into())),
            ArithOp::Div => a
                .checked_div(b)
                .ok_or_else(|| overflow("overflow in `/`"))?,
            ArithOp::Rem if b == 0 => return Err(EvalError("modulus by zero".into())),
            ArithOp::Rem => a
                .checked_rem(b)
                .ok_or_else(|| overflow("overflow in `%`"))?,
        }),
        (V::UInt(a), V::UInt(b)) => V::UInt(match op {
            ArithOp::Add => a
                .checked_add(b)
                .ok_or_else(|| overflow("overflow in `+`"))?,
            ArithOp::Sub => a
                .checked_sub(b)
                .ok_or_else(|| overflow("overflow in `-`"))?,
            ArithOp::Mul => a
                .checked_mul(b)
                .ok_or_else(|| overflow("overflow in `*`"))?,
            ArithOp::Div if b == 0 => return Err(EvalError("division by zero".into())),
            ArithOp::Div => a / b,
            ArithOp::Rem if b == 0 => return Err(EvalError("modulus by zero".into())),
            ArithOp::Rem => a % b,
        }),
        (V::Double(a), V::Double(b)) => V::Double(match op {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
            ArithOp::Rem => return Err(type_bug("% on double")),
        }),
        _ => return Err(type_bug("arithmetic")),
    })
}

/// A shared cel environment: building the standard library once, not per row.
pub fn environment() -> Arc<cel::Env> {
    Arc::new(cel::Env::stdlib())
}

fn to_cel(v: V) -> cel::Value {
    match v {
        V::Bool(b) => cel::Value::Bool(b),
        V::Int(i) => cel::Value::Int(i),
        V::UInt(u) => cel::Value::UInt(u),
        V::Double(d) => cel::Value::Float(d),
        V::Str(s) => cel::Value::String(Arc::new(s.to_owned())),
    }
}

/// Runs `program` on the cel interpreter for one row: `features`, `scores`
/// and `versions` hold only the variables the rule reads; constants are
/// top-level variables. The result must be a bool.
pub fn interpret(
    program: &cel::Program,
    env: &Arc<cel::Env>,
    constants: &std::collections::BTreeMap<String, Constant>,
    vars: &[Var],
    slots: &[&Binding],
    row: usize,
) -> Result<bool, EvalError> {
    let mut features: HashMap<String, cel::Value> = HashMap::new();
    let mut scores: HashMap<String, cel::Value> = HashMap::new();
    let mut versions: HashMap<String, cel::Value> = HashMap::new();
    for (var, binding) in vars.iter().zip(slots) {
        let value = to_cel(binding.get(row));
        match var {
            Var::Feature(n) => features.insert(n.clone(), value),
            Var::Score(n) => scores.insert(n.clone(), value),
            Var::Version(n) => versions.insert(n.clone(), value),
            // `scores.m.label` selects from a map; the checker refuses a
            // rule that also reads `scores.m` itself on this path.
            Var::Label(n) => scores.insert(
                n.clone(),
                cel::Value::from(HashMap::from([("label".to_string(), value)])),
            ),
        };
    }
    let mut context = cel::Context::with_env(env.clone());
    context.add_variable_from_value("features", features);
    context.add_variable_from_value("scores", scores);
    context.add_variable_from_value("versions", versions);
    for (name, constant) in constants {
        let value = match &constant.0 {
            Lit::Bool(b) => cel::Value::Bool(*b),
            Lit::Int(i) => cel::Value::Int(*i),
            Lit::UInt(u) => cel::Value::UInt(*u),
            Lit::Double(d) => cel::Value::Float(*d),
            Lit::Str(s) => cel::Value::String(Arc::new(s.clone())),
        };
        context.add_variable_from_value(name.clone(), value);
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(EvalError(format!(
            "the rule evaluated to {:?}, not a bool",
            other.type_of()
        ))),
        Err(e) => Err(EvalError(value_free(&e))),
    }
}

/// The interpreter's error without the values it quotes: row errors go back
/// to callers and may be logged by them, and feature values are personal data.
fn value_free(e: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    match e {
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "modulus by zero".into(),
        E::ValuesNotComparable(..) => "values that cannot be compared".into(),
        E::UnsupportedBinaryOperator(op, ..) => {
            format!("operator `{op}` does not apply to these types")
        }
        E::FunctionError { function, .. } => format!("function `{function}` failed"),
        E::NoSuchOverload(o) => format!("no overload of `{}` for these types", o.function()),
        E::UnexpectedType { got, want } => format!("expected {want}, got {got}"),
        E::UndeclaredReference(name) => format!("undeclared reference `{name}`"),
        E::InvalidArgumentCount { expected, actual } => {
            format!("{actual} arguments where {expected} are expected")
        }
        E::NoSuchKey(_) => "no such key".into(),
        _ => "the rule could not be evaluated (cel interpreter error)".into(),
    }
}
