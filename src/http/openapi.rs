//! The OpenAPI 3.1 document of the segscore JSON API, generated from the
//! handlers' and types' own annotations (utoipa), so it cannot drift from
//! the code; served at `/openapi.json`. The KServe V2 routes follow the
//! Open Inference Protocol's published REST specification and are listed
//! there by reference.

use axum::{response::IntoResponse, Json};
use utoipa::OpenApi;

use super::v1;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "segscore REST API",
        description = "segscore JSON (`/v1`). The KServe V2 Open Inference Protocol REST routes \
                       (`/v2`, `/v2/health/{live,ready}`, `/v2/models/{model}[/versions/{version}]\
                       [/ready|/config|/stats|/infer]`, `POST /v2/repository/index`) follow the \
                       Open Inference Protocol REST specification with Triton's binary tensor \
                       data extension; see docs/api.md."
    ),
    paths(
        v1::score,
        v1::list_models,
        v1::list_segments,
        v1::segment_members,
        v1::customer_segments
    ),
    components(schemas(
        v1::ScoreRequest,
        v1::ScoreResponse,
        v1::ModelSpec,
        v1::FeaturesJson,
        v1::ModelScores,
        v1::Canary,
        v1::SegmentMembers,
        v1::RowError,
        v1::ErrorBody,
        v1::ModelList,
        v1::ModelInfo,
        v1::VersionInfo,
        v1::FeatureInfo,
        v1::SegmentList,
        v1::SegmentInfo,
        v1::MembersRequest,
        v1::MembersResponse,
        v1::EntityError,
        v1::CustomerRequest,
        v1::CustomerSegments,
        v1::SegmentError
    )),
    tags((name = "segscore", description = "segscore's own JSON API"))
)]
pub struct ApiDoc;

pub async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
