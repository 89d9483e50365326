//! Property tests of the request-decoding and feature-mapping code
//! (proptest): arbitrary segscore.v1 feature matrices never panic and encode
//! only finite values; valid batches survive a round trip through protobuf
//! and encode identically.

use proptest::{collection::vec, prelude::*};
use segscore::{
    features::{FeatureBatch, FeatureSchema},
    proto::pb::{self, feature_column::Values},
};

use crate::helpers::manifest;

fn schema() -> FeatureSchema {
    FeatureSchema::new(manifest("ltv", 1).features).unwrap()
}

fn values(rows: usize) -> impl Strategy<Value = Values> {
    prop_oneof![
        vec(any::<f32>(), rows..=rows).prop_map(|values| Values::F32(pb::FloatValues { values })),
        vec(any::<f64>(), rows..=rows).prop_map(|values| Values::F64(pb::DoubleValues { values })),
        vec(any::<i64>(), rows..=rows).prop_map(|values| Values::I64(pb::Int64Values { values })),
        vec(any::<bool>(), rows..=rows).prop_map(|values| Values::Bool(pb::BoolValues { values })),
        vec(
            prop_oneof![
                Just("europe".to_string()),
                Just("north_america".to_string()),
                ".{0,8}"
            ],
            rows..=rows
        )
        .prop_map(|values| Values::Category(pb::StringValues { values })),
    ]
}

/// Columns named after real features (or not), of the declared length or
/// off by a little, with arbitrary missing-row indices.
fn matrix() -> impl Strategy<Value = pb::FeatureMatrix> {
    let names: Vec<String> = schema().specs().map(|s| s.name.clone()).collect();
    (0usize..20).prop_flat_map(move |rows| {
        let name = prop_oneof![proptest::sample::select(names.clone()), ".{0,6}"];
        let column = (
            name,
            0usize..3,
            proptest::option::of(Just(())),
            vec(0u32..25, 0..4),
        )
            .prop_flat_map(move |(name, skew, _, missing)| {
                let len = if skew == 2 { rows + 1 } else { rows };
                values(len).prop_map(move |v| pb::FeatureColumn {
                    name: name.clone(),
                    values: Some(v),
                    missing_rows: missing.clone(),
                })
            });
        (vec(column, 0..14), prop_oneof![Just(0u32), 0u32..25]).prop_map(|(columns, declared)| {
            pb::FeatureMatrix {
                rows: declared,
                columns,
            }
        })
    })
}

/// A batch every feature of the schema accepts: in-range values of the right
/// type, some missing.
fn valid_matrix() -> impl Strategy<Value = pb::FeatureMatrix> {
    let specs: Vec<_> = schema().specs().cloned().collect();
    (1usize..30).prop_flat_map(move |rows| {
        let columns: Vec<_> = specs
            .iter()
            .map(|spec| {
                let name = spec.name.clone();
                let lo = spec.min.unwrap_or(-1e6).max(-1e6);
                let hi = spec.max.unwrap_or(1e6).min(1e6);
                let categories = spec.categories.clone();
                let imputes = !matches!(spec.missing, segscore::features::MissingPolicy::Reject);
                let values: BoxedStrategy<Values> = match spec.dtype {
                    segscore::features::DType::Bool => vec(any::<bool>(), rows..=rows)
                        .prop_map(|values| Values::Bool(pb::BoolValues { values }))
                        .boxed(),
                    segscore::features::DType::Category => {
                        vec(proptest::sample::select(categories), rows..=rows)
                            .prop_map(|values| Values::Category(pb::StringValues { values }))
                            .boxed()
                    }
                    segscore::features::DType::I64 => {
                        vec(lo.ceil() as i64..=hi.floor() as i64, rows..=rows)
                            .prop_map(|values| Values::I64(pb::Int64Values { values }))
                            .boxed()
                    }
                    _ => vec(lo..=hi, rows..=rows)
                        .prop_map(|values| Values::F64(pb::DoubleValues { values }))
                        .boxed(),
                };
                let missing = if imputes {
                    vec(0..rows as u32, 0..3).boxed()
                } else {
                    Just(Vec::new()).boxed()
                };
                (values, missing).prop_map(move |(v, missing_rows)| pb::FeatureColumn {
                    name: name.clone(),
                    values: Some(v),
                    missing_rows,
                })
            })
            .collect();
        columns.prop_map(|columns| pb::FeatureMatrix { rows: 0, columns })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_matrices_never_panic_and_encode_only_finite_values(m in matrix()) {
        let schema = schema();
        if let Ok(batch) = FeatureBatch::try_from(m) {
            if let Ok(encoded) = schema.encode(&batch, 0..batch.rows()) {
                prop_assert_eq!(encoded.dim(), (batch.rows(), schema.len()));
                prop_assert!(encoded.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn valid_batches_round_trip_through_protobuf(m in valid_matrix()) {
        let schema = schema();
        let batch = FeatureBatch::try_from(m).expect("a valid matrix parses");
        let encoded = schema.encode(&batch, 0..batch.rows()).expect("a valid batch encodes");
        let again = FeatureBatch::try_from(pb::FeatureMatrix::from(batch.clone())).unwrap();
        prop_assert_eq!(schema.encode(&again, 0..again.rows()).unwrap(), encoded.clone());
        // Encoding any row selection gives those rows of the full encoding.
        let rows: Vec<usize> = (0..batch.rows()).rev().step_by(2).collect();
        let picked = schema.encode_rows(&batch, rows.iter().copied()).unwrap();
        prop_assert_eq!(picked, encoded.select(ndarray::Axis(0), &rows));
    }
}
