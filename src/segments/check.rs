//! Type checking a parsed CEL rule against the [`Catalog`], and compiling the
//! common subset into a [`Node`] tree the evaluator runs without allocating.
//!
//! The subset: bool/int/uint/double/string literals, named constants,
//! `features.<name>`, `scores.<model>`, `versions.<model>`, `&&`, `||`, `!`,
//! comparisons, `+ - * / %` on numbers, unary `-`, `?:`, `x in [literals]`
//! and `double(x)` / `int(x)`. Anything else (macros, other functions) is
//! [`Checked::Interpreted`]: its references are still checked at load, and it
//! runs on the cel interpreter, with its bool result checked per row.

use std::collections::{BTreeMap, BTreeSet};

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use super::{Catalog, Constant, Var};
use crate::repository::Task;

/// A CEL type as the checker tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Bool,
    Int,
    UInt,
    Double,
    String,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::UInt => "uint",
            Type::Double => "double",
            Type::String => "string",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Type::Int | Type::UInt | Type::Double)
    }
}

/// A literal value (from the rule or a named constant).
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

impl Lit {
    pub fn ty(&self) -> Type {
        match self {
            Lit::Bool(_) => Type::Bool,
            Lit::Int(_) => Type::Int,
            Lit::UInt(_) => Type::UInt,
            Lit::Double(_) => Type::Double,
            Lit::Str(_) => Type::String,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A compiled, type-checked rule node. `Slot(i)` reads the rule's i-th
/// referenced variable for the current row.
#[derive(Debug, Clone)]
pub enum Node {
    Lit(Lit),
    Slot(usize),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<Lit>),
    ToDouble(Box<Node>),
    ToInt(Box<Node>),
}

/// What checking a rule produced.
pub enum Checked {
    /// The compiled bool rule and the variables its slots read, in slot order.
    Compiled { node: Node, vars: Vec<Var> },
    /// Valid references, but outside the compiled subset (the construct is
    /// named for the logs): evaluated by the interpreter.
    Interpreted { vars: Vec<Var>, construct: String },
}

/// Why a rule is refused, pointing at the offending expression.
#[derive(Debug)]
pub struct CheckError {
    pub message: String,
    pub expr_id: u64,
}

/// Outcome of compiling one node: a real refusal, or "not in the subset".
enum Fail {
    Invalid(CheckError),
    Unsupported(String),
}

fn invalid(expr: &IdedExpr, message: String) -> Fail {
    Fail::Invalid(CheckError {
        message,
        expr_id: expr.id,
    })
}

struct Compiler<'a> {
    catalog: &'a Catalog,
    constants: &'a BTreeMap<String, Constant>,
    vars: Vec<Var>,
}

/// Checks `expr` (the whole rule) and compiles it if it is in the subset.
pub fn check(
    expr: &IdedExpr,
    catalog: &Catalog,
    constants: &BTreeMap<String, Constant>,
) -> Result<Checked, CheckError> {
    let mut compiler = Compiler {
        catalog,
        constants,
        vars: Vec::new(),
    };
    match compiler.compile(expr) {
        Ok((node, Type::Bool)) => Ok(Checked::Compiled {
            node,
            vars: compiler.vars,
        }),
        Ok((_, ty)) => Err(CheckError {
            message: format!(
                "the rule evaluates to {} but a segment rule must evaluate to bool",
                ty.name()
            ),
            expr_id: expr.id,
        }),
        Err(Fail::Invalid(e)) => Err(e),
        Err(Fail::Unsupported(construct)) => {
            let mut refs = References {
                catalog,
                constants,
                vars: BTreeSet::new(),
                bound: BTreeSet::new(),
                labels: BTreeSet::new(),
            };
            refs.collect_bound(expr);
            refs.walk(expr)?;
            Ok(Checked::Interpreted {
                vars: refs.vars.into_iter().collect(),
                construct,
            })
        }
    }
}

/// `scores.m.label`: the model, if `expr` is such a selection.
fn label_select(expr: &IdedExpr) -> Option<&str> {
    let Expr::Select(select) = &expr.expr else {
        return None;
    };
    if select.test || select.field != "label" {
        return None;
    }
    match variable_select(&select.operand) {
        Some(("scores", model)) => Some(model),
        _ => None,
    }
}

/// Resolves `scores.m.label`: a classifier with class labels.
fn resolve_label(
    catalog: &Catalog,
    expr: &IdedExpr,
    model: &str,
) -> Result<(Var, Type), CheckError> {
    match catalog.models.get(model) {
        Some(Task::BinaryClassification | Task::MulticlassClassification) => {
            Ok((Var::Label(model.to_owned()), Type::String))
        }
        Some(task) => Err(CheckError {
            message: format!(
                "`scores.{model}.label`: model `{model}` is a {task:?} model, which has no class labels"
            ),
            expr_id: expr.id,
        }),
        None => Err(CheckError {
            message: format!(
                "unknown model `{model}` in `scores.{model}.label` (serving: {})",
                join_keys(catalog.models.keys())
            ),
            expr_id: expr.id,
        }),
    }
}

fn both_score_and_label(expr: &IdedExpr, model: &str) -> CheckError {
    CheckError {
        message: format!(
            "a rule the interpreter runs (macros, methods) cannot read both `scores.{model}` and `scores.{model}.label`"
        ),
        expr_id: expr.id,
    }
}

/// `features.x`, `scores.m`, `versions.m`: the root and the field, if `expr`
/// is such a selection.
fn variable_select(expr: &IdedExpr) -> Option<(&str, &str)> {
    let Expr::Select(select) = &expr.expr else {
        return None;
    };
    if select.test {
        return None;
    }
    match &select.operand.expr {
        Expr::Ident(root) if matches!(root.as_str(), "features" | "scores" | "versions") => {
            Some((root.as_str(), select.field.as_str()))
        }
        _ => None,
    }
}

/// Resolves `root.field` against the catalog.
fn resolve_var(
    catalog: &Catalog,
    expr: &IdedExpr,
    root: &str,
    field: &str,
) -> Result<(Var, Type), CheckError> {
    let fail = |message: String| CheckError {
        message,
        expr_id: expr.id,
    };
    match root {
        "features" => {
            let spec = catalog.features.get(field).ok_or_else(|| {
                fail(format!(
                    "unknown feature `{field}` in `features.{field}` (known: {})",
                    join_keys(catalog.features.keys())
                ))
            })?;
            Ok((
                Var::Feature(field.to_owned()),
                super::feature_type(spec.dtype),
            ))
        }
        "scores" | "versions" => {
            let task = catalog.models.get(field).ok_or_else(|| {
                fail(format!(
                    "unknown model `{field}` in `{root}.{field}` (serving: {})",
                    join_keys(catalog.models.keys())
                ))
            })?;
            if root == "versions" {
                Ok((Var::Version(field.to_owned()), Type::Int))
            } else {
                Ok((Var::Score(field.to_owned()), super::score_type(*task)))
            }
        }
        _ => Err(fail(format!("`{root}` has no field `{field}`"))),
    }
}

fn join_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = keys.map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn literal(lit: &LiteralValue) -> Option<Lit> {
    Some(match lit {
        LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
        LiteralValue::Int(i) => Lit::Int(*i.inner()),
        LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
        LiteralValue::Double(d) => Lit::Double(*d.inner()),
        LiteralValue::String(s) => Lit::Str(s.inner().to_owned()),
        LiteralValue::Bytes(_) | LiteralValue::Null => return None,
    })
}

impl Compiler<'_> {
    fn slot(&mut self, var: Var) -> usize {
        match self.vars.iter().position(|v| *v == var) {
            Some(i) => i,
            None => {
                self.vars.push(var);
                self.vars.len() - 1
            }
        }
    }

    fn compile(&mut self, expr: &IdedExpr) -> Result<(Node, Type), Fail> {
        match &expr.expr {
            Expr::Literal(lit) => {
                let lit = literal(lit)
                    .ok_or_else(|| Fail::Unsupported("a bytes or null literal".into()))?;
                let ty = lit.ty();
                Ok((Node::Lit(lit), ty))
            }
            Expr::Ident(name) => match name.as_str() {
                "features" | "scores" | "versions" => Err(invalid(
                    expr,
                    format!("`{name}` must be followed by a name, as in `{name}.<name>`"),
                )),
                _ => {
                    let constant = self.constants.get(name).ok_or_else(|| {
                        invalid(
                            expr,
                            format!(
                                "unknown identifier `{name}`: use features.<name>, scores.<model>, versions.<model> or a name from [constants] ({})",
                                join_keys(self.constants.keys())
                            ),
                        )
                    })?;
                    let lit = constant.0.clone();
                    let ty = lit.ty();
                    Ok((Node::Lit(lit), ty))
                }
            },
            Expr::Select(select) => {
                if let Some(model) = label_select(expr) {
                    let (var, ty) =
                        resolve_label(self.catalog, expr, model).map_err(Fail::Invalid)?;
                    return Ok((Node::Slot(self.slot(var)), ty));
                }
                let Some((root, field)) = variable_select(expr) else {
                    if select.test {
                        return Err(Fail::Unsupported("has()".into()));
                    }
                    return Err(invalid(
                        expr,
                        format!(
                            "field `{}` of something other than features, scores or versions",
                            select.field
                        ),
                    ));
                };
                let (var, ty) =
                    resolve_var(self.catalog, expr, root, field).map_err(Fail::Invalid)?;
                Ok((Node::Slot(self.slot(var)), ty))
            }
            Expr::Call(call) => self.call(expr, call),
            Expr::List(_) => Err(Fail::Unsupported("a list outside `in`".into())),
            Expr::Map(_) => Err(Fail::Unsupported("a map literal".into())),
            Expr::Struct(_) => Err(Fail::Unsupported("a message literal".into())),
            Expr::Comprehension(_) => {
                Err(Fail::Unsupported("a macro (all/exists/map/filter)".into()))
            }
            Expr::Unspecified => Err(invalid(expr, "an empty expression".into())),
        }
    }

    fn call(
        &mut self,
        expr: &IdedExpr,
        call: &cel::common::ast::CallExpr,
    ) -> Result<(Node, Type), Fail> {
        let name = call.func_name.as_str();
        if call.target.is_some() {
            return Err(Fail::Unsupported(format!("method `{name}`")));
        }
        let args = &call.args;
        match (name, args.len()) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, 2) => {
                let (l, lt) = self.compile(&args[0])?;
                let (r, rt) = self.compile(&args[1])?;
                for (t, a) in [(lt, &args[0]), (rt, &args[1])] {
                    if t != Type::Bool {
                        return Err(invalid(
                            a,
                            format!(
                                "operand of `{}` is {}, not bool",
                                if name == operators::LOGICAL_AND {
                                    "&&"
                                } else {
                                    "||"
                                },
                                t.name()
                            ),
                        ));
                    }
                }
                let node = if name == operators::LOGICAL_AND {
                    Node::And(Box::new(l), Box::new(r))
                } else {
                    Node::Or(Box::new(l), Box::new(r))
                };
                Ok((node, Type::Bool))
            }
            (operators::LOGICAL_NOT, 1) => {
                let (a, t) = self.compile(&args[0])?;
                if t != Type::Bool {
                    return Err(invalid(
                        &args[0],
                        format!("operand of `!` is {}, not bool", t.name()),
                    ));
                }
                Ok((Node::Not(Box::new(a)), Type::Bool))
            }
            (operators::NEGATE, 1) => {
                let (a, t) = self.compile(&args[0])?;
                if !matches!(t, Type::Int | Type::Double) {
                    return Err(invalid(&args[0], format!("unary `-` of {}", t.name())));
                }
                Ok((Node::Neg(Box::new(a)), t))
            }
            (
                operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS,
                2,
            ) => {
                let op = match name {
                    operators::EQUALS => CmpOp::Eq,
                    operators::NOT_EQUALS => CmpOp::Ne,
                    operators::LESS => CmpOp::Lt,
                    operators::LESS_EQUALS => CmpOp::Le,
                    operators::GREATER => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                let (l, lt) = self.compile(&args[0])?;
                let (r, rt) = self.compile(&args[1])?;
                // CEL compares numbers across int, uint and double.
                if lt != rt && !(lt.numeric() && rt.numeric()) {
                    return Err(invalid(
                        expr,
                        format!("cannot compare {} with {}", lt.name(), rt.name()),
                    ));
                }
                Ok((Node::Cmp(op, Box::new(l), Box::new(r)), Type::Bool))
            }
            (
                operators::ADD
                | operators::SUBSTRACT
                | operators::MULTIPLY
                | operators::DIVIDE
                | operators::MODULO,
                2,
            ) => {
                let op = match name {
                    operators::ADD => ArithOp::Add,
                    operators::SUBSTRACT => ArithOp::Sub,
                    operators::MULTIPLY => ArithOp::Mul,
                    operators::DIVIDE => ArithOp::Div,
                    _ => ArithOp::Rem,
                };
                let (l, lt) = self.compile(&args[0])?;
                let (r, rt) = self.compile(&args[1])?;
                if lt == Type::String && rt == Type::String && op == ArithOp::Add {
                    return Err(Fail::Unsupported("string concatenation".into()));
                }
                if lt != rt || !lt.numeric() {
                    return Err(invalid(
                        expr,
                        format!(
                            "arithmetic on {} and {}: both sides must be the same numeric type (convert with double(...) or int(...))",
                            lt.name(),
                            rt.name()
                        ),
                    ));
                }
                if op == ArithOp::Rem && lt == Type::Double {
                    return Err(invalid(expr, "`%` is not defined on double".into()));
                }
                Ok((Node::Arith(op, Box::new(l), Box::new(r)), lt))
            }
            (operators::CONDITIONAL, 3) => {
                let (c, ct) = self.compile(&args[0])?;
                if ct != Type::Bool {
                    return Err(invalid(
                        &args[0],
                        format!("condition of `?:` is {}, not bool", ct.name()),
                    ));
                }
                let (a, at) = self.compile(&args[1])?;
                let (b, bt) = self.compile(&args[2])?;
                if at != bt {
                    return Err(invalid(
                        expr,
                        format!("the branches of `?:` are {} and {}", at.name(), bt.name()),
                    ));
                }
                Ok((Node::Cond(Box::new(c), Box::new(a), Box::new(b)), at))
            }
            (operators::IN, 2) => {
                let (value, vt) = self.compile(&args[0])?;
                let Expr::List(list) = &args[1].expr else {
                    return Err(Fail::Unsupported(
                        "`in` over something other than a list literal".into(),
                    ));
                };
                let mut items = Vec::with_capacity(list.elements.len());
                for element in &list.elements {
                    let item = match &element.expr {
                        Expr::Literal(lit) => literal(lit),
                        Expr::Ident(name) => self.constants.get(name).map(|c| c.0.clone()),
                        _ => None,
                    }
                    .ok_or_else(|| Fail::Unsupported("`in` a list of non-literals".into()))?;
                    if item.ty() != vt && !(item.ty().numeric() && vt.numeric()) {
                        return Err(invalid(
                            element,
                            format!(
                                "list element is {} but the value tested is {}",
                                item.ty().name(),
                                vt.name()
                            ),
                        ));
                    }
                    items.push(item);
                }
                Ok((Node::In(Box::new(value), items), Type::Bool))
            }
            ("double", 1) => {
                let (a, t) = self.compile(&args[0])?;
                match t {
                    Type::Double => Ok((a, t)),
                    Type::Int | Type::UInt => Ok((Node::ToDouble(Box::new(a)), Type::Double)),
                    _ => Err(Fail::Unsupported(format!("double() of {}", t.name()))),
                }
            }
            ("int", 1) => {
                let (a, t) = self.compile(&args[0])?;
                match t {
                    Type::Int => Ok((a, t)),
                    Type::Double => Ok((Node::ToInt(Box::new(a)), Type::Int)),
                    _ => Err(Fail::Unsupported(format!("int() of {}", t.name()))),
                }
            }
            _ => Err(Fail::Unsupported(format!("function `{name}`"))),
        }
    }
}

/// The reference check for interpreted rules: every `features.x`,
/// `scores.m`, `versions.m` must exist, and every other identifier must be a
/// constant or a macro's variable.
struct References<'a> {
    catalog: &'a Catalog,
    constants: &'a BTreeMap<String, Constant>,
    vars: BTreeSet<Var>,
    /// Variables macros bind (`x` in `list.exists(x, ...)`).
    bound: BTreeSet<String>,
    /// `Var::Score(m)` for every `scores.m.label` read (see `walk`).
    labels: BTreeSet<Var>,
}

impl References<'_> {
    fn collect_bound(&mut self, expr: &IdedExpr) {
        self.visit(expr, &mut |r, e| {
            if let Expr::Comprehension(c) = &e.expr {
                r.bound.insert(c.iter_var.clone());
                r.bound.insert(c.accu_var.clone());
                if let Some(v) = &c.iter_var2 {
                    r.bound.insert(v.clone());
                }
            }
            Ok(true)
        })
        .ok();
    }

    fn walk(&mut self, expr: &IdedExpr) -> Result<(), CheckError> {
        self.visit(expr, &mut |r, e| {
            if let Some(model) = label_select(e) {
                let (var, _) = resolve_label(r.catalog, e, model)?;
                // The interpreter binds `scores.m` to one value: a double or
                // a map holding the label, not both.
                let score = Var::Score(model.to_owned());
                if r.vars.contains(&score) {
                    return Err(both_score_and_label(e, model));
                }
                r.labels.insert(score);
                r.vars.insert(var);
                return Ok(false);
            }
            if let Some((root, field)) = variable_select(e) {
                let (var, _) = resolve_var(r.catalog, e, root, field)?;
                if r.labels.contains(&var) {
                    return Err(both_score_and_label(e, field));
                }
                r.vars.insert(var);
                return Ok(false);
            }
            if let Expr::Ident(name) = &e.expr {
                let known = r.constants.contains_key(name) || r.bound.contains(name);
                if !known {
                    return Err(CheckError {
                        message: format!(
                            "unknown identifier `{name}`: use features.<name>, scores.<model>, versions.<model> or a name from [constants]"
                        ),
                        expr_id: e.id,
                    });
                }
            }
            Ok(true)
        })
    }

    /// Pre-order walk; `f` returns whether to descend.
    fn visit(
        &mut self,
        expr: &IdedExpr,
        f: &mut dyn FnMut(&mut Self, &IdedExpr) -> Result<bool, CheckError>,
    ) -> Result<(), CheckError> {
        if !f(self, expr)? {
            return Ok(());
        }
        match &expr.expr {
            Expr::Call(call) => {
                if let Some(t) = &call.target {
                    self.visit(t, f)?;
                }
                for a in &call.args {
                    self.visit(a, f)?;
                }
            }
            Expr::Comprehension(c) => {
                for e in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    self.visit(e, f)?;
                }
            }
            Expr::List(l) => {
                for e in &l.elements {
                    self.visit(e, f)?;
                }
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        self.visit(&me.key, f)?;
                        self.visit(&me.value, f)?;
                    }
                }
            }
            Expr::Select(s) => self.visit(&s.operand, f)?,
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let cel::common::ast::EntryExpr::StructField(sf) = &entry.expr {
                        self.visit(&sf.value, f)?;
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
        Ok(())
    }
}
