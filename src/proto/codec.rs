//! The codec our gRPC servers decode requests with: tonic-prost's, except
//! that bytes which are not a valid protobuf message (random bodies, a
//! truncated body, an overflowing varint, unknown groups nested past prost's
//! recursion limit, a string that is not UTF-8) are the caller's
//! INVALID_ARGUMENT, with a short reason. tonic-prost answers INTERNAL, which
//! made a client's malformed bytes read as a fault of ours and set off
//! alerts meant for our own failures.
//!
//! build.rs generates the servers with this codec and the clients with
//! tonic-prost's: for a client, a response that does not decode is the
//! server's fault, INTERNAL as the gRPC status-code guide says.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::ProstEncoder;

use crate::echo::echo_up_to;

/// How much of prost's reason a status carries; its field path for our
/// messages is a few names deep.
const MAX_REASON_BYTES: usize = 256;

/// Encodes `T` as tonic-prost does; decodes `U`, mapping decode errors to
/// INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes one request message; see [`RequestCodec`].
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_request(buf).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// One request message from `buf`, or INVALID_ARGUMENT saying why not.
fn decode_request<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| undecodable(short_type_name::<U>(), &e))
}

/// The status for a request that is not a valid `message`.
fn undecodable(message: &str, error: &prost::DecodeError) -> Status {
    let text = error.to_string();
    let reason = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    Status::invalid_argument(format!(
        "the request is not a valid {message} protobuf message: {}",
        echo_up_to(reason, MAX_REASON_BYTES)
    ))
}

/// `ScoreRequest` for `segscore::proto::pb::ScoreRequest`.
fn short_type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pb;

    fn decode(bytes: &[u8]) -> Result<pb::ScoreRequest, Status> {
        decode_request(bytes)
    }

    #[test]
    fn undecodable_bytes_are_invalid_argument_with_a_short_reason() {
        let good = pb::ScoreRequest {
            models: vec![pb::ModelRef {
                name: "churn".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(decode(&good).unwrap().models[0].name, "churn");
        // Starts of a group in unknown field 15 (wire type 3), nested past
        // prost's recursion limit of 100.
        let groups = [0x7b_u8].repeat(200);
        for (what, bytes) in [
            ("truncated", &good[..good.len() - 2]),
            (
                "varint overflow",
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ][..],
            ),
            ("invalid wire type", &[0x0f][..]),
            ("deep groups", &groups[..]),
        ] {
            let status = decode(bytes).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
            assert!(
                status
                    .message()
                    .starts_with("the request is not a valid ScoreRequest protobuf message: "),
                "{what}: {}",
                status.message()
            );
            assert!(status.message().len() < 512, "{what}: {}", status.message());
        }
    }
}
