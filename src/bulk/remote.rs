//! Remote mode: one `ScoreStream` per `--addr`, each pulling the next chunk
//! from a shared queue whenever it has fewer than `--in-flight` chunks out,
//! so faster servers take more of the work. The first server decides the
//! versions; every other one must serve exactly those (same sha256).

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;

use super::{
    chunk::{Flow, Prepared},
    plan::{with_models, Selected},
    select::{self, Candidates},
    write::{ModelId, Scored},
};
use crate::{
    features::{FeatureSchema, FeatureSpec},
    proto::pb::{self, scoring_client::ScoringClient},
    repository::ModelOutput,
    segments::Membership,
};

/// One server the job streams to.
pub(super) struct Remote {
    addr: String,
    client: ScoringClient<Channel>,
    refs: Vec<pb::ModelRef>,
    /// `--segments`, sent with every chunk.
    segments: Vec<String>,
}

/// A gRPC error from `addr`'s `method`, as the job reports it.
fn rpc_error(addr: &str, method: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{addr}: {method}: {:?}: {}", s.code(), s.message())
}

/// Connects to every server and chooses each model's version on the first.
pub(super) async fn open(
    addrs: &[String],
    choice: Vec<(String, u64)>,
    segment_names: &[String],
    allow_fallback: bool,
) -> anyhow::Result<(Vec<Remote>, Vec<Selected>)> {
    let mut choice = choice;
    let mut remotes = Vec::new();
    let mut selected: Option<Vec<Selected>> = None;
    for addr in addrs {
        let mut client = connect(addr).await?;
        let listed = client
            .list_models(pb::ListModelsRequest {})
            .await
            .map_err(|s| rpc_error(addr, "ListModels", s))?
            .into_inner()
            .models;
        if selected.is_none() && !segment_names.is_empty() {
            let needed = segment_models(&mut client, addr, segment_names).await?;
            if !choice.is_empty() {
                choice = with_models(choice, &needed);
            }
        }
        // The first server decides the versions (the ones it would serve
        // if every version loaded, unless pinned: see `select`); every other
        // server must serve exactly those.
        let pinned: Vec<(String, u64)> = match &selected {
            Some(s) => s
                .iter()
                .map(|m| (m.id.name.clone(), m.id.version))
                .collect(),
            // Every model listed, not only those with a serving version: a
            // model that failed must fail the job, not lose its column.
            None if choice.is_empty() => listed.iter().map(|m| (m.name.clone(), 0)).collect(),
            None => choice.clone(),
        };
        let here = select_on(addr, &listed, pinned, allow_fallback)?;
        if let Some(first) = &selected {
            same_models(&addrs[0], first, addr, &here)?;
        }
        let refs = here
            .iter()
            .map(|s| pb::ModelRef {
                name: s.id.name.clone(),
                version: s.id.version,
                label: String::new(),
            })
            .collect();
        remotes.push(Remote {
            addr: addr.clone(),
            client,
            refs,
            segments: segment_names.to_vec(),
        });
        selected.get_or_insert(here);
    }
    Ok((remotes, selected.unwrap_or_default()))
}

async fn connect(addr: &str) -> anyhow::Result<ScoringClient<Channel>> {
    let channel = Channel::from_shared(addr.to_string())
        .with_context(|| format!("--addr {addr}: not a URL such as http://127.0.0.1:50051"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(ScoringClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// The models the server's rules for `names` read; a segment the server
/// does not have, or refused, fails the job.
async fn segment_models(
    client: &mut ScoringClient<Channel>,
    addr: &str,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let listed = client
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .map_err(|s| rpc_error(addr, "ListSegments", s))?
        .into_inner()
        .segments;
    let mut needed = Vec::new();
    for name in names {
        let info = listed.iter().find(|s| &s.name == name).with_context(|| {
            format!(
                "segment `{name}` is not served by {addr} (it has: {})",
                listed
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        if !info.reason.is_empty() {
            bail!("{addr}: segment `{name}` was refused: {}", info.reason);
        }
        needed.extend(info.models.iter().cloned());
    }
    Ok(needed)
}

/// The version `addr` serves for each of `pinned`, with the schema its rows
/// are checked against before they are sent.
fn select_on(
    addr: &str,
    listed: &[pb::ModelInfo],
    pinned: Vec<(String, u64)>,
    allow_fallback: bool,
) -> anyhow::Result<Vec<Selected>> {
    let requests = pinned
        .into_iter()
        .map(|(name, version)| {
            let info = listed.iter().find(|m| m.name == name).with_context(|| {
                format!(
                    "model `{name}` not found on {addr} (it has: {})",
                    listed
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            Ok((name, version, Candidates::from_info(info, addr)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut here = Vec::new();
    for chosen in select::choose(&requests, allow_fallback)? {
        let name = chosen.name;
        let info = listed
            .iter()
            .find(|m| m.name == name)
            .expect("chosen from the listed models; this is a bug");
        // Pin the version the schema came from, so a concurrent deploy
        // cannot pair this schema with another version's model.
        let version = chosen.version;
        let v = info
            .versions
            .iter()
            .find(|v| v.version == version && v.state == pb::VersionState::Serving as i32)
            .with_context(|| {
                format!("model `{name}` version {version} is not serving on {addr}")
            })?;
        let specs = v
            .features
            .iter()
            .map(FeatureSpec::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{addr}: model `{name}`: {e}"))?;
        let schema = FeatureSchema::new(specs)
            .map_err(|e| anyhow::anyhow!("{addr}: model `{name}`: {e}"))?;
        here.push(Selected {
            id: ModelId {
                name: name.clone(),
                version,
                sha256: v.sha256.clone(),
            },
            schema,
            clustering: v.task == pb::Task::Clustering as i32,
            fallback: chosen.fallback,
        });
    }
    Ok(here)
}

/// Every server must serve the first server's versions, byte for byte.
fn same_models(
    first_addr: &str,
    first: &[Selected],
    addr: &str,
    here: &[Selected],
) -> anyhow::Result<()> {
    for (a, b) in first.iter().zip(here) {
        if a.id != b.id {
            bail!(
                "{addr} serves model `{}` version {} with sha256 {}, but {first_addr} has {}",
                b.id.name,
                b.id.version,
                b.id.sha256,
                a.id.sha256
            );
        }
    }
    Ok(())
}

/// Feeds the shared queue from the prepared chunks and runs one stream per
/// server until every chunk is answered.
pub(super) async fn score(
    remotes: Vec<Remote>,
    segment_names: &[String],
    prepared: &mut mpsc::Receiver<Prepared>,
    flow: &Flow,
    in_flight: usize,
) -> anyhow::Result<()> {
    let (work_tx, work_rx) = mpsc::channel::<Prepared>(1);
    let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
    let model_count = remotes.first().map_or(0, |r| r.refs.len());
    let dispatch = async {
        while let Some(p) = prepared.recv().await {
            if !flow.room().await {
                break; // the writer failed
            }
            if p.batch.is_none() {
                flow.empty(p, model_count, segment_names.len());
            } else if work_tx.send(p).await.is_err() {
                break;
            }
        }
        drop(work_tx);
        anyhow::Ok(())
    };
    let streams = remotes
        .into_iter()
        .map(|r| stream_to(r, work_rx.clone(), flow.done.clone(), in_flight));
    futures::future::try_join(dispatch, futures::future::try_join_all(streams)).await?;
    Ok(())
}

/// One ScoreStream to one server: sends chunks from the shared queue while
/// fewer than `in_flight` are unanswered, hands each answer to the writer.
async fn stream_to(
    remote: Remote,
    work: Arc<tokio::sync::Mutex<mpsc::Receiver<Prepared>>>,
    done: mpsc::UnboundedSender<Scored>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let Remote {
        addr,
        mut client,
        refs,
        segments,
    } = remote;
    let (req_tx, mut req_rx) = mpsc::channel::<pb::ScoreRequest>(in_flight);
    // Chunks sent and not yet answered, in send order (the server answers a
    // stream in request order).
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Prepared>();
    let slots = Arc::new(Semaphore::new(in_flight));
    let outbound = futures::stream::poll_fn(move |cx| req_rx.poll_recv(cx));
    // Owns the senders: when the queue runs dry they drop, the outbound
    // stream ends, and the server ends its answers after the last chunk.
    let send = {
        let (slots, refs, segments) = (slots.clone(), refs.clone(), segments.clone());
        async move {
            loop {
                slots
                    .acquire()
                    .await
                    .expect("slots are never closed; this is a bug")
                    .forget();
                let next = work.lock().await.recv().await;
                let Some(mut p) = next else { break };
                let batch = p
                    .batch
                    .take()
                    .expect("only chunks with rows are queued; this is a bug");
                let request = pb::ScoreRequest {
                    sequence: p.ordinal,
                    entity_ids: Vec::new(), // ids stay on this side of the wire
                    features: Some(batch.into()),
                    models: refs.clone(),
                    segments: segments.clone(),
                };
                if sent_tx.send(p).is_err() || req_tx.send(request).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        }
    };
    let receive = async {
        // No grpc-timeout: the stream lives as long as the job, and the
        // server's default deadline bounds each chunk.
        let mut responses = client
            .score_stream(tonic::Request::new(outbound))
            .await
            .map_err(|s| rpc_error(&addr, "ScoreStream", s))?
            .into_inner();
        while let Some(resp) = responses
            .message()
            .await
            .map_err(|s| rpc_error(&addr, "ScoreStream", s))?
        {
            let p = sent_rx
                .recv()
                .await
                .with_context(|| format!("{addr}: an answer to a chunk that was not sent"))?;
            let scored = read_answer(&addr, resp, p, refs.len(), &segments)?;
            slots.add_permits(1);
            if done.send(scored).is_err() {
                bail!("the writer stopped");
            }
        }
        anyhow::Ok(())
    };
    futures::future::try_join(send, receive).await?;
    // Every chunk sent must have been answered.
    if sent_rx.try_recv().is_ok() {
        bail!("{addr}: the stream ended before every chunk was answered");
    }
    Ok(())
}

/// A server's answer to chunk `p`, checked (its sequence, one score per row
/// for every model) and read into what the writer takes, segments in
/// `--segments` order whatever order the server used.
fn read_answer(
    addr: &str,
    resp: pb::ScoreResponse,
    p: Prepared,
    models: usize,
    segments: &[String],
) -> anyhow::Result<Scored> {
    if resp.sequence != p.ordinal {
        bail!(
            "{addr}: answer for chunk {} arrived where chunk {} was expected",
            resp.sequence,
            p.ordinal
        );
    }
    if let Some(e) = resp.error {
        bail!(
            "{addr}: the chunk of input rows from {} failed: {:?}: {}",
            p.first_row,
            tonic::Code::from_i32(e.code),
            e.message
        );
    }
    let scores: Vec<ModelOutput> = resp
        .models
        .into_iter()
        .map(|m| ModelOutput {
            scores: m.scores,
            cluster_ids: m.cluster_ids,
            probabilities: m.probabilities,
            labels: m.labels,
        })
        .collect();
    if scores.len() != models || scores.iter().any(|s| s.scores.len() != p.ids.len()) {
        bail!("{addr}: a malformed answer for chunk {}", p.chunk);
    }
    let memberships = segments
        .iter()
        .map(|name| {
            resp.segments
                .iter()
                .find(|m| &m.name == name)
                .map(|m| Membership {
                    member_rows: m.member_rows.clone(),
                    errors: m.errors.iter().map(|e| (e.row, e.reason.clone())).collect(),
                })
                .with_context(|| {
                    format!("{addr}: no membership for segment `{name}` in the answer")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(p.scored(scores, memberships))
}
