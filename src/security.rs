//! Transport security and caller authentication: TLS with rustls (optionally
//! requiring client certificates, mTLS) and bearer tokens compared in
//! constant time, each with a role (`score` or `admin`) checked against the
//! method called. Tokens are secrets: they never reach logs, `Debug` output
//! or error messages.

use std::{
    path::Path,
    str::FromStr,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use anyhow::Context;
use futures::future::{ready, Either, Ready};
use subtle::ConstantTimeEq;
use tonic::{
    codegen::{http, Service},
    server::NamedService,
    transport::{Certificate, Identity, ServerTlsConfig},
    Status,
};

use crate::{echo::echo_up_to, error::ApiError};

/// What a token may call. `Score` covers scoring and reading (Score,
/// ScoreStream, ListModels, GetModel, ListSegments, OIP ModelInfer,
/// liveness, readiness and metadata); `Admin` covers everything, including
/// what changes the served models (ModelAdmin, OIP RepositoryModelLoad and
/// RepositoryModelUnload). Ordered: `Admin` can do what `Score` can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Score,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Score => "score",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `--auth-tokens`/`SEGSCORE_AUTH_TOKENS` as written
/// (`ROLE:TOKEN` or a bare token); `Debug` prints `***`. Its role is read by
/// [`load_tokens`], which can say what is wrong without echoing the entry
/// (clap's own error for a bad value would print it).
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty bearer token".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// An accepted secret and the role it grants; `Debug` hides the secret.
#[derive(Clone)]
pub struct Credential {
    role: Role,
    secret: Box<[u8]>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:***", self.role)
    }
}

impl Credential {
    /// Reads `score:TOKEN`, `admin:TOKEN` or a bare `TOKEN` (role `score`).
    /// A token that itself holds a `:` is written with its role, as in
    /// `score:abc:def`. The error never contains the entry: the text before
    /// a `:` may be part of a secret.
    pub fn parse(entry: &str) -> Result<Self, &'static str> {
        let entry = entry.trim();
        let (role, secret) = match entry.split_once(':') {
            None => (Role::Score, entry),
            Some(("score", secret)) => (Role::Score, secret),
            Some(("admin", secret)) => (Role::Admin, secret),
            Some(_) => {
                return Err(
                    "the text before the first `:` is not a role: write `score:TOKEN` \
                            or `admin:TOKEN` (a bare token without `:` means score)",
                )
            }
        };
        if secret.is_empty() {
            return Err("the token after the role is empty");
        }
        Ok(Self {
            role,
            secret: secret.as_bytes().into(),
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }
}

/// Reads `--tls-cert`/`--tls-key` (and `--tls-client-ca` for mTLS) into the
/// server's TLS configuration; the error names the file that failed.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<ServerTlsConfig> {
    let read =
        |p: &Path| std::fs::read(p).with_context(|| format!("reading TLS file {}", p.display()));
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

/// Reads accepted tokens: each entry of `extra` (`--auth-tokens`) and each
/// line of `file` (blank lines and `#` comments skipped) is `ROLE:TOKEN` or
/// a bare token (role `score`). An entry that names no known role fails
/// start-up, saying where it is but not what it holds.
pub fn load_tokens(file: Option<&Path>, extra: &[Token]) -> anyhow::Result<Vec<Credential>> {
    let mut credentials = Vec::with_capacity(extra.len());
    for (i, token) in extra.iter().enumerate() {
        let credential = Credential::parse(&token.0).map_err(|why| {
            anyhow::anyhow!(
                "entry {} of --auth-tokens / SEGSCORE_AUTH_TOKENS: {why}",
                i + 1
            )
        })?;
        credentials.push(credential);
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the auth tokens file {}", file.display()))?;
        let before = credentials.len();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let credential = Credential::parse(line).map_err(|why| {
                anyhow::anyhow!(
                    "line {} of the auth tokens file {}: {why}",
                    i + 1,
                    file.display()
                )
            })?;
            credentials.push(credential);
        }
        anyhow::ensure!(
            credentials.len() > before,
            "the auth tokens file {} holds no token",
            file.display()
        );
    }
    Ok(credentials)
}

/// Methods a `score` token may call. Everything else needs `admin`, so an
/// RPC added later is admin-only until it is listed here (a unit test
/// checks every method of both APIs against this list).
const SCORE_METHODS: &[&str] = &[
    "/segscore.v1.Scoring/Score",
    "/segscore.v1.Scoring/ScoreStream",
    "/segscore.v1.Scoring/ListModels",
    "/segscore.v1.Scoring/GetModel",
    "/segscore.v1.Scoring/ListSegments",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    // Read-only, and what perf_analyzer asks before it sends traffic.
    "/inference.GRPCInferenceService/ModelConfig",
    "/inference.GRPCInferenceService/ModelStatistics",
    "/inference.GRPCInferenceService/ModelInfer",
    // Checked only with --auth-health; any valid token will do.
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The role a gRPC method (`/package.Service/Method`) needs.
pub fn required_role(path: &str) -> Role {
    if SCORE_METHODS.contains(&path) {
        Role::Score
    } else {
        Role::Admin
    }
}

/// The token of an `authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 7235 section 2.1), so `bearer` and `BEARER` work
/// as `Bearer` does.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let scheme = header.get(..SCHEME.len())?;
    let rest = header.get(SCHEME.len()..)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

/// Caller authentication and authorization when tokens are configured (and
/// `enforce` is on for the service): `authorization: Bearer <token>` must
/// carry an accepted token (else UNAUTHENTICATED) whose role covers the
/// method (else PERMISSION_DENIED).
#[derive(Clone)]
pub struct BearerAuth {
    credentials: Arc<Vec<Credential>>,
    enforce: bool,
}

impl BearerAuth {
    pub fn new(credentials: Vec<Credential>) -> Self {
        Self {
            enforce: !credentials.is_empty(),
            credentials: Arc::new(credentials),
        }
    }

    /// The same tokens, enforced only if `enforce` (health and reflection
    /// stay open by default so probes need no secret).
    pub fn enforced_if(&self, enforce: bool) -> Self {
        Self {
            credentials: self.credentials.clone(),
            enforce: self.enforce && enforce,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// The role of `presented`, if it is an accepted token. Every token is
    /// compared, never stopping early, so timing does not tell which token
    /// or which prefix matched; a secret listed with both roles is admin.
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let (mut found, mut admin) = (subtle::Choice::from(0), subtle::Choice::from(0));
        for credential in self.credentials.iter() {
            let same = credential.secret.as_ref().ct_eq(presented);
            found |= same;
            admin |= same & subtle::Choice::from(u8::from(credential.role == Role::Admin));
        }
        bool::from(found).then(|| {
            if bool::from(admin) {
                Role::Admin
            } else {
                Role::Score
            }
        })
    }

    /// Whether a call to the gRPC method `path` with these headers may
    /// proceed.
    pub fn authorize(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        self.authorize_role(required_role(path), path, headers)
            .map_err(Status::from)
    }

    /// Whether a call needing `needed`, to `what` (a gRPC method or an HTTP
    /// route, named in the refusal), may proceed with these headers: the one
    /// check both front ends make, with the same messages.
    pub fn authorize_role(
        &self,
        needed: Role,
        what: &str,
        headers: &http::HeaderMap,
    ) -> Result<(), ApiError> {
        if !self.enforce {
            return Ok(());
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        let Some(presented) = presented else {
            return Err(ApiError::Unauthenticated(
                "missing `authorization: Bearer <token>` metadata".into(),
            ));
        };
        let Some(role) = self.role_of(presented) else {
            return Err(ApiError::Unauthenticated(
                "the bearer token is not accepted".into(),
            ));
        };
        if role < needed {
            return Err(ApiError::PermissionDenied(format!(
                "a `{role}` token cannot call {}: it needs an `{needed}` token",
                echo_up_to(what, 200)
            )));
        }
        Ok(())
    }
}

/// A gRPC service behind [`BearerAuth`]. A tonic `Interceptor` sees only
/// metadata; this sees the method path too, so one service (OIP) can hold
/// methods of both roles and a role is checked before the request is
/// decoded.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: BearerAuth,
}

impl<S> Authorized<S> {
    pub fn new(inner: S, auth: BearerAuth) -> Self {
        Self { inner, auth }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.auth.authorize(request.uri().path(), request.headers()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => Either::Right(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCORE: &str = "/segscore.v1.Scoring/Score";
    const RELOAD: &str = "/segscore.v1.ModelAdmin/Reload";

    fn auth(entries: &[&str]) -> BearerAuth {
        let tokens: Vec<Token> = entries.iter().map(|e| e.parse().unwrap()).collect();
        BearerAuth::new(load_tokens(None, &tokens).unwrap())
    }

    fn call(auth: &BearerAuth, path: &str, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut headers = http::HeaderMap::new();
        if let Some(h) = header {
            headers.insert(http::header::AUTHORIZATION, h.parse().unwrap());
        }
        auth.authorize(path, &headers).map_err(|s| s.code())
    }

    #[test]
    fn bearer_tokens_are_required_when_configured() {
        let auth = auth(&["s3cret", "other"]);
        assert_eq!(call(&auth, SCORE, Some("Bearer s3cret")), Ok(()));
        assert_eq!(call(&auth, SCORE, Some("Bearer other")), Ok(()));
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearers3cret"),
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer score:s3cret"),
        ] {
            assert_eq!(
                call(&auth, SCORE, bad),
                Err(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
        let open = auth.enforced_if(false);
        assert_eq!(call(&open, RELOAD, None), Ok(()));
        let none = BearerAuth::new(Vec::new());
        assert_eq!(call(&none, RELOAD, None), Ok(()));
        assert_eq!(format!("{:?}", Token("s3cret".into())), "***");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let auth = auth(&["s3cret"]);
        for header in [
            "bearer s3cret",
            "BEARER s3cret",
            "BeArEr s3cret",
            "Bearer  s3cret",
        ] {
            assert_eq!(call(&auth, SCORE, Some(header)), Ok(()), "{header}");
        }
        // The token itself is compared exactly.
        assert_eq!(
            call(&auth, SCORE, Some("Bearer S3CRET")),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn a_score_token_cannot_call_admin_methods() {
        let auth = auth(&["score:reader", "plain", "admin:root"]);
        let load = "/inference.GRPCInferenceService/RepositoryModelLoad";
        for path in [SCORE, "/inference.GRPCInferenceService/ModelInfer"] {
            for token in ["reader", "plain", "root"] {
                let header = format!("Bearer {token}");
                assert_eq!(call(&auth, path, Some(&header)), Ok(()), "{token} {path}");
            }
        }
        for path in [RELOAD, load, "/segscore.v1.Scoring/NotYetListed"] {
            for token in ["reader", "plain"] {
                let header = format!("Bearer {token}");
                assert_eq!(
                    call(&auth, path, Some(&header)),
                    Err(tonic::Code::PermissionDenied),
                    "{token} {path}"
                );
            }
            assert_eq!(call(&auth, path, Some("Bearer root")), Ok(()), "{path}");
            // An unknown token is still unauthenticated, whatever the method.
            assert_eq!(
                call(&auth, path, Some("Bearer nobody")),
                Err(tonic::Code::Unauthenticated)
            );
        }
        let denied = auth
            .authorize(RELOAD, &{
                let mut h = http::HeaderMap::new();
                h.insert(
                    http::header::AUTHORIZATION,
                    "Bearer reader".parse().unwrap(),
                );
                h
            })
            .unwrap_err();
        assert_eq!(
            denied.message(),
            "a `score` token cannot call /segscore.v1.ModelAdmin/Reload: it needs an `admin` token"
        );
        // The same secret listed with both roles is admin.
        let both = super::tests::auth(&["score:twice", "admin:twice"]);
        assert_eq!(call(&both, RELOAD, Some("Bearer twice")), Ok(()));
    }

    #[test]
    fn token_entries_are_role_colon_token_or_bare() {
        let parsed = |e: &str| Credential::parse(e).map(|c| (c.role(), c.secret.to_vec()));
        assert_eq!(parsed("abc"), Ok((Role::Score, b"abc".to_vec())));
        assert_eq!(parsed("score:abc"), Ok((Role::Score, b"abc".to_vec())));
        assert_eq!(parsed(" admin:abc "), Ok((Role::Admin, b"abc".to_vec())));
        assert_eq!(parsed("score:a:b"), Ok((Role::Score, b"a:b".to_vec())));
        for bad in [
            "admn:abc",
            "Admin:abc",
            "s3cret:part",
            ":abc",
            "admin:",
            "score:",
        ] {
            let why = parsed(bad).unwrap_err();
            assert!(!why.contains("abc") && !why.contains("s3cret"), "{why}");
        }
        assert_eq!(
            format!("{:?}", Credential::parse("admin:s3cret").unwrap()),
            "admin:***"
        );
        // A bad entry fails start-up, naming where it is, not what it holds.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# readers\nscore:ok\n\nadmn:s3cret\n").unwrap();
        let err = load_tokens(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("line 4 of the auth tokens file"), "{err}");
        assert!(!err.contains("s3cret") && !err.contains("admn"), "{err}");
        let err = load_tokens(None, &["ok".parse().unwrap(), "x:s3cret".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 2 of --auth-tokens"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        std::fs::write(&file, "admin:root\nreader\n").unwrap();
        let roles: Vec<Role> = load_tokens(Some(&file), &["score:x".parse().unwrap()])
            .unwrap()
            .iter()
            .map(Credential::role)
            .collect();
        assert_eq!(roles, [Role::Score, Role::Admin, Role::Score]);
    }

    /// The parts of a FileDescriptorSet that name the methods.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Files {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct File {
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "6")]
        service: Vec<ServiceDescriptor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ServiceDescriptor {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        method: Vec<MethodDescriptor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct MethodDescriptor {
        #[prost(string, tag = "1")]
        name: String,
    }

    /// The contract: admin for ModelAdmin and the OIP repository
    /// extension, score for every other method of both APIs. A method added
    /// to a .proto fails here until its role is decided.
    #[test]
    fn every_method_of_both_apis_has_its_contract_role() {
        use prost::Message;
        let files = Files::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in &files.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package, service.name, method.name);
                    let admin = service.name == "ModelAdmin"
                        || method.name.starts_with("RepositoryModel")
                        || method.name == "RepositoryIndex";
                    let want = if admin { Role::Admin } else { Role::Score };
                    assert_eq!(required_role(&path), want, "{path}");
                    methods += 1;
                }
            }
        }
        assert!(methods >= 16, "{methods} methods");
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(required_role(path), Role::Score, "{path}");
        }
    }
}
