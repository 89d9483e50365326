//! The shipped behavioural clusters (smartcore K-Means): served cluster ids
//! equal smartcore's own `predict`, distances equal an independent
//! computation from the model file, over segscore.v1 and the OIP.

use segscore::{
    engine::smartcore::{kmeans_centroids, SmartcoreModel, SmartcoreModelFile},
    features::FeatureSchema,
    proto::{
        oip::{
            self, grpc_inference_service_client::GrpcInferenceServiceClient,
            model_infer_request::InferRequestedOutputTensor,
        },
        pb,
    },
    repository::{load::read_csv_batch, Task},
};
use smartcore::linalg::basic::matrix::DenseMatrix;

use crate::helpers::*;

const NAME: &str = "clusters";

/// The model file of the shipped clusters version.
fn model_file(version: u64) -> SmartcoreModelFile {
    let m = manifest(NAME, version);
    let path = shipped_models()
        .join(NAME)
        .join(version.to_string())
        .join(&m.file);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// smartcore's predict and the Euclidean distance to that centroid, both on
/// the standardised rows of `encoded` (`rows` x `width`, row-major).
fn reference(file: &SmartcoreModelFile, encoded: &[f32], width: usize) -> (Vec<u32>, Vec<f64>) {
    let SmartcoreModel::KMeans { model } = &file.model else {
        panic!("the clusters model is not K-Means");
    };
    let s = &file.standardize;
    let scaled: Vec<f64> = encoded
        .chunks_exact(width)
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, &v)| (f64::from(v) - s.mean[j]) / s.scale[j])
        })
        .collect();
    let rows = scaled.len() / width;
    let matrix = DenseMatrix::new(rows, width, scaled.clone(), false).unwrap();
    let ids: Vec<u32> = model
        .predict(&matrix)
        .unwrap()
        .into_iter()
        .map(|c| c as u32)
        .collect();
    let centroids = kmeans_centroids(model).unwrap();
    let distances = scaled
        .chunks_exact(width)
        .zip(&ids)
        .map(|(x, &id)| {
            x.iter()
                .zip(&centroids[id as usize])
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    (ids, distances)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ids_and_distances_match_smartcore_on_sample_users_and_golden_rows() {
    let app = spawn_app().await;
    let version = latest_version(NAME);
    let m = manifest(NAME, version);
    assert_eq!(m.task, Task::Clustering);
    let schema = FeatureSchema::new(m.features.clone()).unwrap();
    let file = model_file(version);
    let golden = shipped_models()
        .join(NAME)
        .join(version.to_string())
        .join(&m.golden.file);
    for (path, expected_column) in [(sample_users(), ""), (golden, "expected_cluster")] {
        let (batch, expected) = read_csv_batch(&path, &schema, expected_column).unwrap();
        let encoded = schema.encode(&batch, 0..batch.rows()).unwrap();
        let (want_ids, want_distances) =
            reference(&file, encoded.as_slice().unwrap(), schema.len());
        let resp = app
            .score(request(batch.into(), vec![model(NAME, 0)]))
            .await
            .unwrap();
        let scored = &resp.models[0];
        assert_eq!(scored.task, pb::Task::Clustering as i32);
        assert_eq!(scored.cluster_ids, want_ids, "{}", path.display());
        assert_eq!(scored.scores.len(), want_distances.len());
        for (row, (got, want)) in scored.scores.iter().zip(&want_distances).enumerate() {
            assert!(close(*got, *want, 1e-5), "row {row}: {got} vs {want}");
        }
        if !expected.is_empty() {
            let golden_ids: Vec<u32> = expected.iter().map(|e| e.parse().unwrap()).collect();
            assert_eq!(scored.cluster_ids, golden_ids);
        }
        // Real clusters: the sample spreads over more than one of them.
        let mut seen = want_ids.clone();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 3, "{}: clusters {seen:?}", path.display());
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oip_returns_score_and_cluster_id_outputs() {
    let app = spawn_app().await;
    let version = latest_version(NAME);
    let m = manifest(NAME, version);
    let schema = FeatureSchema::new(m.features.clone()).unwrap();
    let (batch, _) = read_csv_batch(&sample_users(), &schema, "").unwrap();
    let encoded = schema.encode(&batch, 0..200).unwrap();
    let (want_ids, _) = reference(
        &model_file(version),
        encoded.as_slice().unwrap(),
        schema.len(),
    );
    let mut oip_client = GrpcInferenceServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();

    let metadata = oip_client
        .model_metadata(oip::ModelMetadataRequest {
            name: NAME.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let outputs: Vec<(&str, &str)> = metadata
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype.as_str()))
        .collect();
    assert_eq!(outputs, [("score", "FP32"), ("cluster_id", "UINT32")]);

    let request = |outputs: Vec<&str>| oip::ModelInferRequest {
        model_name: NAME.into(),
        inputs: vec![oip::model_infer_request::InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![200, schema.len() as i64],
            contents: Some(oip::InferTensorContents {
                fp32_contents: encoded.iter().copied().collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        outputs: outputs
            .into_iter()
            .map(|name| InferRequestedOutputTensor {
                name: name.into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let all = oip_client
        .model_infer(request(vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.outputs.len(), 2);
    assert_eq!(all.outputs[1].name, "cluster_id");
    assert_eq!(all.outputs[1].shape, [200]);
    assert_eq!(
        all.outputs[1].contents.as_ref().unwrap().uint_contents,
        want_ids
    );
    assert_eq!(
        all.outputs[0]
            .contents
            .as_ref()
            .unwrap()
            .fp32_contents
            .len(),
        200
    );

    let only_ids = oip_client
        .model_infer(request(vec!["cluster_id"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_ids.outputs.len(), 1);
    assert_eq!(only_ids.outputs[0].name, "cluster_id");

    let err = oip_client
        .model_infer(request(vec!["probability"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("`score`, `cluster_id`"),
        "{}",
        err.message()
    );
    app.stop().await.unwrap();
}

#[test]
fn the_model_card_describes_every_cluster() {
    let m = manifest(NAME, latest_version(NAME));
    let file = model_file(latest_version(NAME));
    let SmartcoreModel::KMeans { model } = &file.model else {
        panic!("not K-Means");
    };
    let k = kmeans_centroids(model).unwrap().len();
    let clusters = m.card["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), k);
    let mut shares = 0.0;
    for (i, c) in clusters.iter().enumerate() {
        assert_eq!(c["id"].as_integer(), Some(i as i64));
        assert!(!c["label"].as_str().unwrap().is_empty());
        assert!(c["train_rows"].as_integer().unwrap() > 0);
        shares += c["valid_share"].as_float().unwrap();
        let centroid = c["centroid"].as_table().unwrap();
        for f in &m.features {
            assert!(centroid[&f.name].as_float().unwrap().is_finite());
        }
    }
    assert!((shares - 1.0).abs() < 1e-3, "shares sum to {shares}");
}
