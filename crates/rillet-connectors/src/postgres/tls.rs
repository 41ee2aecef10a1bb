//! TLS for PostgreSQL connections, on rustls, with libpq's `sslmode` meanings:
//!
//! | `sslmode` | encrypted | server's certificate |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked, unless `sslrootcert` names the CA: then as `verify-ca` |
//! | `verify-ca` | always | signed by a CA of `sslrootcert`, which it needs |
//! | `verify-full` | always | signed by a CA of `sslrootcert` (else the system's), and issued for the host connected to |
//!
//! `verify-ca` takes no CA from the system's store: any site's public certificate would
//! pass a check that ignores the name. A Unix socket connection is never encrypted.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rillet_common::{Result, RilletError};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How a connection is secured: what tokio-postgres is told, and the TLS client.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) mode: SslMode,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({:?})", self.mode)
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

impl Tls {
    /// The TLS of `sslmode` (`None`: `prefer`) with `sslrootcert` (a PEM file of CAs).
    pub(crate) fn new(sslmode: Option<&str>, sslrootcert: Option<&str>) -> Result<Self> {
        let (mode, check) = match (sslmode.unwrap_or("prefer"), sslrootcert.is_some()) {
            ("disable", _) => (SslMode::Disable, Check::Nothing),
            ("prefer", _) => (SslMode::Prefer, Check::Nothing),
            ("require", false) => (SslMode::Require, Check::Nothing),
            ("require", true) | ("verify-ca", true) => (SslMode::Require, Check::Chain),
            ("verify-ca", false) => {
                return Err(RilletError::invalid_argument(
                    "postgres sslmode=verify-ca needs sslrootcert=<PEM file of the CAs>: \
                     checking the chain but not the host name against the system's CAs \
                     would let any site's certificate through (or use verify-full)",
                ));
            }
            ("verify-full", _) => (SslMode::Require, Check::ChainAndHost),
            (other, _) => {
                return Err(RilletError::invalid_argument(format!(
                    "postgres sslmode={other:?}: use disable, prefer, require, verify-ca or \
                     verify-full"
                )));
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| RilletError::internal(format!("TLS setup: {e}")))?;
        let chain = match check {
            Check::Nothing => None,
            Check::Chain | Check::ChainAndHost => {
                let roots = Arc::new(roots(sslrootcert)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| RilletError::invalid_argument(format!("sslrootcert: {e}")))?;
                Some(webpki)
            }
        };
        let verifier = Arc::new(Verifier {
            chain,
            host: check == Check::ChainAndHost,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            mode,
            config: Arc::new(config),
        })
    }
}

/// The CAs of the PEM file `path`, else the system's.
fn roots(path: Option<&str>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certificates: Vec<CertificateDer<'static>> = match path {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| {
                RilletError::invalid_argument(format!(
                    "postgres sslrootcert={path:?}: cannot read its certificates: {e}"
                ))
            })?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (_added, unusable) = roots.add_parsable_certificates(certificates);
    if roots.is_empty() {
        return Err(RilletError::invalid_argument(format!(
            "postgres: no usable CA certificate in {} ({unusable} unusable)",
            path.unwrap_or("the system's store")
        )));
    }
    Ok(roots)
}

/// The server's certificate checked as its `sslmode` says: not at all (libpq's `prefer`
/// and `require`: encryption without authentication), its chain against the CAs, or its
/// chain and the host name. The handshake's signatures are checked against it in every
/// case.
#[derive(Debug)]
struct Verifier {
    /// Checks the chain; `None`: any certificate passes.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The name checked too (`verify-full`); `false` for `verify-ca`.
    host: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let verdict =
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verdict {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        // Asked before every connection, Unix sockets (an empty name) included, which
        // never get as far as a handshake: a bad name is an error only then.
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
        Ok(Connect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub(crate) struct Connect {
    connector: tokio_rustls::TlsConnector,
    name: io::Result<ServerName<'static>>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name?, stream).await?;
            Ok(Stream(tls))
        })
    }
}

/// A TLS session to the server.
pub(crate) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// `url` without its `sslmode` and `sslrootcert` options (which tokio-postgres does not
/// know all of), and their values. `url` is a `postgresql://` URL or `key=value` words.
///
/// ```text
/// postgresql://u@h/db?sslmode=verify-full&sslrootcert=ca.pem&application_name=x
///   → (postgresql://u@h/db?application_name=x, verify-full, ca.pem)
/// ```
pub(crate) fn split_tls_options(url: &str) -> (String, Option<String>, Option<String>) {
    if !url.contains("sslmode") && !url.contains("sslrootcert") {
        // Nothing to take out: the URL goes on byte for byte (quoted values included).
        return (url.to_string(), None, None);
    }
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            sslmode = Some(value.to_string());
            true
        }
        "sslrootcert" => {
            sslrootcert = Some(value.to_string());
            true
        }
        _ => false,
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(
                            key,
                            &percent_encoding::percent_decode_str(value).decode_utf8_lossy(),
                        )
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|word| {
                let (key, value) = word.split_once('=').unwrap_or((word, ""));
                !take(key.trim(), value.trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, sslmode, sslrootcert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_urls_and_words() {
        let (rest, mode, root) = split_tls_options(
            "postgresql://u@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        );
        assert_eq!(rest, "postgresql://u@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, root) = split_tls_options("postgresql://u@h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgresql://u@h/db", Some("require"), None)
        );
        let (rest, mode, _) = split_tls_options("host=h user=u sslmode=disable");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("host=h user=u", Some("disable"))
        );
        assert!(Tls::new(Some("verify-everything"), None).is_err());
        assert!(
            Tls::new(Some("verify-ca"), None).is_err(),
            "verify-ca needs its CAs"
        );
        let words = "host=/tmp password='a  b'";
        assert_eq!(split_tls_options(words).0, words, "left as it is");
        assert!(Tls::new(Some("verify-full"), Some("/no/such/ca.pem")).is_err());
    }
}
