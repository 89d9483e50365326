//! segscore's own JSON API: `POST /v1/score` (named features as rows of
//! objects or as columns, any models, segments), the models and segments
//! lists, and segment membership for one customer or a list of them, the
//! calls a web page or a backend makes without protobuf.
//!
//! Requests become an [`infer::Request`] whose features stay JSON until the
//! core has admitted them ([`JsonFeatures`] is their [`infer::Features`]);
//! answers are the core's [`infer::Scored`] through the same conversion as
//! segscore.v1 (`pb::ScoreResponse::scored`), written as JSON.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{parse_json, Body, Deadline, HttpState, ScoredBy};
use crate::{
    api::models::model_infos,
    echo::echo,
    error::ApiError,
    features::{Column, ColumnValues, FeatureBatch},
    infer,
    proto::pb,
    repository::LoadedModel,
    segments::Segments,
};

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/score", post(score))
        .route("/v1/models", get(list_models))
        .route("/v1/segments", get(list_segments))
        .route("/v1/segments/{name}/members", post(segment_members))
        .route("/v1/customers/{id}/segments", post(customer_segments))
}

/// A model to score: its name, or an object pinning a version or a label.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ModelSpec {
    /// The default version (with its canary split when entity ids are sent).
    Name(String),
    Pinned {
        name: String,
        /// 0 or absent: not pinned.
        #[serde(default)]
        version: u64,
        /// e.g. `stable`, `canary`; absent: not pinned.
        #[serde(default)]
        label: String,
    },
}

impl From<ModelSpec> for infer::ModelRef {
    fn from(m: ModelSpec) -> Self {
        match m {
            ModelSpec::Name(name) => infer::ModelRef::named(name),
            ModelSpec::Pinned {
                name,
                version,
                label,
            } => infer::ModelRef {
                name,
                version,
                label,
            },
        }
    }
}

/// Named features, in one of two shapes: `rows` (one object per row,
/// `{"feature": value}`) or `columns` (`{"feature": [value per row]}`).
/// Values are numbers, booleans, strings (category features) or `null`
/// (missing: imputed or refused per the model's manifest); a feature absent
/// from a row is missing too.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesJson {
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rows: Option<Vec<Map<String, Value>>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub columns: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Models to score, in answer order.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
    /// Segments to evaluate (the models they read are scored too).
    #[serde(default)]
    pub segments: Vec<String>,
    /// One per row, or none: they route rows in a canary split and are
    /// echoed back; never logged.
    #[serde(default)]
    pub entity_ids: Vec<String>,
    #[serde(flatten)]
    pub features: FeaturesJson,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelScores {
    pub name: String,
    pub version: u64,
    /// sha256 of the model file that scored the rows.
    pub sha256: String,
    /// binary_classification, regression, clustering...
    pub task: String,
    /// One per row: probability of the positive class, regression value,
    /// or distance to the cluster centroid.
    pub scores: Vec<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_ids: Vec<u32>,
    /// A canary split: these rows were scored by the canary version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probabilities: Vec<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Canary {
    pub version: u64,
    pub sha256: String,
    pub rows: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RowError {
    pub row: u32,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentMembers {
    pub name: String,
    /// Member rows, ascending.
    pub member_rows: Vec<u32>,
    /// The members' entity ids, when the request sent ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Rows the rule could not be evaluated on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RowError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreResponse {
    pub rows: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entity_ids: Vec<String>,
    pub models: Vec<ModelScores>,
    pub segments: Vec<SegmentMembers>,
}

/// `TASK_BINARY_CLASSIFICATION` → `binary_classification`.
fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn task_name(task: i32) -> String {
    pb::Task::try_from(task).map_or_else(
        |_| "unspecified".into(),
        |t| enum_name(t.as_str_name(), "TASK_"),
    )
}

impl From<pb::ScoreResponse> for ScoreResponse {
    fn from(r: pb::ScoreResponse) -> Self {
        let ids = r.entity_ids;
        let segments = r
            .segments
            .into_iter()
            .map(|s| SegmentMembers {
                members: if ids.is_empty() {
                    Vec::new()
                } else {
                    s.member_rows
                        .iter()
                        .filter_map(|&row| ids.get(row as usize).cloned())
                        .collect()
                },
                name: s.name,
                member_rows: s.member_rows,
                errors: s
                    .errors
                    .into_iter()
                    .map(|e| RowError {
                        row: e.row,
                        reason: e.reason,
                    })
                    .collect(),
            })
            .collect();
        Self {
            rows: r.rows,
            models: r
                .models
                .into_iter()
                .map(|m| ModelScores {
                    task: task_name(m.task),
                    canary: (m.canary_version != 0).then_some(Canary {
                        version: m.canary_version,
                        sha256: m.canary_sha256,
                        rows: m.canary_rows,
                    }),
                    name: m.name,
                    version: m.version,
                    sha256: m.sha256,
                    scores: m.scores,
                    cluster_ids: m.cluster_ids,
                    classes: m.classes,
                    probabilities: m.probabilities,
                    labels: m.labels,
                })
                .collect(),
            segments,
            entity_ids: ids,
        }
    }
}

/// A JSON request's features, converted only once the core has admitted
/// the request.
pub struct JsonFeatures(pub FeaturesJson);

impl infer::Features for JsonFeatures {
    fn declared_rows(&self) -> Result<usize, ApiError> {
        match (&self.0.rows, &self.0.columns) {
            (Some(rows), None) => Ok(rows.len()),
            (None, Some(columns)) => Ok(columns
                .values()
                .next()
                .and_then(Value::as_array)
                .map_or(0, Vec::len)),
            (Some(_), Some(_)) => Err(ApiError::InvalidArgument(
                "send the features as `rows` or as `columns`, not both".into(),
            )),
            (None, None) => Err(ApiError::InvalidArgument(
                "the request has no features: send `rows` (objects) or `columns` (arrays)".into(),
            )),
        }
    }

    fn into_batch(self, _first: Option<&LoadedModel>) -> Result<FeatureBatch, ApiError> {
        let columns: Vec<(String, Vec<Value>)> = match (self.0.rows, self.0.columns) {
            (Some(rows), None) => {
                // Every feature any row names, in order of first appearance;
                // a row without it has it missing.
                let mut names: Vec<String> = Vec::new();
                for row in &rows {
                    for name in row.keys() {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                    }
                }
                names
                    .into_iter()
                    .map(|name| {
                        let values = rows
                            .iter()
                            .map(|row| row.get(&name).cloned().unwrap_or(Value::Null))
                            .collect();
                        (name, values)
                    })
                    .collect()
            }
            (None, Some(columns)) => columns
                .into_iter()
                .map(|(name, values)| match values {
                    Value::Array(values) => Ok((name, values)),
                    _ => Err(ApiError::InvalidArgument(format!(
                        "column `{}` is not an array of values",
                        echo(&name)
                    ))),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(self_declared_error()),
        };
        let columns = columns
            .into_iter()
            .map(|(name, values)| json_column(&name, &values).map(|c| (name, c)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeatureBatch::new(0, columns)?)
    }
}

/// Unreachable after `declared_rows` passed; kept an error, not a panic.
fn self_declared_error() -> ApiError {
    ApiError::InvalidArgument("send the features as `rows` or as `columns`".into())
}

/// One feature's JSON values as a typed column: numbers, booleans or
/// strings (one kind per feature), `null` for missing.
fn json_column(name: &str, values: &[Value]) -> Result<Column, ApiError> {
    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Number,
        Bool,
        Text,
    }
    let kind_of = |v: &Value| match v {
        Value::Number(_) => Some(Kind::Number),
        Value::Bool(_) => Some(Kind::Bool),
        Value::String(_) => Some(Kind::Text),
        _ => None,
    };
    let mut kind = None;
    let mut missing = Vec::new();
    for (row, v) in values.iter().enumerate() {
        if v.is_null() {
            missing.push(row as u32);
            continue;
        }
        let k = kind_of(v).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "feature `{}` row {row}: a value is a number, a boolean, a string or null",
                echo(name)
            ))
        })?;
        match kind {
            None => kind = Some(k),
            Some(seen) if seen != k => {
                return Err(ApiError::InvalidArgument(format!(
                    "feature `{}` row {row}: mixes {} with the {} of earlier rows",
                    echo(name),
                    describe(k),
                    describe(seen)
                )))
            }
            _ => {}
        }
    }
    fn describe(k: Kind) -> &'static str {
        match k {
            Kind::Number => "numbers",
            Kind::Bool => "booleans",
            Kind::Text => "strings",
        }
    }
    let column_values = match kind.unwrap_or(Kind::Number) {
        Kind::Number => ColumnValues::F64(
            values
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN))
                .collect(),
        ),
        Kind::Bool => ColumnValues::Bool(
            values
                .iter()
                .map(|v| v.as_bool().unwrap_or(false))
                .collect(),
        ),
        Kind::Text => ColumnValues::Category(
            values
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
        ),
    };
    Column::new(column_values)
        .with_missing_rows(&missing)
        .map_err(|e| ApiError::InvalidArgument(format!("feature `{}`: {e}", echo(name))))
}

/// Scores features with models and segments.
#[utoipa::path(
    post, path = "/v1/score", tag = "segscore",
    request_body = ScoreRequest,
    responses(
        (status = 200, body = ScoreResponse),
        (status = 400, description = "malformed request, unknown feature, bad value", body = ErrorBody),
        (status = 404, description = "unknown model, version, label or segment", body = ErrorBody),
        (status = 413, description = "body or rows over the limit", body = ErrorBody),
        (status = 429, description = "server at its concurrency limit or queue full", body = ErrorBody),
        (status = 504, description = "deadline (`Timeout` header) passed", body = ErrorBody),
    )
)]
async fn score(
    State(state): State<Arc<HttpState>>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: ScoreRequest = parse_json(&body)?;
    let request = infer::Request {
        models: req.models.into_iter().map(Into::into).collect(),
        segments: req.segments,
        entity_ids: req.entity_ids,
        features: JsonFeatures(req.features),
    };
    scored(state.scorer.score(request, deadline).await?)
}

/// The answer, with the versions that scored it for the request metrics.
fn scored(scored: infer::Scored) -> Result<Response, ApiError> {
    let answer = pb::ScoreResponse::scored(0, scored);
    let by = scored_by(&answer);
    let mut response = Json(ScoreResponse::from(answer)).into_response();
    response.extensions_mut().insert(by);
    Ok(response)
}

fn scored_by(answer: &pb::ScoreResponse) -> ScoredBy {
    ScoredBy(
        answer
            .models
            .iter()
            .flat_map(|m| {
                let canary = (m.canary_version != 0).then(|| (m.name.clone(), m.canary_version));
                std::iter::once((m.name.clone(), m.version)).chain(canary)
            })
            .collect(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The same message gRPC sends for this failure.
    pub error: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureInfo {
    pub name: String,
    /// f32, f64, i64, bool or category.
    pub dtype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// reject or impute.
    pub missing: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub version: u64,
    /// serving, loading, validating, draining, failed, retired.
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub format: String,
    pub task: String,
    pub sha256: String,
    pub labels: Vec<String>,
    pub features: Vec<FeatureInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    /// What requests that pin nothing get; 0 = nothing serving.
    pub default_version: u64,
    pub versions: Vec<VersionInfo>,
    #[schema(value_type = Object)]
    pub labels: std::collections::BTreeMap<String, u64>,
    pub canary_percent: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

/// Every model, its versions and their state, as ListModels reports them.
#[utoipa::path(get, path = "/v1/models", tag = "segscore", responses((status = 200, body = ModelList)))]
async fn list_models(State(state): State<Arc<HttpState>>) -> Json<ModelList> {
    let models = model_infos(&state.scorer.repository().load())
        .into_iter()
        .map(|m| ModelInfo {
            name: m.name,
            default_version: m.default_version,
            labels: m.labels.into_iter().collect(),
            canary_percent: m.canary_percent,
            versions: m
                .versions
                .into_iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    state: pb::VersionState::try_from(v.state).map_or_else(
                        |_| "unspecified".into(),
                        |s| enum_name(s.as_str_name(), "VERSION_STATE_"),
                    ),
                    reason: v.reason,
                    format: v.format,
                    task: task_name(v.task),
                    sha256: v.sha256,
                    labels: v.labels,
                    features: v
                        .features
                        .into_iter()
                        .map(|f| FeatureInfo {
                            name: f.name,
                            dtype: f.dtype,
                            min: f.min,
                            max: f.max,
                            categories: f.categories,
                            missing: f.missing,
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    Json(ModelList { models })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentInfo {
    pub name: String,
    pub description: String,
    /// The CEL rule as written.
    pub rule: String,
    /// Models whose scores the rule reads.
    pub models: Vec<String>,
    /// ready or failed.
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentList {
    pub segments: Vec<SegmentInfo>,
}

/// The segments of the rules file (`--segments`).
#[utoipa::path(get, path = "/v1/segments", tag = "segscore", responses((status = 200, body = SegmentList)))]
async fn list_segments(State(state): State<Arc<HttpState>>) -> Json<SegmentList> {
    let segments = state.scorer.segments().load();
    Json(SegmentList {
        segments: segments
            .segments()
            .iter()
            .map(|s| SegmentInfo {
                name: s.name.clone(),
                description: s.description.clone(),
                rule: s.rule.clone(),
                models: s.models().to_vec(),
                state: if s.state.is_ok() { "ready" } else { "failed" }.into(),
                reason: s.reason(),
            })
            .collect(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersRequest {
    /// One per row: the customers the rows describe.
    pub entity_ids: Vec<String>,
    #[serde(flatten)]
    pub features: FeaturesJson,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersResponse {
    pub segment: String,
    /// The entity ids of the rows in the segment, in request order.
    pub members: Vec<String>,
    /// Rows the rule could not be evaluated on (with the entity id).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<EntityError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntityError {
    pub entity_id: String,
    pub reason: String,
}

/// Which of these customers are in segment `name`.
#[utoipa::path(
    post, path = "/v1/segments/{name}/members", tag = "segscore",
    params(("name" = String, Path, description = "segment name")),
    request_body = MembersRequest,
    responses((status = 200, body = MembersResponse), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody))
)]
async fn segment_members(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: MembersRequest = parse_json(&body)?;
    if req.entity_ids.is_empty() {
        return Err(ApiError::InvalidArgument(
            "`entity_ids` is required: one per row, the members are answered by id".into(),
        ));
    }
    let request = infer::Request {
        models: Vec::new(),
        segments: vec![name.clone()],
        entity_ids: req.entity_ids,
        features: JsonFeatures(req.features),
    };
    let scored = state.scorer.score(request, deadline).await?;
    let answer = pb::ScoreResponse::scored(0, scored);
    let by = scored_by(&answer);
    let ids = &answer.entity_ids;
    let id = |row: u32| ids.get(row as usize).cloned().unwrap_or_default();
    let membership = answer.segments.first();
    let body = MembersResponse {
        segment: name,
        members: membership
            .map(|m| m.member_rows.iter().map(|&r| id(r)).collect())
            .unwrap_or_default(),
        errors: membership
            .map(|m| {
                m.errors
                    .iter()
                    .map(|e| EntityError {
                        entity_id: id(e.row),
                        reason: e.reason.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(by);
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// The customer's features, `{"feature": value}`.
    #[schema(value_type = Object)]
    pub features: Map<String, Value>,
    /// The segments to check; absent = every ready segment.
    #[serde(default)]
    pub segments: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerSegments {
    pub customer_id: String,
    /// The segments the customer is in, in rules-file order.
    pub segments: Vec<String>,
    /// The segments that were checked.
    pub checked: Vec<String>,
    /// Segments whose rule could not be evaluated for this customer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<SegmentError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentError {
    pub segment: String,
    pub reason: String,
}

fn ready_segments(segments: &Segments) -> Vec<String> {
    segments
        .segments()
        .iter()
        .filter(|s| s.state.is_ok())
        .map(|s| s.name.clone())
        .collect()
}

/// The segments one customer is in, from the features the caller sends.
#[utoipa::path(
    post, path = "/v1/customers/{id}/segments", tag = "segscore",
    params(("id" = String, Path, description = "the customer's entity id (routes a canary split; never logged)")),
    request_body = CustomerRequest,
    responses((status = 200, body = CustomerSegments), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn customer_segments(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: CustomerRequest = parse_json(&body)?;
    let checked = match req.segments {
        Some(names) => names,
        None => ready_segments(&state.scorer.segments().load()),
    };
    if checked.is_empty() {
        return Err(ApiError::FailedPrecondition(
            "no segment is ready to check (see GET /v1/segments)".into(),
        ));
    }
    let request = infer::Request {
        models: Vec::new(),
        segments: checked.clone(),
        entity_ids: vec![id.clone()],
        features: JsonFeatures(FeaturesJson {
            rows: Some(vec![req.features]),
            columns: None,
        }),
    };
    let scored = state.scorer.score(request, deadline).await?;
    let answer = pb::ScoreResponse::scored(0, scored);
    let by = scored_by(&answer);
    let body = CustomerSegments {
        customer_id: id,
        segments: answer
            .segments
            .iter()
            .filter(|s| !s.member_rows.is_empty())
            .map(|s| s.name.clone())
            .collect(),
        errors: answer
            .segments
            .iter()
            .flat_map(|s| {
                s.errors.iter().map(|e| SegmentError {
                    segment: s.name.clone(),
                    reason: e.reason.clone(),
                })
            })
            .collect(),
        checked,
    };
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(by);
    Ok(response)
}
