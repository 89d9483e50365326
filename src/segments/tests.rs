//! Unit tests: the type checker's refusals, evaluation semantics, and the
//! compiled evaluator against the cel interpreter on random rows.

use std::collections::HashMap;

use super::*;
use crate::features::{Column, ColumnValues, ImputeValue, MissingPolicy};

fn spec(name: &str, dtype: DType, missing: MissingPolicy) -> FeatureSpec {
    FeatureSpec {
        name: name.into(),
        description: None,
        dtype,
        min: if dtype == DType::Bool || dtype == DType::Category {
            None
        } else {
            Some(0.0)
        },
        max: if dtype == DType::Bool || dtype == DType::Category {
            None
        } else {
            Some(1000.0)
        },
        categories: if dtype == DType::Category {
            vec!["north".into(), "south".into(), "unknown".into()]
        } else {
            vec![]
        },
        missing,
    }
}

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    for s in [
        spec(
            "amount",
            DType::F32,
            MissingPolicy::Impute(ImputeValue::Number(5.0)),
        ),
        spec("visits", DType::I64, MissingPolicy::Reject),
        spec(
            "count",
            DType::I64,
            MissingPolicy::Impute(ImputeValue::Number(0.0)),
        ),
        spec(
            "flag",
            DType::Bool,
            MissingPolicy::Impute(ImputeValue::Bool(false)),
        ),
        spec(
            "region",
            DType::Category,
            MissingPolicy::Impute(ImputeValue::Text("unknown".into())),
        ),
    ] {
        c.features.insert(s.name.clone(), s);
    }
    c.models.insert("ltv".into(), Task::Regression);
    c.models.insert("churn".into(), Task::BinaryClassification);
    // A clustering model: `scores.clusters` is its cluster id, an int.
    c.models.insert("clusters".into(), Task::Clustering);
    // An imported multiclass model: `scores.offer.label` is its class.
    c.models
        .insert("offer".into(), Task::MulticlassClassification);
    c
}

fn compile_one(rule: &str) -> Result<CompiledRule, String> {
    let file = RulesFile::parse(&format!(
        "[constants]\nT = 10.0\nN = 2\nR = \"north\"\n[[segments]]\nname = \"s\"\nrule = '''{rule}'''\n"
    ))
    .unwrap();
    let mut segments = Segments::compile(&file, &catalog(), None);
    segments.segments.remove(0).state
}

#[test]
fn type_checker_refuses_with_a_pointer() {
    let cases = [
        ("features.nope > 1.0", "unknown feature `nope`"),
        ("scores.gone > 1.0", "unknown model `gone`"),
        ("features.amount + 1.0", "evaluates to double"),
        ("features.amount > ", "syntax error"),
        (
            "features.amount > 1.0 && features.region",
            "operand of `&&` is string",
        ),
        ("features.region > 3", "cannot compare string with int"),
        (
            "features.amount + features.visits > 3.0",
            "arithmetic on double and int",
        ),
        ("nothing > 3", "unknown identifier `nothing`"),
        ("scores > 3", "`scores` must be followed by a name"),
        ("size(features.nope) > 1", "unknown feature `nope`"),
    ];
    for (rule, expected) in cases {
        let err = compile_one(rule)
            .err()
            .unwrap_or_else(|| panic!("{rule} compiled"));
        assert!(err.contains(expected), "{rule}: {err}");
    }
    let err = compile_one("features.amount > 1.0 && features.nope")
        .err()
        .unwrap();
    assert!(
        err.contains("`features.nope`"),
        "points at the expression: {err}"
    );
}

#[test]
fn types_and_models_are_derived_from_the_rule() {
    let rule = compile_one("scores.clusters == 3 && versions.ltv >= 1 && features.flag").unwrap();
    assert!(rule.is_compiled());
    assert_eq!(rule.models(), ["clusters", "ltv"]);
    // A cluster id is an int: comparing it with a string is refused.
    assert!(compile_one("scores.clusters == 'a'").is_err());
    let rule =
        compile_one("features.region in [R, 'south'] || double(features.count) > T").unwrap();
    assert!(rule.is_compiled());
    assert!(rule.models().is_empty());
    // Outside the compiled subset: interpreted, references still checked.
    let rule = compile_one("[1, 2].exists(x, x == features.visits)").unwrap();
    assert!(!rule.is_compiled());
}

#[test]
fn bad_constants_and_duplicate_names_are_reported_per_segment() {
    let file = RulesFile::parse(
        "[[segments]]\nname = \"a\"\nrule = \"features.flag\"\n[[segments]]\nname = \"a\"\nrule = \"true\"\n[[segments]]\nname = \"b\"\nrule = \"features.nope\"\n",
    )
    .unwrap();
    let s = Segments::compile(&file, &catalog(), None);
    assert!(s.get("a").unwrap().state.is_ok());
    assert!(s.segments()[1]
        .state
        .as_ref()
        .err()
        .unwrap()
        .contains("twice"));
    assert!(s.get("b").unwrap().state.is_err());
    let bad =
        RulesFile::parse("[constants]\nscores = 1\n[[segments]]\nname = \"a\"\nrule = \"true\"\n")
            .unwrap();
    let s = Segments::compile(&bad, &catalog(), None);
    assert!(s
        .get("a")
        .unwrap()
        .state
        .as_ref()
        .err()
        .unwrap()
        .contains("reserved"));
}

/// The rules that took cel 0.15's parser down (it panicked formatting a
/// syntax error past character 65,535).
fn parser_crashers() -> [String; 2] {
    [
        format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!(
            "{} &&& )",
            vec!["features.amount > 1.0"; 3_500].join(" || ")
        ),
    ]
}

#[test]
fn rules_that_crashed_the_parser_are_refused_unparsed() {
    for rule in parser_crashers() {
        let err = compile_one(&rule).err().expect("refused");
        assert!(err.contains("over the limit of 4096"), "{err}");
    }
    let deep = format!("{}features.flag{}", "(".repeat(33), ")".repeat(33));
    assert!(compile_one(&deep)
        .err()
        .unwrap()
        .contains("more than 32 deep"));
    let ok = format!("{}features.flag{}", "(".repeat(32), ")".repeat(32));
    compile_one(&ok).unwrap();
}

#[test]
fn a_parser_panic_past_the_limits_refuses_the_rule() {
    // The net under the limits, on the real panic: the parser as it is,
    // given what the limits would have stopped.
    let constants = BTreeMap::new();
    for rule in parser_crashers() {
        let err = limits::contain(|| compile_checked(&rule, &catalog(), &constants))
            .err()
            .expect("refused");
        assert!(
            err.contains("panicked: Formatting argument out of range"),
            "{err}"
        );
    }
}

#[test]
fn a_refused_edit_keeps_the_previous_rule_until_a_good_one() {
    let file = |rule: &str| {
        RulesFile::parse(&format!(
            "[[segments]]\nname = \"s\"\ndescription = \"d\"\nrule = '''{rule}'''\n"
        ))
        .unwrap()
    };
    let catalog = catalog();
    let [crasher, _] = parser_crashers();
    let first = Segments::compile(&file("features.amount > 1.0"), &catalog, None);
    let second = Segments::compile_over(&file(&crasher), &catalog, None, Some(&first));
    let s = second.get("s").unwrap();
    assert!(s.state.is_ok());
    assert_eq!(s.rule, "features.amount > 1.0");
    assert!(
        s.reason()
            .starts_with("edit refused, the previous rule keeps serving: ")
            && s.reason().contains("4096"),
        "{}",
        s.reason()
    );
    // Still the file's text on the next reload: still the previous rule.
    let third = Segments::compile_over(&file(&crasher), &catalog, None, Some(&second));
    assert_eq!(third.get("s").unwrap().rule, "features.amount > 1.0");
    // A good edit replaces it and clears the reason.
    let fourth =
        Segments::compile_over(&file("features.amount > 2.0"), &catalog, None, Some(&third));
    let s = fourth.get("s").unwrap();
    assert_eq!(
        (s.rule.as_str(), s.reason()),
        ("features.amount > 2.0", String::new())
    );
    // Without a previous rule (start-up) the edit is simply refused.
    assert!(Segments::compile(&file(&crasher), &catalog, None)
        .get("s")
        .unwrap()
        .state
        .is_err());

    // A rule refused because its model left is refused whatever came
    // before: the previous rule reads the same model.
    let mut without_ltv = catalog.clone();
    without_ltv.models.remove("ltv");
    let with_ltv = Segments::compile(&file("scores.ltv > 1.0"), &catalog, None);
    for rule in ["scores.ltv > 1.0", "scores.ltv >"] {
        let after = Segments::compile_over(&file(rule), &without_ltv, None, Some(&with_ltv));
        let reason = after.get("s").unwrap().reason();
        assert!(after.get("s").unwrap().state.is_err(), "{rule}: {reason}");
    }
}

/// A batch with the catalog's features, random values and missing cells.
fn random_input(rows: usize, seed: u64) -> (FeatureBatch, Vec<f32>, Vec<f32>, Vec<u32>) {
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut amount = Vec::new();
    let mut visits = Vec::new();
    let mut count = Vec::new();
    let mut flag = Vec::new();
    let mut region = Vec::new();
    let (mut m_amount, mut m_visits, mut m_flag, mut m_region) = (vec![], vec![], vec![], vec![]);
    let mut ltv = Vec::new();
    let mut churn = Vec::new();
    let mut clusters = Vec::new();
    for r in 0..rows as u32 {
        // Values on and around the thresholds the rules below use.
        amount.push([0.0, 5.0, 9.5, 10.0, 10.5, 999.0][(next() % 6) as usize]);
        visits.push((next() % 5) as i64);
        count.push((next() % 4) as i64);
        flag.push(next() % 2 == 0);
        region.push(["north", "south", "unknown"][(next() % 3) as usize].to_string());
        ltv.push([0.0f32, 499.9, 500.0, 500.1, 2000.0][(next() % 5) as usize]);
        churn.push((next() % 101) as f32 / 100.0);
        clusters.push((next() % 5) as u32);
        for (mask, p) in [
            (&mut m_amount, 7),
            (&mut m_visits, 11),
            (&mut m_flag, 5),
            (&mut m_region, 9),
        ] {
            if next() % p == 0 {
                mask.push(r);
            }
        }
    }
    let batch = FeatureBatch::new(
        0,
        vec![
            (
                "amount".into(),
                Column::new(ColumnValues::F32(amount))
                    .with_missing_rows(&m_amount)
                    .unwrap(),
            ),
            (
                "visits".into(),
                Column::new(ColumnValues::I64(visits))
                    .with_missing_rows(&m_visits)
                    .unwrap(),
            ),
            (
                "count".into(),
                Column::new(ColumnValues::F64(
                    count.into_iter().map(|c| c as f64).collect(),
                )),
            ),
            (
                "flag".into(),
                Column::new(ColumnValues::Bool(flag))
                    .with_missing_rows(&m_flag)
                    .unwrap(),
            ),
            (
                "region".into(),
                Column::new(ColumnValues::Category(region))
                    .with_missing_rows(&m_region)
                    .unwrap(),
            ),
        ],
    )
    .unwrap();
    (batch, ltv, churn, clusters)
}

#[test]
fn compiled_evaluator_matches_the_interpreter_on_random_rows() {
    let rules = [
        "scores.ltv >= 500.0 && features.flag && features.visits >= N",
        "(features.amount >= T && features.count < 2) || (scores.churn > 0.5 && features.region == R)",
        "!(features.region in ['south', 'unknown']) && scores.clusters != 3",
        "features.visits > 0 ? scores.ltv / double(features.visits) > 100.0 : false",
        "100 / (features.count - 1) > 40 || features.flag",
        "features.count % 3 == 1 && -features.amount < -9.0 && int(features.amount) == 10",
        "versions.ltv == 7 && (scores.churn * 2.0 >= 1.0 || features.amount <= 5.0)",
        "features.visits * 1000 + features.count > 2001 && features.region < 'south'",
        "features.amount == 10 || scores.clusters == 2.0 || features.visits in [1, 4]",
    ];
    let file = RulesFile {
        constants: toml::from_str("T = 10.0\nN = 2\nR = \"north\"\n").unwrap(),
        segments: rules
            .iter()
            .enumerate()
            .map(|(i, r)| SegmentDef {
                name: format!("s{i}"),
                description: String::new(),
                rule: (*r).into(),
            })
            .collect(),
    };
    let segments = Segments::compile(&file, &catalog(), None);
    let (batch, ltv, churn, clusters) = random_input(4000, 0x5eed);
    let canary_rows: Vec<u32> = (0..4000).filter(|r| r % 3 == 0).collect();
    let scores = HashMap::from([
        (
            "ltv",
            ModelScoresView {
                task: Task::Regression,
                scores: &ltv,
                cluster_ids: &[],
                labels: &[],
                version: 7,
                canary_version: 8,
                canary_rows: &canary_rows,
            },
        ),
        (
            "churn",
            ModelScoresView {
                task: Task::BinaryClassification,
                scores: &churn,
                cluster_ids: &[],
                labels: &[],
                version: 1,
                canary_version: 0,
                canary_rows: &[],
            },
        ),
        (
            "clusters",
            ModelScoresView {
                task: Task::Clustering,
                scores: &churn,
                cluster_ids: &clusters,
                labels: &[],
                version: 1,
                canary_version: 0,
                canary_rows: &[],
            },
        ),
    ]);
    let input = RuleInput {
        batch: &batch,
        scores,
    };
    let mut evaluation = segments.evaluator(&input);
    for segment in segments.segments() {
        let rule = segment
            .state
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", segment.rule));
        assert!(rule.is_compiled(), "{}", segment.rule);
        let fast = evaluation.evaluate(rule);
        let reference = evaluation.evaluate_interpreted(rule);
        assert_eq!(fast.member_rows, reference.member_rows, "{}", segment.rule);
        let rows = |m: &Membership| m.errors.iter().map(|(r, _)| *r).collect::<Vec<_>>();
        assert_eq!(rows(&fast), rows(&reference), "{}", segment.rule);
        assert!(
            !fast.member_rows.is_empty(),
            "{} selects someone",
            segment.rule
        );
        assert!(
            fast.member_rows.len() < 4000,
            "{} excludes someone",
            segment.rule
        );
    }
}

#[test]
fn missing_values_follow_the_manifest_and_errors_are_never_false() {
    let file = RulesFile::parse(
        "[[segments]]\nname = \"a\"\nrule = \"features.visits >= 2\"\n[[segments]]\nname = \"b\"\nrule = \"features.amount == 5.0 && features.region == 'unknown'\"\n[[segments]]\nname = \"c\"\nrule = \"10 / features.count == 10\"\n",
    )
    .unwrap();
    let segments = Segments::compile(&file, &catalog(), None);
    let batch = FeatureBatch::new(
        0,
        vec![
            (
                "visits".into(),
                Column::new(ColumnValues::I64(vec![3, 3, 1]))
                    .with_missing_rows(&[1])
                    .unwrap(),
            ),
            (
                "amount".into(),
                Column::new(ColumnValues::F64(vec![f64::NAN, 5.0, 7.0])),
            ),
            (
                "count".into(),
                Column::new(ColumnValues::F32(vec![1.0, 0.0, 1.5])),
            ),
        ],
    )
    .unwrap();
    let input = RuleInput {
        batch: &batch,
        scores: HashMap::new(),
    };
    let mut evaluation = segments.evaluator(&input);
    let rule = |name: &str| segments.get(name).unwrap().state.as_ref().unwrap();
    let a = evaluation.evaluate(rule("a"));
    assert_eq!(a.member_rows, [0]);
    assert_eq!(a.errors.len(), 1);
    assert_eq!(a.errors[0].0, 1);
    assert!(a.errors[0].1.contains("rejects missing"), "{:?}", a.errors);
    // NaN is missing: imputed 5.0; no region column: imputed "unknown".
    assert_eq!(evaluation.evaluate(rule("b")).member_rows, [0, 1]);
    let c = evaluation.evaluate(rule("c"));
    assert_eq!(c.member_rows, [0]);
    let reasons: Vec<(u32, bool)> = c
        .errors
        .iter()
        .map(|(r, m)| {
            (
                *r,
                m.contains("division by zero") || m.contains("not an integer"),
            )
        })
        .collect();
    assert_eq!(reasons, [(1, true), (2, true)]);
}

#[test]
fn interpreted_rules_run_and_their_errors_quote_no_values() {
    let file = RulesFile::parse(
        "[[segments]]\nname = \"a\"\nrule = \"features.region.startsWith('no') && [1, 3].exists(x, x == features.visits)\"\n[[segments]]\nname = \"b\"\nrule = \"[1].exists(x, 7 / (features.visits - 3) < 0)\"\n",
    )
    .unwrap();
    let segments = Segments::compile(&file, &catalog(), None);
    let batch = FeatureBatch::new(
        0,
        vec![
            (
                "visits".into(),
                Column::new(ColumnValues::I64(vec![3, 1, 3, 2])),
            ),
            (
                "region".into(),
                Column::new(ColumnValues::Category(vec![
                    "north".into(),
                    "north".into(),
                    "south".into(),
                    "north".into(),
                ])),
            ),
        ],
    )
    .unwrap();
    let input = RuleInput {
        batch: &batch,
        scores: HashMap::new(),
    };
    let mut evaluation = segments.evaluator(&input);
    let a = segments.get("a").unwrap().state.as_ref().unwrap();
    assert!(!a.is_compiled());
    assert_eq!(evaluation.evaluate(a).member_rows, [0, 1]);
    let b = evaluation.evaluate(segments.get("b").unwrap().state.as_ref().unwrap());
    assert_eq!(b.member_rows, [1, 3]);
    let errors: Vec<u32> = b.errors.iter().map(|(r, _)| *r).collect();
    assert_eq!(errors, [0, 2]);
    assert_eq!(b.errors[0].1, "division by zero");
}

#[test]
fn a_classifier_s_label_feeds_rules_compiled_and_interpreted_alike() {
    for (rule, expected) in [
        ("scores.ltv.label == \"x\"", "has no class labels"),
        ("scores.offer.label > 1", "cannot compare string with int"),
        ("scores.gone.label == \"x\"", "unknown model `gone`"),
    ] {
        let err = compile_one(rule)
            .err()
            .unwrap_or_else(|| panic!("{rule} compiled"));
        assert!(err.contains(expected), "{rule}: {err}");
    }
    let (batch, _, churn, _) = random_input(300, 0x0ffe);
    let classes = ["basic", "plus", "premium"];
    let labels: Vec<String> = (0..300).map(|r| classes[r * 7 % 3].to_string()).collect();
    let input = RuleInput {
        batch: &batch,
        scores: HashMap::from([
            (
                "offer",
                ModelScoresView {
                    task: Task::MulticlassClassification,
                    scores: &churn,
                    cluster_ids: &[],
                    labels: &labels,
                    version: 1,
                    canary_version: 0,
                    canary_rows: &[],
                },
            ),
            (
                "churn",
                ModelScoresView {
                    task: Task::BinaryClassification,
                    scores: &churn,
                    cluster_ids: &[],
                    labels: &[],
                    version: 1,
                    canary_version: 0,
                    canary_rows: &[],
                },
            ),
        ]),
    };
    let premium: Vec<u32> = (0..300u32)
        .filter(|r| labels[*r as usize] == "premium")
        .collect();
    let high_churn_premium: Vec<u32> = premium
        .iter()
        .copied()
        .filter(|r| churn[*r as usize] > 0.5)
        .collect();
    for (rule, members) in [
        ("scores.offer.label == \"premium\"", &premium),
        (
            "scores.offer.label == \"premium\" && scores.churn > 0.5",
            &high_churn_premium,
        ),
        // A macro: the interpreter alone runs it.
        ("[\"premium\"].exists(x, x == scores.offer.label)", &premium),
    ] {
        let compiled = compile_one(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let file = RulesFile::parse("[[segments]]\nname = \"s\"\nrule = 'true'\n").unwrap();
        let segments = Segments::compile(&file, &catalog(), None);
        let mut evaluation = segments.evaluator(&input);
        let got = evaluation.evaluate(&compiled);
        assert_eq!(&got.member_rows, members, "{rule}");
        assert!(got.errors.is_empty(), "{rule}: {:?}", got.errors);
        let interpreted = evaluation.evaluate_interpreted(&compiled);
        assert_eq!(&interpreted.member_rows, members, "{rule} (interpreted)");
    }
    // The interpreter binds `scores.offer` to one value: a rule it runs
    // cannot read both the score and the label.
    let err =
        compile_one("[1].exists(x, x == 1) && scores.offer.label == \"a\" && scores.offer > 0.5");
    assert!(
        err.err().unwrap().contains("cannot read both"),
        "the interpreter binds one value per model"
    );
}
