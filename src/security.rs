//! Transport security and caller authentication: TLS with rustls (optionally
//! requiring client certificates, mTLS) and bearer tokens compared in
//! constant time. Tokens are secrets: they never reach logs, `Debug` output
//! or error messages.

use std::{path::Path, str::FromStr, sync::Arc};

use anyhow::Context;
use subtle::ConstantTimeEq;
use tonic::{
    service::Interceptor,
    transport::{Certificate, Identity, ServerTlsConfig},
    Request, Status,
};

/// A bearer token from the command line or environment; `Debug` prints `***`.
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

/// Reads accepted tokens: one per line of `file` (blank lines and `#`
/// comments skipped), plus `extra`.
pub fn load_tokens(file: Option<&Path>, extra: &[Token]) -> anyhow::Result<Vec<Token>> {
    let mut tokens = extra.to_vec();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the auth tokens file {}", file.display()))?;
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                tokens.push(Token(line.to_owned()));
            }
        }
        anyhow::ensure!(
            tokens.len() > extra.len(),
            "the auth tokens file {} holds no token",
            file.display()
        );
    }
    Ok(tokens)
}

/// A tonic interceptor that requires `authorization: Bearer <token>` when
/// tokens are configured (and `enforce` is on for the service).
#[derive(Clone)]
pub struct BearerAuth {
    tokens: Arc<Vec<Token>>,
    enforce: bool,
}

impl BearerAuth {
    pub fn new(tokens: Vec<Token>) -> Self {
        Self {
            enforce: !tokens.is_empty(),
            tokens: Arc::new(tokens),
        }
    }

    /// The same tokens, enforced only if `enforce` (health and reflection
    /// stay open by default so probes need no secret).
    pub fn enforced_if(&self, enforce: bool) -> Self {
        Self {
            tokens: self.tokens.clone(),
            enforce: self.enforce && enforce,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Compare with every token, never stopping early, so timing does not
        // tell which prefix or which token matched.
        self.tokens
            .iter()
            .fold(subtle::Choice::from(0), |ok, t| {
                ok | t.0.as_bytes().ct_eq(presented)
            })
            .into()
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.enforce {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer ".as_slice()));
        match presented {
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
            Some(token) if self.accepts(token) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the bearer token is not accepted")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut BearerAuth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        auth.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn bearer_tokens_are_required_when_configured() {
        let mut auth = BearerAuth::new(vec!["s3cret".parse().unwrap(), "other".parse().unwrap()]);
        assert_eq!(call(&mut auth, Some("Bearer s3cret")), Ok(()));
        assert_eq!(call(&mut auth, Some("Bearer other")), Ok(()));
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            assert_eq!(
                call(&mut auth, bad),
                Err(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
        let mut open = auth.enforced_if(false);
        assert_eq!(call(&mut open, None), Ok(()));
        let mut none = BearerAuth::new(Vec::new());
        assert_eq!(call(&mut none, None), Ok(()));
        assert_eq!(format!("{:?}", Token("s3cret".into())), "***");
    }
}
