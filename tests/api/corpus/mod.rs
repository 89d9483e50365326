//! Bad-input corpus (issue 10, item 6): a table of malformed requests over
//! segscore.v1 and the KServe V2 Open Inference Protocol, each with the exact
//! gRPC status it gets and a distinctive fragment of its message. No message
//! may echo a feature value or an entity id. After the corpus the server is
//! still up, still scores the golden sets, and nothing panicked. The attacks
//! on the files the server reads (model repository, rules file) are in
//! [`files`].

mod files;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use prost::Message;
use segscore::{
    proto::{
        oip::{
            self,
            grpc_inference_service_client::GrpcInferenceServiceClient,
            model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
            InferParameter, InferTensorContents,
        },
        pb::{self, feature_column::Values},
    },
    repository::scan,
};
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel, Code, Status};

use crate::helpers::*;

// ---------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------

fn churn() -> Vec<pb::ModelRef> {
    vec![model("churn", 0)]
}

fn f64_col(name: &str, values: Vec<f64>) -> pb::FeatureColumn {
    pb::FeatureColumn {
        name: name.into(),
        values: Some(Values::F64(pb::DoubleValues { values })),
        missing_rows: vec![],
    }
}

fn replace(mut cols: Vec<pb::FeatureColumn>, col: pb::FeatureColumn) -> Vec<pb::FeatureColumn> {
    let i = cols.iter().position(|c| c.name == col.name).unwrap();
    cols[i] = col;
    cols
}

fn without(cols: Vec<pb::FeatureColumn>, name: &str) -> Vec<pb::FeatureColumn> {
    cols.into_iter().filter(|c| c.name != name).collect()
}

/// Two valid rows for churn with one column swapped for `col`.
fn churn_with(col: pb::FeatureColumn) -> pb::ScoreRequest {
    request(matrix(replace(full_rows(2), col)), churn())
}

/// Two valid rows for churn without feature `name`.
fn churn_without(name: &str) -> pb::ScoreRequest {
    request(matrix(without(full_rows(2), name)), churn())
}

fn with_missing(col: pb::FeatureColumn, rows: Vec<u32>) -> pb::FeatureColumn {
    pb::FeatureColumn {
        missing_rows: rows,
        ..col
    }
}

/// One valid customer in manifest order (region 1 = europe), as in
/// `full_rows`.
const ROW: [f32; 12] = [
    12.0, 7.0, 400.0, 55.5, 388.5, 2.0, 3.0, 1.0, 2.0, 1.0, 42.0, 1.0,
];
const WIDTH: i64 = 12;

/// `rows` valid customers as a row-major FP32 `[rows, 12]` buffer.
fn oip_rows(rows: usize) -> Vec<f32> {
    ROW.iter().copied().cycle().take(rows * ROW.len()).collect()
}

/// Two rows with `row0[col] = value`.
fn oip_two_with(col: usize, value: f32) -> Vec<f32> {
    let mut v = oip_rows(2);
    v[col] = value;
    v
}

fn fp32_tensor(name: &str, values: Vec<f32>, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape,
        contents: Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn features_tensor(values: Vec<f32>, rows: i64) -> InferInputTensor {
    fp32_tensor("features", values, vec![rows, WIDTH])
}

fn typed(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    contents: InferTensorContents,
) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        contents: Some(contents),
        ..Default::default()
    }
}

fn no_contents(name: &str, datatype: &str, shape: Vec<i64>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        contents: None,
        ..Default::default()
    }
}

fn f32s(v: Vec<f32>) -> InferTensorContents {
    InferTensorContents {
        fp32_contents: v,
        ..Default::default()
    }
}

fn i64s(v: Vec<i64>) -> InferTensorContents {
    InferTensorContents {
        int64_contents: v,
        ..Default::default()
    }
}

fn bools(v: Vec<bool>) -> InferTensorContents {
    InferTensorContents {
        bool_contents: v,
        ..Default::default()
    }
}

fn byte_strings(v: Vec<&[u8]>) -> InferTensorContents {
    InferTensorContents {
        bytes_contents: v.into_iter().map(<[u8]>::to_vec).collect(),
        ..Default::default()
    }
}

/// The 12 features of two valid rows as per-feature tensors (the tabular
/// form of ModelInfer).
fn per_feature(rows: usize) -> Vec<InferInputTensor> {
    let r = rows as i64;
    let f = |name: &str, v: f32| typed(name, "FP32", vec![r], f32s(vec![v; rows]));
    let i = |name: &str, v: i64| typed(name, "INT64", vec![r], i64s(vec![v; rows]));
    vec![
        f("recency_days", 12.0),
        i("frequency", 7),
        f("tenure_days", 400.0),
        f("monetary_mean", 55.5),
        f("monetary_total", 388.5),
        i("purchases_90d", 2),
        i("sessions_7d", 3),
        i("cart_adds_7d", 1),
        i("checkout_visits_7d", 2),
        typed(
            "cart_abandoned_24h",
            "BOOL",
            vec![r],
            bools(vec![true; rows]),
        ),
        f("email_engagement", 42.0),
        typed(
            "region",
            "BYTES",
            vec![r],
            byte_strings(vec![b"europe".as_slice(); rows]),
        ),
    ]
}

fn per_feature_with(t: InferInputTensor) -> Vec<InferInputTensor> {
    let mut inputs = per_feature(2);
    let i = inputs.iter().position(|x| x.name == t.name).unwrap();
    inputs[i] = t;
    inputs
}

fn infer(model: &str, inputs: Vec<InferInputTensor>) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model.into(),
        inputs,
        ..Default::default()
    }
}

fn infer_version(version: &str) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_version: version.into(),
        ..infer("churn", vec![features_tensor(oip_rows(2), 2)])
    }
}

fn infer_raw(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        raw_input_contents: raw,
        ..infer("churn", inputs)
    }
}

fn le_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------
// Hand-made protobuf: the typed clients cannot send invalid UTF-8 in a
// `string` field, so these requests are encoded by hand and sent as bytes.
// ---------------------------------------------------------------------------

/// Pre-encoded protobuf bytes, sent as they are; a response is skipped over.
#[derive(Debug, Default, Clone)]
struct RawMessage(Vec<u8>);

impl Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0)
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear()
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes, message, packed repeated).
fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag << 3 | 2), &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Not UTF-8: a lone continuation byte and an invalid lead byte.
const BAD_UTF8: &[u8] = b"churn\xff\xfe";

const SCORE: &str = "/segscore.v1.Scoring/Score";
const SCORE_STREAM: &str = "/segscore.v1.Scoring/ScoreStream";
const GET_MODEL: &str = "/segscore.v1.Scoring/GetModel";
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

enum Call {
    Score(pb::ScoreRequest),
    Infer(oip::ModelInferRequest),
    Metadata(oip::ModelMetadataRequest),
    Ready(oip::ModelReadyRequest),
    GetModel(String),
    RepositoryLoad(String),
    /// Hand-encoded bytes to a unary method path.
    Raw(&'static str, Vec<u8>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    /// `--max-rows-per-request 100`.
    Rows100,
    /// `--max-message-bytes 16384`.
    Bytes16k,
}

struct Case {
    name: &'static str,
    server: Server,
    call: Call,
    code: Code,
    needles: &'static [&'static str],
}

fn case(name: &'static str, call: Call, code: Code, needles: &'static [&'static str]) -> Case {
    Case {
        name,
        server: Server::Rows100,
        call,
        code,
        needles,
    }
}

/// Values and ids the corpus sends that no message may echo: values are
/// personal data, entity ids are never logged or returned in errors.
const NEVER_ECHOED: &[&str] = &[
    "98765", "4242", "7.25", "1234567", "atlantis", "PII-", "Europe", "EUROPE",
];

const MAX_ROWS: usize = 100;
const MAX_BYTES: usize = 16 * 1024;

fn score_cases() -> Vec<Case> {
    use Call::Score as S;
    use Code::{InvalidArgument as Invalid, NotFound, ResourceExhausted as Exhausted};
    let two = || matrix(full_rows(2));
    let with_ref = |name: &str, version: u64, label: &str| {
        request(
            two(),
            vec![pb::ModelRef {
                name: name.into(),
                version,
                label: label.into(),
            }],
        )
    };
    let with_ids = |ids: &[&str]| pb::ScoreRequest {
        entity_ids: ids.iter().map(|s| s.to_string()).collect(),
        ..request(two(), churn())
    };
    let declared = |rows: u32, columns: Vec<pb::FeatureColumn>| {
        request(pb::FeatureMatrix { rows, columns }, churn())
    };
    let mut dup = full_rows(2);
    dup.push(f32_col("recency_days", vec![1.0, 2.0]));
    let mut dup_other_type = full_rows(2);
    dup_other_type.push(cat_col("region", vec!["europe", "asia_pacific"]));
    let mut empty_name = full_rows(2);
    empty_name.push(f32_col("", vec![1.0, 2.0]));
    let mut unused_no_values = full_rows(2);
    unused_no_values.push(pb::FeatureColumn {
        name: "favourite_colour".into(),
        values: None,
        missing_rows: vec![],
    });
    let mut later_longer = full_rows(2);
    let last = later_longer.len() - 1;
    later_longer[last] = cat_col("region", vec!["europe"; 3]);

    vec![
        // -- which model ------------------------------------------------------
        case(
            "unknown model",
            S(request(two(), vec![model("nope", 0)])),
            NotFound,
            &["`nope`", "not found"],
        ),
        case(
            "model name is case-sensitive",
            S(request(two(), vec![model("Churn", 0)])),
            NotFound,
            &["`Churn`"],
        ),
        case(
            "empty model name",
            S(request(two(), vec![model("", 0)])),
            NotFound,
            &["model ``"],
        ),
        case(
            "unknown version",
            S(request(two(), vec![model("churn", 99)])),
            NotFound,
            &["`churn`", "version 99"],
        ),
        case(
            "unknown label",
            S(with_ref("churn", 0, "canary")),
            NotFound,
            &["`churn`", "label `canary`"],
        ),
        case(
            "label stable without labels.toml",
            S(with_ref("ltv", 0, "stable")),
            NotFound,
            &["`ltv`", "label `stable`"],
        ),
        case(
            "version and label both set",
            S(with_ref("churn", 1, "stable")),
            Invalid,
            &["`churn`", "not both"],
        ),
        case(
            "no models",
            S(request(two(), vec![])),
            Invalid,
            &["no models"],
        ),
        case(
            "second model unknown version",
            S(request(two(), vec![model("churn", 0), model("ltv", 42)])),
            NotFound,
            &["`ltv`", "version 42"],
        ),
        case(
            "unknown segment",
            S(pb::ScoreRequest {
                segments: vec!["high_value_abandoners".into()],
                ..request(two(), churn())
            }),
            NotFound,
            &["`high_value_abandoners`"],
        ),
        case(
            "unknown segment, no models",
            S(pb::ScoreRequest {
                segments: vec!["lapsing".into()],
                ..request(two(), vec![])
            }),
            NotFound,
            &["`lapsing`"],
        ),
        case(
            "the same model reference twice",
            S(request(two(), vec![model("churn", 0), model("churn", 0)])),
            Invalid,
            &["`churn`", "listed twice"],
        ),
        // -- which rows -------------------------------------------------------
        case(
            "no features",
            S(pb::ScoreRequest {
                features: None,
                ..request(two(), churn())
            }),
            Invalid,
            &["no `features`"],
        ),
        case(
            "zero rows, no columns",
            S(request(matrix(vec![]), churn())),
            Invalid,
            &["no rows"],
        ),
        case(
            "zero rows, empty columns",
            S(request(matrix(full_rows(0)), churn())),
            Invalid,
            &["no rows"],
        ),
        case(
            "declared rows, no columns: required feature missing",
            S(declared(3, vec![])),
            Invalid,
            &["`churn`", "`frequency`", "required"],
        ),
        case(
            "declared rows above column length",
            S(declared(3, full_rows(2))),
            Invalid,
            &["`recency_days`", "2 values", "3 rows"],
        ),
        case(
            "declared rows below column length",
            S(declared(1, full_rows(2))),
            Invalid,
            &["`recency_days`", "2 values", "1 rows"],
        ),
        case(
            "column shorter than the others",
            S(churn_with(f32_col("tenure_days", vec![1.0]))),
            Invalid,
            &["`tenure_days`", "1 values", "2 rows"],
        ),
        case(
            "column longer than the others",
            S(request(matrix(later_longer), churn())),
            Invalid,
            &["`region`", "3 values", "2 rows"],
        ),
        case(
            "entity_ids: too few",
            S(with_ids(&["PII-a"])),
            Invalid,
            &["1 entity_ids", "2 rows"],
        ),
        case(
            "entity_ids: too many",
            S(with_ids(&["PII-a", "PII-b", "PII-c"])),
            Invalid,
            &["3 entity_ids", "2 rows"],
        ),
        case(
            "rows over --max-rows-per-request",
            S(request(matrix(full_rows(MAX_ROWS + 1)), churn())),
            Exhausted,
            &["101 rows", "limit of 100"],
        ),
        case(
            "declared rows over the limit, no columns",
            S(declared(u32::MAX, vec![])),
            Exhausted,
            &["4294967295 rows", "limit of 100"],
        ),
        case(
            "declared rows over the limit, short columns",
            S(declared(101, full_rows(2))),
            Exhausted,
            &["101 rows", "limit of 100"],
        ),
        // -- column structure ------------------------------------------------
        case(
            "duplicate column",
            S(request(matrix(dup), churn())),
            Invalid,
            &["`recency_days`", "more than once"],
        ),
        case(
            "duplicate column of another dtype",
            S(request(matrix(dup_other_type), churn())),
            Invalid,
            &["`region`", "more than once"],
        ),
        case(
            "empty column name",
            S(request(matrix(empty_name), churn())),
            Invalid,
            &["empty name"],
        ),
        case(
            "column without values",
            S(churn_with(pb::FeatureColumn {
                name: "recency_days".into(),
                values: None,
                missing_rows: vec![],
            })),
            Invalid,
            &["`recency_days`", "no values"],
        ),
        case(
            "unused column without values",
            S(request(matrix(unused_no_values), churn())),
            Invalid,
            &["`favourite_colour`", "no values"],
        ),
        case(
            "missing_rows index past the end",
            S(churn_with(with_missing(
                f32_col("recency_days", vec![1.0, 2.0]),
                vec![7],
            ))),
            Invalid,
            &["`recency_days`", "missing_rows index 7", "2 rows"],
        ),
        case(
            "missing_rows index == rows",
            S(churn_with(with_missing(
                cat_col("region", vec!["europe", "europe"]),
                vec![0, 2],
            ))),
            Invalid,
            &["`region`", "missing_rows index 2"],
        ),
        case(
            "missing_rows index u32::MAX",
            S(churn_with(with_missing(
                i64_col("sessions_7d", vec![1, 2]),
                vec![u32::MAX],
            ))),
            Invalid,
            &["`sessions_7d`", "missing_rows index 4294967295"],
        ),
        // -- dtypes -----------------------------------------------------------
        case(
            "f32 feature as bool",
            S(churn_with(bool_col("recency_days", vec![true, false]))),
            Invalid,
            &["`recency_days`", "dtype f32", "bool values"],
        ),
        case(
            "f32 feature as category",
            S(churn_with(cat_col("tenure_days", vec!["a", "b"]))),
            Invalid,
            &["`tenure_days`", "dtype f32", "category"],
        ),
        case(
            "bool feature as f32",
            S(churn_with(f32_col("cart_abandoned_24h", vec![1.0, 0.0]))),
            Invalid,
            &["`cart_abandoned_24h`", "dtype bool", "f32 values"],
        ),
        case(
            "bool feature as i64",
            S(churn_with(i64_col("cart_abandoned_24h", vec![1, 0]))),
            Invalid,
            &["`cart_abandoned_24h`", "dtype bool", "i64 values"],
        ),
        case(
            "bool feature as category",
            S(churn_with(cat_col(
                "cart_abandoned_24h",
                vec!["true", "false"],
            ))),
            Invalid,
            &["`cart_abandoned_24h`", "dtype bool", "category"],
        ),
        case(
            "category feature as i64",
            S(churn_with(i64_col("region", vec![1, 2]))),
            Invalid,
            &["`region`", "dtype category", "i64 values"],
        ),
        case(
            "category feature as f32",
            S(churn_with(f32_col("region", vec![1.0, 2.0]))),
            Invalid,
            &["`region`", "dtype category", "f32 values"],
        ),
        case(
            "category feature as bool",
            S(churn_with(bool_col("region", vec![true, true]))),
            Invalid,
            &["`region`", "dtype category", "bool values"],
        ),
        case(
            "i64 feature as bool",
            S(churn_with(bool_col("frequency", vec![true, true]))),
            Invalid,
            &["`frequency`", "dtype i64", "bool values"],
        ),
        case(
            "i64 feature as category",
            S(churn_with(cat_col("purchases_90d", vec!["2", "3"]))),
            Invalid,
            &["`purchases_90d`", "dtype i64", "category"],
        ),
        case(
            "i64 feature as non-integral f64",
            S(churn_with(f64_col("frequency", vec![7.0, 4242.5]))),
            Invalid,
            &["`frequency`", "row 1", "not an integer"],
        ),
        case(
            "i64 feature as non-integral f32",
            S(churn_with(f32_col("sessions_7d", vec![7.25, 1.0]))),
            Invalid,
            &["`sessions_7d`", "row 0", "not an integer"],
        ),
        // -- missing values ---------------------------------------------------
        case(
            "NaN in a reject f32 feature",
            S(churn_with(f32_col("monetary_total", vec![5.0, f32::NAN]))),
            Invalid,
            &["`monetary_total`", "row 1", "missing"],
        ),
        case(
            "NaN in a reject i64 feature (sent as f64)",
            S(churn_with(f64_col("frequency", vec![f64::NAN, 7.0]))),
            Invalid,
            &["`frequency`", "row 0", "missing"],
        ),
        case(
            "missing_rows on a reject feature",
            S(churn_with(with_missing(
                f32_col("tenure_days", vec![1.0, 2.0]),
                vec![1],
            ))),
            Invalid,
            &["`tenure_days`", "row 1", "rejects missing"],
        ),
        case(
            "required column omitted: frequency",
            S(churn_without("frequency")),
            Invalid,
            &["`churn`", "`frequency`", "required"],
        ),
        case(
            "required column omitted: tenure_days",
            S(churn_without("tenure_days")),
            Invalid,
            &["`tenure_days`", "required"],
        ),
        case(
            "required column omitted: monetary_total",
            S(churn_without("monetary_total")),
            Invalid,
            &["`monetary_total`", "required"],
        ),
        case(
            "required column omitted, second model",
            S(request(
                matrix(without(full_rows(2), "purchases_90d")),
                vec![model("ltv", 0)],
            )),
            Invalid,
            &["`ltv`", "`purchases_90d`", "required"],
        ),
        // -- ranges -----------------------------------------------------------
        case(
            "+Inf where a range is declared",
            S(churn_with(f32_col(
                "recency_days",
                vec![1.0, f32::INFINITY],
            ))),
            Invalid,
            &["`recency_days`", "row 1", "out of range"],
        ),
        case(
            "-Inf in an imputed feature",
            S(churn_with(f32_col(
                "email_engagement",
                vec![f32::NEG_INFINITY, 1.0],
            ))),
            Invalid,
            &["`email_engagement`", "row 0", "out of range"],
        ),
        case(
            "+Inf as f64",
            S(churn_with(f64_col("tenure_days", vec![1.0, f64::INFINITY]))),
            Invalid,
            &["`tenure_days`", "row 1", "out of range"],
        ),
        case(
            "above max",
            S(churn_with(f32_col("recency_days", vec![98765.25, 1.0]))),
            Invalid,
            &["`recency_days`", "row 0", "out of range"],
        ),
        case(
            "below min",
            S(churn_with(f32_col("monetary_mean", vec![1.0, -3.0]))),
            Invalid,
            &["`monetary_mean`", "row 1", "out of range"],
        ),
        case(
            "just above a 0-100 score",
            S(churn_with(f32_col("email_engagement", vec![100.5, 1.0]))),
            Invalid,
            &["`email_engagement`", "row 0", "[0, 100]"],
        ),
        case(
            "negative count",
            S(churn_with(i64_col("frequency", vec![1, -1]))),
            Invalid,
            &["`frequency`", "row 1", "out of range"],
        ),
        case(
            "i64::MAX count",
            S(churn_with(i64_col("purchases_90d", vec![i64::MAX, 1]))),
            Invalid,
            &["`purchases_90d`", "row 0", "out of range"],
        ),
        case(
            "count above max",
            S(churn_with(i64_col("sessions_7d", vec![1, 1234567]))),
            Invalid,
            &["`sessions_7d`", "row 1", "out of range"],
        ),
        case(
            "f64 above max",
            S(churn_with(f64_col("monetary_total", vec![1e300, 1.0]))),
            Invalid,
            &["`monetary_total`", "row 0", "out of range"],
        ),
        // -- categories -------------------------------------------------------
        case(
            "unknown category",
            S(churn_with(cat_col("region", vec!["europe", "atlantis"]))),
            Invalid,
            &["`region`", "row 1", "unknown category"],
        ),
        case(
            "category with other case",
            S(churn_with(cat_col("region", vec!["Europe", "EUROPE"]))),
            Invalid,
            &["`region`", "row 0", "unknown category"],
        ),
        case(
            "empty category",
            S(churn_with(cat_col("region", vec!["europe", ""]))),
            Invalid,
            &["`region`", "row 1", "unknown category"],
        ),
    ]
}

fn infer_cases() -> Vec<Case> {
    use Call::Infer as I;
    use Code::{InvalidArgument as Invalid, NotFound, ResourceExhausted as Exhausted};
    let two = || features_tensor(oip_rows(2), 2);
    let churn2 = |inputs: Vec<InferInputTensor>| I(infer("churn", inputs));
    let with_shape =
        |shape: Vec<i64>, values: Vec<f32>| churn2(vec![fp32_tensor("features", values, shape)]);
    let with_datatype = |datatype: &str| {
        let mut t = two();
        t.datatype = datatype.into();
        churn2(vec![t])
    };
    let mut both = infer_raw(vec![two()], vec![le_f32(&oip_rows(2))]);
    both.inputs[0].contents = Some(f32s(oip_rows(2)));
    let mut dup_features = per_feature(2);
    dup_features.push(typed("recency_days", "FP32", vec![2], f32s(vec![1.0, 2.0])));
    let mut unknown_among = per_feature(2);
    unknown_among.push(typed(
        "favourite_colour",
        "FP32",
        vec![2],
        f32s(vec![1.0, 2.0]),
    ));
    let mut matrix_and_feature = vec![two()];
    matrix_and_feature.push(typed("recency_days", "FP32", vec![2], f32s(vec![1.0, 2.0])));
    let mut unknown_output = infer("churn", vec![two()]);
    unknown_output.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        ..Default::default()
    }];
    let mut second_output_unknown = infer("churn", vec![two()]);
    second_output_unknown.outputs = ["score", "score_raw"]
        .map(|name| InferRequestedOutputTensor {
            name: name.into(),
            ..Default::default()
        })
        .into();
    let region_bytes = |v: Vec<&'static [u8]>| typed("region", "BYTES", vec![2], byte_strings(v));
    let raw_bytes_region = |raw: Vec<u8>| {
        let inputs: Vec<InferInputTensor> = per_feature(2)
            .into_iter()
            .map(|t| InferInputTensor {
                contents: None,
                ..t
            })
            .collect();
        let mut raws: Vec<Vec<u8>> = Vec::new();
        for t in &inputs {
            raws.push(match t.datatype.as_str() {
                "FP32" => le_f32(&[1.0, 1.0]),
                "INT64" => [1i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect(),
                "BOOL" => vec![1, 0],
                _ => raw.clone(),
            });
        }
        I(infer_raw(inputs, raws))
    };
    let mut length_prefixed = Vec::new();
    length_prefixed.extend_from_slice(&6u32.to_le_bytes());
    length_prefixed.extend_from_slice(b"europe");

    vec![
        // -- which model ------------------------------------------------------
        case(
            "OIP unknown model",
            I(infer("nope", vec![two()])),
            NotFound,
            &["`nope`", "not found"],
        ),
        case(
            "OIP empty model name",
            I(infer("", vec![two()])),
            NotFound,
            &["model ``"],
        ),
        case(
            "OIP unknown version",
            I(infer_version("9")),
            NotFound,
            &["`churn`", "version 9"],
        ),
        case(
            "OIP non-numeric version",
            I(infer_version("latest")),
            Invalid,
            &["`latest`", "not a version"],
        ),
        case(
            "OIP negative version",
            I(infer_version("-1")),
            Invalid,
            &["`-1`", "not a version"],
        ),
        case(
            "OIP fractional version",
            I(infer_version("1.0")),
            Invalid,
            &["`1.0`", "not a version"],
        ),
        case(
            "OIP unknown requested output",
            I(unknown_output),
            Invalid,
            &["`churn`", "`probabilities`"],
        ),
        case(
            "OIP second requested output unknown",
            I(second_output_unknown),
            Invalid,
            &["`score_raw`"],
        ),
        // -- datatypes --------------------------------------------------------
        case(
            "OIP INT8 datatype",
            with_datatype("INT8"),
            Invalid,
            &["`features`", "`INT8`", "not supported"],
        ),
        case(
            "OIP UINT64 datatype",
            with_datatype("UINT64"),
            Invalid,
            &["`features`", "`UINT64`"],
        ),
        case(
            "OIP lower-case fp32",
            with_datatype("fp32"),
            Invalid,
            &["`features`", "`fp32`"],
        ),
        case(
            "OIP empty datatype",
            with_datatype(""),
            Invalid,
            &["`features`", "datatype ``"],
        ),
        case(
            "OIP FP64 datatype, FP32 contents",
            with_datatype("FP64"),
            Invalid,
            &["`features`", "0 values", "[2, 12]"],
        ),
        case(
            "OIP BYTES tensor for a numeric feature",
            churn2(per_feature_with(typed(
                "tenure_days",
                "BYTES",
                vec![2],
                byte_strings(vec![b"400", b"400"]),
            ))),
            Invalid,
            &["`tenure_days`", "BYTES data for a f32 feature"],
        ),
        case(
            "OIP BYTES matrix",
            churn2(vec![typed(
                "features",
                "BYTES",
                vec![1, 12],
                byte_strings(vec![b"1".as_slice(); 12]),
            )]),
            Invalid,
            &["`features`", "BYTES matrix"],
        ),
        case(
            "OIP FP32 tensor for a category feature",
            churn2(per_feature_with(typed(
                "region",
                "FP32",
                vec![2],
                f32s(vec![1.0, 1.0]),
            ))),
            Invalid,
            &["`region`", "dtype category", "f32 values"],
        ),
        case(
            "OIP BOOL tensor for an f32 feature",
            churn2(per_feature_with(typed(
                "recency_days",
                "BOOL",
                vec![2],
                bools(vec![true, false]),
            ))),
            Invalid,
            &["`recency_days`", "dtype f32", "bool values"],
        ),
        case(
            "OIP FP32 tensor for a bool feature",
            churn2(per_feature_with(typed(
                "cart_abandoned_24h",
                "FP32",
                vec![2],
                f32s(vec![1.0, 0.0]),
            ))),
            Invalid,
            &["`cart_abandoned_24h`", "dtype bool", "f32 values"],
        ),
        case(
            "OIP non-integral FP32 for an i64 feature",
            churn2(per_feature_with(typed(
                "frequency",
                "FP32",
                vec![2],
                f32s(vec![7.0, 7.25]),
            ))),
            Invalid,
            &["`frequency`", "row 1", "not an integer"],
        ),
        // -- shapes -----------------------------------------------------------
        case(
            "OIP 1-D matrix",
            with_shape(vec![24], oip_rows(2)),
            Invalid,
            &["`features`", "[24]", "[rows, 12]"],
        ),
        case(
            "OIP 3-D matrix",
            with_shape(vec![2, 12, 1], oip_rows(2)),
            Invalid,
            &["`features`", "[2, 12, 1]"],
        ),
        case(
            "OIP scalar shape",
            with_shape(vec![], vec![1.0]),
            Invalid,
            &["`features`", "shape []"],
        ),
        case(
            "OIP too few columns",
            with_shape(vec![2, 11], oip_rows(2)[..22].to_vec()),
            Invalid,
            &["`features`", "[2, 11]"],
        ),
        case(
            "OIP negative first dim",
            with_shape(vec![-1, 12], oip_rows(2)),
            Invalid,
            &["`features`", "negative"],
        ),
        case(
            "OIP negative second dim",
            with_shape(vec![2, -12], oip_rows(2)),
            Invalid,
            &["`features`", "negative"],
        ),
        case(
            "OIP huge shape (u32::MAX rows)",
            with_shape(vec![4294967295, 12], oip_rows(2)),
            Invalid,
            &["`features`", "24 values", "[4294967295, 12]"],
        ),
        case(
            "OIP huge shape (i64::MAX rows)",
            with_shape(vec![i64::MAX, 12], oip_rows(2)),
            Invalid,
            &["`features`", "24 values"],
        ),
        case(
            "OIP zero rows",
            with_shape(vec![0, 12], vec![]),
            Invalid,
            &["no rows"],
        ),
        case(
            "OIP contents short of the shape",
            with_shape(vec![2, 12], oip_rows(2)[..23].to_vec()),
            Invalid,
            &["`features`", "23 values", "[2, 12]"],
        ),
        case(
            "OIP contents past the shape",
            with_shape(vec![2, 12], oip_rows(3)[..25].to_vec()),
            Invalid,
            &["`features`", "25 values", "[2, 12]"],
        ),
        case(
            "OIP no contents at all",
            churn2(vec![no_contents("features", "FP32", vec![2, 12])]),
            Invalid,
            &["`features`", "0 values"],
        ),
        case(
            "OIP feature tensor [1, 2]",
            churn2(per_feature_with(typed(
                "tenure_days",
                "FP32",
                vec![1, 2],
                f32s(vec![1.0, 2.0]),
            ))),
            Invalid,
            &["`tenure_days`", "[1, 2]", "[rows] or [rows, 1]"],
        ),
        case(
            "OIP feature tensors of different lengths",
            churn2(per_feature_with(typed(
                "tenure_days",
                "FP32",
                vec![3],
                f32s(vec![1.0; 3]),
            ))),
            Invalid,
            &["`tenure_days`", "3 values", "2 rows"],
        ),
        case(
            "OIP rows over --max-rows-per-request",
            churn2(vec![features_tensor(oip_rows(MAX_ROWS + 1), 101)]),
            Exhausted,
            &["`features`", "101 rows", "limit of 100"],
        ),
        // -- raw contents -----------------------------------------------------
        case(
            "OIP raw bytes not a whole number of elements",
            I(infer_raw(
                vec![no_contents("features", "FP32", vec![2, 12])],
                vec![vec![0; 95]],
            )),
            Invalid,
            &["`features`", "95 raw bytes", "4-byte"],
        ),
        case(
            "OIP raw FP64 bytes a multiple of 4 only",
            I(infer_raw(
                vec![no_contents("features", "FP64", vec![2, 12])],
                vec![vec![0; 92]],
            )),
            Invalid,
            &["`features`", "92 raw bytes", "8-byte"],
        ),
        case(
            "OIP raw bytes short of the shape",
            I(infer_raw(
                vec![no_contents("features", "FP32", vec![2, 12])],
                vec![le_f32(&oip_rows(2)[..23])],
            )),
            Invalid,
            &["`features`", "23 values"],
        ),
        case(
            "OIP raw and typed contents both",
            I(both),
            Invalid,
            &["`features`", "`contents`", "raw_input_contents"],
        ),
        case(
            "OIP two raw contents for one input",
            I(infer_raw(
                vec![no_contents("features", "FP32", vec![2, 12])],
                vec![le_f32(&oip_rows(2)), le_f32(&oip_rows(2))],
            )),
            Invalid,
            &["2 raw_input_contents", "1 inputs"],
        ),
        case(
            "OIP one raw content for twelve inputs",
            I(infer_raw(
                per_feature(2)
                    .into_iter()
                    .map(|t| InferInputTensor {
                        contents: None,
                        ..t
                    })
                    .collect(),
                vec![le_f32(&[1.0, 2.0])],
            )),
            Invalid,
            &["1 raw_input_contents", "12 inputs"],
        ),
        case(
            "OIP raw BYTES truncated length prefix",
            raw_bytes_region(vec![6, 0]),
            Invalid,
            &["`region`", "truncated"],
        ),
        case(
            "OIP raw BYTES element longer than the content",
            raw_bytes_region(
                [
                    length_prefixed.clone(),
                    200u32.to_le_bytes().to_vec(),
                    b"eu".to_vec(),
                ]
                .concat(),
            ),
            Invalid,
            &["`region`", "longer than"],
        ),
        case(
            "OIP raw BYTES not UTF-8",
            raw_bytes_region(
                [
                    length_prefixed.clone(),
                    2u32.to_le_bytes().to_vec(),
                    vec![0xff, 0xfe],
                ]
                .concat(),
            ),
            Invalid,
            &["`region`", "not UTF-8"],
        ),
        // -- input names ------------------------------------------------------
        case(
            "OIP no inputs",
            churn2(vec![]),
            Invalid,
            &["no input tensors"],
        ),
        case(
            "OIP unknown input among features",
            churn2(unknown_among),
            Invalid,
            &["`favourite_colour`", "not a feature"],
        ),
        case(
            "OIP lone unknown input, column-shaped",
            churn2(vec![typed(
                "favourite_colour",
                "FP32",
                vec![2],
                f32s(vec![1.0, 2.0]),
            )]),
            Invalid,
            &["`favourite_colour`", "not a feature"],
        ),
        case(
            "OIP duplicate feature input",
            churn2(dup_features),
            Invalid,
            &["`recency_days`", "more than once"],
        ),
        case(
            "OIP duplicate matrix input",
            churn2(vec![two(), two()]),
            Invalid,
            &["`features`", "not a feature"],
        ),
        case(
            "OIP matrix plus a feature tensor",
            churn2(matrix_and_feature),
            Invalid,
            &["`features`", "not a feature"],
        ),
        // -- values -----------------------------------------------------------
        case(
            "OIP +Inf in the matrix",
            churn2(vec![features_tensor(oip_two_with(0, f32::INFINITY), 2)]),
            Invalid,
            &["`recency_days`", "row 0", "out of range"],
        ),
        case(
            "OIP NaN in a reject feature",
            churn2(vec![features_tensor(oip_two_with(1, f32::NAN), 2)]),
            Invalid,
            &["`frequency`", "row 0", "missing"],
        ),
        case(
            "OIP non-integral count in the matrix",
            churn2(vec![features_tensor(oip_two_with(1, 7.25), 2)]),
            Invalid,
            &["`frequency`", "row 0", "not an integer"],
        ),
        case(
            "OIP above max in the matrix",
            churn2(vec![features_tensor(oip_two_with(10, 98765.0), 2)]),
            Invalid,
            &["`email_engagement`", "row 0", "out of range"],
        ),
        case(
            "OIP category code past the list",
            churn2(vec![features_tensor(oip_two_with(11, 17.0), 2)]),
            Invalid,
            &["`features`", "`region`", "row 0", "category code"],
        ),
        case(
            "OIP fractional category code",
            churn2(vec![features_tensor(oip_two_with(11, 1.5), 2)]),
            Invalid,
            &["`region`", "row 0", "category code"],
        ),
        case(
            "OIP negative category code",
            churn2(vec![features_tensor(oip_two_with(11, -1.0), 2)]),
            Invalid,
            &["`region`", "row 0", "category code"],
        ),
        case(
            "OIP unknown category string",
            churn2(per_feature_with(region_bytes(vec![b"europe", b"atlantis"]))),
            Invalid,
            &["`region`", "row 1", "unknown category"],
        ),
        case(
            "OIP category string not UTF-8",
            churn2(per_feature_with(region_bytes(vec![b"europe", b"eu\xff"]))),
            Invalid,
            &["`region`", "not UTF-8"],
        ),
        case(
            "OIP required feature tensor omitted",
            churn2(
                per_feature(2)
                    .into_iter()
                    .filter(|t| t.name != "frequency")
                    .collect(),
            ),
            Invalid,
            &["`churn`", "`frequency`", "required"],
        ),
        case(
            "OIP bool feature 7 in the matrix",
            churn2(vec![features_tensor(oip_two_with(9, 7.0), 2)]),
            Invalid,
            &["`cart_abandoned_24h`", "row 0", "0 or 1"],
        ),
        case(
            "OIP bool feature 0.5 in the matrix",
            churn2(vec![features_tensor(oip_two_with(9, 0.5), 2)]),
            Invalid,
            &["`cart_abandoned_24h`", "row 0", "0 or 1"],
        ),
        case(
            "OIP bool feature +Inf in the matrix",
            churn2(vec![features_tensor(oip_two_with(9, f32::INFINITY), 2)]),
            Invalid,
            &["`cart_abandoned_24h`", "row 0", "0 or 1"],
        ),
        case(
            "OIP lone tensor with an unknown name",
            churn2(vec![fp32_tensor(
                "favourite_colour",
                oip_rows(2),
                vec![2, WIDTH],
            )]),
            Invalid,
            &["`favourite_colour`", "not a feature"],
        ),
        case(
            "OIP lone tensor with an empty name",
            churn2(vec![fp32_tensor("", oip_rows(2), vec![2, WIDTH])]),
            Invalid,
            &["not a feature"],
        ),
        case(
            "OIP shape whose element count overflows",
            with_shape(vec![(1 << 62) + 2, 12], oip_rows(2)),
            Invalid,
            &["`features`", "24 values do not fill"],
        ),
        case(
            "OIP version with a plus sign",
            I(infer_version("+1")),
            Invalid,
            &["`+1`", "not a version"],
        ),
        case(
            "OIP version with a leading zero",
            I(infer_version("01")),
            Invalid,
            &["`01`", "not a version"],
        ),
        // -- other OIP calls --------------------------------------------------
        case(
            "ModelMetadata unknown model",
            Call::Metadata(oip::ModelMetadataRequest {
                name: "nope".into(),
                version: String::new(),
            }),
            NotFound,
            &["`nope`"],
        ),
        case(
            "ModelMetadata unknown version",
            Call::Metadata(oip::ModelMetadataRequest {
                name: "churn".into(),
                version: "7".into(),
            }),
            NotFound,
            &["`churn`", "version 7"],
        ),
        case(
            "ModelMetadata bad version",
            Call::Metadata(oip::ModelMetadataRequest {
                name: "churn".into(),
                version: "v2".into(),
            }),
            Invalid,
            &["`v2`"],
        ),
        // An unknown model on ModelReady is no longer an error: it answers
        // ready=false as Triton does (tests/api/inference.rs checks it).
        case(
            "ModelReady bad version",
            Call::Ready(oip::ModelReadyRequest {
                name: "churn".into(),
                version: "two".into(),
            }),
            Invalid,
            &["`two`"],
        ),
        case(
            "RepositoryModelLoad unknown model",
            Call::RepositoryLoad("nope".into()),
            NotFound,
            &["`nope`"],
        ),
        case(
            "GetModel unknown model",
            Call::GetModel("nope".into()),
            NotFound,
            &["`nope`"],
        ),
        case(
            "GetModel empty name",
            Call::GetModel(String::new()),
            NotFound,
            &["model ``"],
        ),
    ]
}

/// Requests over `--max-message-bytes`, and a request under it whose answer
/// would be over it.
///
/// tonic answers OUT_OF_RANGE ("decoded/encoded message length too large");
/// the gRPC status-code guide says RESOURCE_EXHAUSTED for a message over the
/// configured limit. Asserted as tonic behaves, reported as imprecise.
fn size_cases() -> Vec<Case> {
    let big_rows = 4000; // ~ 12 columns x 4000 rows: well over 16 KiB
    let big_score = request(matrix(full_rows(big_rows)), churn());
    assert!(big_score.encoded_len() > MAX_BYTES);
    let big_infer = infer(
        "churn",
        vec![features_tensor(oip_rows(big_rows), big_rows as i64)],
    );
    assert!(big_infer.encoded_len() > MAX_BYTES);
    // Under the limit in, over it out: 1,000 rows of the four required
    // features (~10 KB) scored by five model versions (~20 KB of scores).
    let required = [
        "frequency",
        "tenure_days",
        "monetary_total",
        "purchases_90d",
    ];
    let narrow: Vec<pb::FeatureColumn> = full_rows(1000)
        .into_iter()
        .filter(|c| required.contains(&c.name.as_str()))
        .collect();
    let every_version = vec![
        model("churn", 1),
        model("churn", 2),
        model("ltv", 1),
        model("propensity", 1),
        model("propensity", 2),
    ];
    let big_answer = request(matrix(narrow), every_version);
    assert!(big_answer.encoded_len() < MAX_BYTES);
    vec![
        Case {
            server: Server::Bytes16k,
            ..case(
                "answer over --max-message-bytes",
                Call::Score(big_answer),
                Code::OutOfRange,
                &["message length too large", "16384"],
            )
        },
        Case {
            server: Server::Bytes16k,
            ..case(
                "Score over --max-message-bytes",
                Call::Score(big_score),
                Code::OutOfRange,
                &["message length too large", "16384"],
            )
        },
        Case {
            server: Server::Bytes16k,
            ..case(
                "ModelInfer over --max-message-bytes",
                Call::Infer(big_infer),
                Code::OutOfRange,
                &["message length too large", "16384"],
            )
        },
    ]
}

/// Requests the server accepts although they look odd: documented here so a
/// change is noticed.
fn lenient_cases() -> Vec<Case> {
    let mut params = infer("churn", vec![features_tensor(oip_rows(2), 2)]);
    // The server reads no parameters: any type is ignored.
    params.parameters.insert(
        "binary_data_output".into(),
        InferParameter {
            parameter_choice: Some(oip::infer_parameter::ParameterChoice::StringParam(
                "yes".into(),
            )),
        },
    );
    params.parameters.insert(
        "priority".into(),
        InferParameter {
            parameter_choice: Some(oip::infer_parameter::ParameterChoice::BoolParam(true)),
        },
    );
    let mut unused = full_rows(2);
    unused.push(cat_col("favourite_colour", vec!["PII-red", "PII-blue"]));
    vec![
        case(
            "OIP parameters of any type are ignored",
            Call::Infer(params),
            Code::Ok,
            &[],
        ),
        case(
            "unused typed column is ignored",
            Call::Score(request(matrix(unused), churn())),
            Code::Ok,
            &[],
        ),
        case(
            "NaN in an imputed feature is imputed",
            Call::Score(churn_with(f32_col("recency_days", vec![f32::NAN, 1.0]))),
            Code::Ok,
            &[],
        ),
        case(
            "integral f64 for an i64 feature",
            Call::Score(churn_with(f64_col("frequency", vec![7.0, 3.0]))),
            Code::Ok,
            &[],
        ),
    ]
}

/// Invalid UTF-8 in protobuf `string` fields and undecodable bodies: the
/// server's codec rejects them while decoding, before segscore sees the
/// request, with INVALID_ARGUMENT naming the message type and prost's reason.
/// (tonic-prost's own codec, as grpc-go and grpc-java, answers INTERNAL; that
/// code is kept for our own faults.)
fn decode_cases() -> Vec<Case> {
    let two = request(matrix(full_rows(2)), churn()).encode_to_vec();
    let no_models = request(matrix(full_rows(2)), vec![]).encode_to_vec();
    let no_region = request(matrix(without(full_rows(2), "region")), churn()).encode_to_vec();
    let f32_pair = le_f32(&[1.0, 2.0]);
    let column = |name: &[u8]| concat(&[&field(1, name), &field(2, &field(1, &f32_pair))]);
    let shape_2_12 = field(3, &[2, 12]);
    let tensor = |name: &[u8], datatype: &[u8]| {
        concat(&[
            &field(1, name),
            &field(2, datatype),
            &shape_2_12,
            &field(5, &field(6, &le_f32(&oip_rows(2)))),
        ])
    };
    let infer_base = infer("churn", vec![]).encode_to_vec();
    let infer_ok = infer("churn", vec![features_tensor(oip_rows(2), 2)]).encode_to_vec();
    let infer_unnamed = infer("", vec![features_tensor(oip_rows(2), 2)]).encode_to_vec();
    // Starts of a group in unknown field 15, nested past prost's recursion
    // limit; and a varint of eleven bytes.
    let deep_groups = [0x7b_u8].repeat(500);
    let varint_overflow = vec![
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    let not_score_request: &'static [&'static str] = &["not a valid ScoreRequest protobuf message"];
    let not_infer_request: &'static [&'static str] =
        &["not a valid ModelInferRequest protobuf message"];
    let not_utf8: &'static [&'static str] = &["not a valid", "not UTF-8"];
    let cases: Vec<(&'static str, &'static str, Vec<u8>, &'static [&'static str])> = vec![
        (
            "Score model name not UTF-8",
            SCORE,
            concat(&[&no_models, &field(4, &field(1, BAD_UTF8))]),
            not_utf8,
        ),
        (
            "Score label not UTF-8",
            SCORE,
            concat(&[
                &no_models,
                &field(4, &concat(&[&field(1, b"churn"), &field(3, BAD_UTF8)])),
            ]),
            not_utf8,
        ),
        (
            "Score column name not UTF-8",
            SCORE,
            concat(&[&two, &field(3, &field(2, &column(BAD_UTF8)))]),
            not_utf8,
        ),
        (
            "Score category value not UTF-8",
            SCORE,
            concat(&[
                &no_region,
                &field(
                    3,
                    &field(
                        2,
                        &concat(&[
                            &field(1, b"region"),
                            &field(6, &concat(&[&field(1, b"europe"), &field(1, BAD_UTF8)])),
                        ]),
                    ),
                ),
            ]),
            not_utf8,
        ),
        (
            "Score entity id not UTF-8",
            SCORE,
            concat(&[&two, &field(2, b"PII-ok"), &field(2, BAD_UTF8)]),
            not_utf8,
        ),
        (
            "Score segment not UTF-8",
            SCORE,
            concat(&[&two, &field(5, BAD_UTF8)]),
            not_utf8,
        ),
        (
            "Score body not protobuf",
            SCORE,
            vec![0xff; 9],
            not_score_request,
        ),
        (
            "Score body truncated",
            SCORE,
            two[..two.len() - 3].to_vec(),
            not_score_request,
        ),
        (
            "Score varint overflow",
            SCORE,
            varint_overflow.clone(),
            not_score_request,
        ),
        (
            "Score deep unknown groups",
            SCORE,
            deep_groups.clone(),
            not_score_request,
        ),
        (
            "ModelInfer model_name not UTF-8",
            MODEL_INFER,
            concat(&[&infer_unnamed, &field(1, BAD_UTF8)]),
            not_utf8,
        ),
        (
            "ModelInfer model_version not UTF-8",
            MODEL_INFER,
            concat(&[&infer_ok, &field(2, BAD_UTF8)]),
            not_utf8,
        ),
        (
            "ModelInfer id not UTF-8",
            MODEL_INFER,
            concat(&[&infer_ok, &field(3, BAD_UTF8)]),
            not_utf8,
        ),
        (
            "ModelInfer input name not UTF-8",
            MODEL_INFER,
            concat(&[&infer_base, &field(5, &tensor(BAD_UTF8, b"FP32"))]),
            not_utf8,
        ),
        (
            "ModelInfer datatype not UTF-8",
            MODEL_INFER,
            concat(&[&infer_base, &field(5, &tensor(b"features", BAD_UTF8))]),
            not_utf8,
        ),
        (
            "ModelInfer body not protobuf",
            MODEL_INFER,
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            not_infer_request,
        ),
        (
            "ModelInfer shape varint overflow",
            MODEL_INFER,
            // Field 3 (shape) of an input tensor, the same eleven bytes.
            concat(&[
                &infer_base,
                &field(5, &[&[0x18], &varint_overflow[1..]].concat()),
            ]),
            &[
                "not a valid ModelInferRequest",
                "InferInputTensor.shape",
                "invalid varint",
            ],
        ),
        (
            "ModelInfer deep unknown groups",
            MODEL_INFER,
            deep_groups,
            not_infer_request,
        ),
        (
            "GetModel name not UTF-8",
            GET_MODEL,
            field(1, BAD_UTF8),
            &["not a valid GetModelRequest protobuf message", "not UTF-8"],
        ),
    ];
    cases
        .into_iter()
        .map(|(name, path, body, needles)| {
            case(name, Call::Raw(path, body), Code::InvalidArgument, needles)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------

fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy()
}

async fn raw_unary(app: &TestApp, path: &'static str, body: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel(app));
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(RawMessage(body)),
        PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::<RawMessage, RawMessage>::default(),
    )
    .await
    .map(drop)
}

async fn send(app: &TestApp, call: Call) -> Result<(), Status> {
    let oip = || {
        GrpcInferenceServiceClient::new(channel(app))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    };
    match call {
        Call::Score(req) => app.score(req).await.map(drop),
        Call::Infer(req) => oip().model_infer(req).await.map(drop),
        Call::Metadata(req) => oip().model_metadata(req).await.map(drop),
        Call::Ready(req) => oip().model_ready(req).await.map(drop),
        Call::RepositoryLoad(name) => oip()
            .repository_model_load(oip::RepositoryModelLoadRequest {
                model_name: name,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::GetModel(name) => app
            .client
            .clone()
            .get_model(pb::GetModelRequest { name })
            .await
            .map(drop),
        Call::Raw(path, body) => raw_unary(app, path, body).await,
    }
}

/// Checks one answer; returns what is wrong with it.
fn judge(name: &str, code: Code, needles: &[&str], got: Result<(), Status>) -> Option<String> {
    let (got_code, message) = match &got {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    };
    if std::env::var_os("CORPUS_VERBOSE").is_some() {
        eprintln!("{name}: {got_code:?} `{message}`");
    }
    let mut problems = Vec::new();
    if got_code != code {
        problems.push(format!("expected {code:?}, got {got_code:?}"));
    }
    for needle in needles {
        if !message.contains(needle) {
            problems.push(format!("message lacks `{needle}`"));
        }
    }
    for secret in NEVER_ECHOED {
        if message.contains(secret) {
            problems.push(format!("message echoes `{secret}`"));
        }
    }
    (!problems.is_empty())
        .then(|| format!("{name}: {} — {got_code:?} `{message}`", problems.join("; ")))
}

/// Counts panics anywhere in the process (server handlers included).
fn count_panics() -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
    count
}

/// ScoreStream: bad chunks among good ones each get an answer carrying the
/// error, in order, and the stream goes on.
async fn stream_corpus(app: &TestApp, problems: &mut Vec<String>) -> usize {
    let good = |sequence: u64| pb::ScoreRequest {
        sequence,
        ..request(matrix(full_rows(2)), churn())
    };
    let bad = |sequence: u64, req: pb::ScoreRequest| pb::ScoreRequest { sequence, ..req };
    type Expect = Option<(Code, &'static [&'static str])>;
    let chunks: Vec<(pb::ScoreRequest, Expect)> = vec![
        (good(1), None),
        (
            bad(2, request(matrix(full_rows(2)), vec![model("nope", 0)])),
            Some((Code::NotFound, &["`nope`"])),
        ),
        (good(3), None),
        (
            bad(4, churn_with(i64_col("region", vec![1, 2]))),
            Some((Code::InvalidArgument, &["`region`", "dtype category"])),
        ),
        (
            bad(5, request(matrix(full_rows(MAX_ROWS + 1)), churn())),
            Some((Code::ResourceExhausted, &["101 rows", "limit of 100"])),
        ),
        (
            bad(
                6,
                pb::ScoreRequest {
                    entity_ids: vec!["PII-x".into()],
                    ..request(matrix(full_rows(2)), churn())
                },
            ),
            Some((Code::InvalidArgument, &["1 entity_ids", "2 rows"])),
        ),
        (
            bad(
                7,
                churn_with(f32_col("recency_days", vec![f32::INFINITY, 1.0])),
            ),
            Some((
                Code::InvalidArgument,
                &["`recency_days`", "row 0", "out of range"],
            )),
        ),
        (
            bad(8, request(matrix(vec![]), churn())),
            Some((Code::InvalidArgument, &["no rows"])),
        ),
        (good(9), None),
    ];
    let bad_chunks = chunks.iter().filter(|(_, e)| e.is_some()).count();
    let want_scores = app.score(good(0)).await.unwrap().models[0].scores.clone();
    let requests: Vec<pb::ScoreRequest> = chunks.iter().map(|(r, _)| r.clone()).collect();
    let mut answers = app
        .client
        .clone()
        .score_stream(futures::stream::iter(requests))
        .await
        .expect("ScoreStream opens")
        .into_inner();
    for (req, expect) in &chunks {
        let name = format!("ScoreStream chunk {}", req.sequence);
        let answer = match answers.message().await {
            Ok(Some(a)) => a,
            other => {
                problems.push(format!("{name}: stream ended early: {other:?}"));
                return bad_chunks;
            }
        };
        if answer.sequence != req.sequence {
            problems.push(format!(
                "{name}: answered out of order ({})",
                answer.sequence
            ));
        }
        match (expect, answer.error) {
            (None, None) => {
                if answer.models.first().map(|m| &m.scores) != Some(&want_scores) {
                    problems.push(format!("{name}: good chunk scored differently"));
                }
            }
            (None, Some(e)) => problems.push(format!("{name}: good chunk failed: {e:?}")),
            (Some(_), None) => problems.push(format!("{name}: bad chunk was scored")),
            (Some((code, needles)), Some(e)) => {
                let got = Err(Status::new(Code::from_i32(e.code), e.message));
                problems.extend(judge(&name, *code, needles, got));
            }
        }
    }
    match answers.message().await {
        Ok(None) => {}
        other => problems.push(format!("ScoreStream: expected a clean end, got {other:?}")),
    }
    bad_chunks
}

/// An undecodable chunk in the middle of a ScoreStream ends the whole stream
/// with INVALID_ARGUMENT after the chunks before it are answered, rather than
/// an `error` answer for that chunk: past bytes that are not protobuf, the
/// stream's framing can no longer be trusted.
async fn stream_with_undecodable_chunk(app: &TestApp, problems: &mut Vec<String>) {
    let good = |sequence: u64| {
        RawMessage(
            pb::ScoreRequest {
                sequence,
                ..request(matrix(full_rows(2)), churn())
            }
            .encode_to_vec(),
        )
    };
    let bad = RawMessage(concat(&[
        &pb::ScoreRequest {
            sequence: 2,
            ..request(matrix(full_rows(2)), churn())
        }
        .encode_to_vec(),
        &field(2, BAD_UTF8),
    ]));
    let mut grpc = tonic::client::Grpc::new(channel(app));
    grpc.ready().await.unwrap();
    let mut answers = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(vec![good(1), bad, good(3)])),
            PathAndQuery::from_static(SCORE_STREAM),
            tonic_prost::ProstCodec::<RawMessage, pb::ScoreResponse>::default(),
        )
        .await
        .expect("ScoreStream opens")
        .into_inner();
    let mut seen = Vec::new();
    let end = loop {
        match answers.message().await {
            Ok(Some(a)) => seen.push((a.sequence, a.error.map(|e| e.code))),
            Ok(None) => break None,
            Err(s) => break Some(s),
        }
    };
    if seen != [(1, None)] {
        problems.push(format!(
            "ScoreStream undecodable chunk: expected only chunk 1 answered, got {seen:?}"
        ));
    }
    let code = end.as_ref().map(Status::code);
    if code != Some(Code::InvalidArgument) {
        problems.push(format!(
            "ScoreStream undecodable chunk: expected the stream to end with InvalidArgument, got {end:?}"
        ));
    }
}

/// Rows `range` of `m`, for requests under the row limit.
fn rows_of(m: &pb::FeatureMatrix, range: std::ops::Range<usize>) -> pb::FeatureMatrix {
    let (start, end) = (range.start, range.end);
    let columns = m
        .columns
        .iter()
        .map(|c| {
            let values = c.values.clone().map(|v| match v {
                Values::F32(v) => Values::F32(pb::FloatValues {
                    values: v.values[start..end].to_vec(),
                }),
                Values::F64(v) => Values::F64(pb::DoubleValues {
                    values: v.values[start..end].to_vec(),
                }),
                Values::I64(v) => Values::I64(pb::Int64Values {
                    values: v.values[start..end].to_vec(),
                }),
                Values::Bool(v) => Values::Bool(pb::BoolValues {
                    values: v.values[start..end].to_vec(),
                }),
                Values::Category(v) => Values::Category(pb::StringValues {
                    values: v.values[start..end].to_vec(),
                }),
            });
            let missing_rows = c
                .missing_rows
                .iter()
                .filter(|r| (start..end).contains(&(**r as usize)))
                .map(|r| r - start as u32)
                .collect();
            pb::FeatureColumn {
                name: c.name.clone(),
                values,
                missing_rows,
            }
        })
        .collect();
    pb::FeatureMatrix {
        rows: (end - start) as u32,
        columns,
    }
}

/// Every shipped version reproduces its golden set through `Score`, in
/// requests of at most `MAX_ROWS` rows; returns the versions checked.
async fn golden_sets_still_reproduce(app: &TestApp) -> usize {
    let mut checked = 0;
    for (name, versions) in scan(&shipped_models()).unwrap() {
        for (version, dir) in versions {
            let manifest = manifest(&name, version);
            let (features, expected) =
                csv_matrix(&dir.join(&manifest.golden.file), &manifest, "expected");
            let rows = features.rows as usize;
            assert_eq!(rows, expected.len());
            for start in (0..rows).step_by(MAX_ROWS) {
                let end = (start + MAX_ROWS).min(rows);
                let resp = app
                    .score(request(
                        rows_of(&features, start..end),
                        vec![model(&name, version)],
                    ))
                    .await
                    .unwrap_or_else(|s| panic!("{name} v{version} after the corpus: {s:?}"));
                let scores = &resp.models[0];
                assert_eq!(
                    (scores.name.as_str(), scores.version, scores.sha256.as_str()),
                    (name.as_str(), version, manifest.sha256.as_str())
                );
                assert_eq!(scores.scores.len(), end - start);
                for (i, (got, want)) in scores.scores.iter().zip(&expected[start..end]).enumerate()
                {
                    let want: f64 = want.parse().unwrap();
                    assert!(
                        close(*got, want, manifest.golden.tolerance),
                        "{name} v{version} row {}: server {got}, reference {want}",
                        start + i
                    );
                }
            }
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_its_exact_status_and_the_server_survives() {
    let panics = count_panics();
    let main = spawn_app_with(&shipped_models(), |a| a.max_rows_per_request = MAX_ROWS).await;
    let small = spawn_app_with(&shipped_models(), |a| a.max_message_bytes = MAX_BYTES).await;
    let app = |server: Server| match server {
        Server::Rows100 => &main,
        Server::Bytes16k => &small,
    };

    let table: Vec<Case> = [score_cases(), infer_cases(), size_cases(), decode_cases()]
        .into_iter()
        .flatten()
        .collect();
    let mut names = std::collections::HashSet::new();
    for c in &table {
        assert!(names.insert(c.name), "case `{}` is listed twice", c.name);
        assert_ne!(c.code, Code::Ok, "case `{}` is not malformed", c.name);
    }
    let mut problems = Vec::new();
    let mut malformed = table.len();
    for c in table.into_iter().chain(lenient_cases()) {
        let got = send(app(c.server), c.call).await;
        problems.extend(judge(c.name, c.code, c.needles, got));
    }
    malformed += stream_corpus(&main, &mut problems).await;

    stream_with_undecodable_chunk(&main, &mut problems).await;
    malformed += 1;

    assert!(
        problems.is_empty(),
        "{} of {malformed} cases are off:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(malformed >= 60, "only {malformed} malformed requests");
    eprintln!("{malformed} malformed requests answered as expected");

    // The servers are still up and still right.
    for (which, server) in [("rows-limited", &main), ("size-limited", &small)] {
        let handle = server.handle.as_ref().expect("not stopped");
        assert!(!handle.is_finished(), "the {which} server stopped");
    }
    assert!(golden_sets_still_reproduce(&main).await >= 5);
    let small_ok = small
        .score(request(matrix(full_rows(2)), churn()))
        .await
        .unwrap();
    let main_ok = main
        .score(request(matrix(full_rows(2)), churn()))
        .await
        .unwrap();
    assert_eq!(small_ok.models[0].scores, main_ok.models[0].scores);
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a panic happened (see stderr)"
    );
    main.stop().await.unwrap();
    small.stop().await.unwrap();
}

/// SplitMix64: a seeded generator, so the random bodies (and any failure)
/// are the same on every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// 1,000 random bodies, each framed as a gRPC message (so they reach the
/// decoder) and each not valid protobuf for the method it is sent to,
/// alternately Score and ModelInfer: every one is the caller's
/// INVALID_ARGUMENT with a short message, never our INTERNAL, and the server
/// still scores every golden set afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_are_invalid_argument_and_the_server_still_scores() {
    const BODIES: usize = 1000;
    let app = spawn_app_with(&shipped_models(), |a| a.max_rows_per_request = MAX_ROWS).await;
    let mut grpc = tonic::client::Grpc::new(channel(&app));
    let mut rng = SplitMix64(0x5e95_c02e);
    let (mut sent, mut skipped) = (0, 0);
    let mut problems = Vec::new();
    while sent < BODIES {
        let len = 1 + (rng.next() % 300) as usize;
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let (path, decodes) = if sent % 2 == 0 {
            (SCORE, pb::ScoreRequest::decode(body.as_slice()).is_ok())
        } else {
            (
                MODEL_INFER,
                oip::ModelInferRequest::decode(body.as_slice()).is_ok(),
            )
        };
        if decodes {
            // Valid protobuf by chance: a request, not what this test is about.
            skipped += 1;
            continue;
        }
        grpc.ready().await.unwrap();
        let got = grpc
            .unary(
                tonic::Request::new(RawMessage(body)),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<RawMessage, RawMessage>::default(),
            )
            .await;
        match got {
            Err(s) if s.code() == Code::InvalidArgument && s.message().len() < 512 => {}
            other => problems.push(format!("body {sent} ({len} bytes) to {path}: {other:?}")),
        }
        sent += 1;
    }
    assert!(
        problems.is_empty(),
        "{} of {BODIES} bodies were answered otherwise:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(skipped < BODIES, "{skipped} random bodies decoded");
    let handle = app.handle.as_ref().expect("not stopped");
    assert!(!handle.is_finished(), "the server stopped");
    assert!(golden_sets_still_reproduce(&app).await >= 5);
    app.stop().await.unwrap();
}
