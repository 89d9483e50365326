//! segscore.v1 `ModelAdmin`: labels, rollback and on-demand rescans, all
//! through the [`Lifecycle`] so they serialise with the directory watcher.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::models::{model_info, model_infos};
use crate::{error::ApiError, proto::pb, repository::lifecycle::Lifecycle};

#[derive(Clone)]
pub struct AdminService {
    lifecycle: Arc<Lifecycle>,
}

impl AdminService {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }

    fn info(&self, name: &str) -> Option<pb::ModelInfo> {
        model_info(&self.lifecycle.repository().load(), name)
    }
}

#[tonic::async_trait]
impl pb::model_admin_server::ModelAdmin for AdminService {
    async fn set_label(
        &self,
        request: Request<pb::SetLabelRequest>,
    ) -> Result<Response<pb::SetLabelResponse>, Status> {
        let req = request.into_inner();
        self.lifecycle
            .set_label(req.name.clone(), req.label, req.version)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SetLabelResponse {
            model: self.info(&req.name),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let name = request.into_inner().name;
        let (from_version, to_version) = self
            .lifecycle
            .rollback(name.clone())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RollbackResponse {
            from_version,
            to_version,
            model: self.info(&name),
        }))
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        self.lifecycle
            .reconcile()
            .await
            .map_err(|e| ApiError::Internal(format!("rescanning the model directory: {e}")))?;
        let models = model_infos(&self.lifecycle.repository().load());
        Ok(Response::new(pb::ReloadResponse { models }))
    }
}
