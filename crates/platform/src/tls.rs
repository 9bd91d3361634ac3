//! Service identity: mutual TLS on the internal listener, optional TLS on the others.
//!
//! Every service of a cluster holds a certificate its cluster's CA issued, whose DNS name is the
//! service's name (`order`, `store`, `delivery`). On the internal listener a participant asks
//! for the caller's certificate during the handshake and refuses any the CA did not issue; the
//! reservation API then refuses, with [`RequirePeer`], a caller whose certificate names another
//! service than the orchestrator. The orchestrator in turn checks that the participant's
//! certificate names the participant it meant to call. [`ClusterCa`] makes a throwaway CA and
//! these certificates (`sagactl certs`, `make run`, the compose cluster, the tests).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::{
    Status,
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig},
};

/// The name in the orchestrator's certificate, the only caller of the reservation API.
pub const ORCHESTRATOR: &str = "order";

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a service's own certificate and key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl KeyPairFiles {
    /// The files `<dir>/<name>.pem` and `<dir>/<name>.key` that [`ClusterCa::write`] makes.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn identity(&self) -> anyhow::Result<Identity> {
        Ok(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} (make one with `sagactl certs --dir {}`, or bring your own)",
            path.display(),
            path.parent().unwrap_or(Path::new(".")).display()
        )
    })
}

/// Mutual TLS of the internal API: the cluster CA and this service's own certificate.
#[derive(Clone)]
pub struct MutualTls {
    ca: Certificate,
    identity: Identity,
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MutualTls(..)")
    }
}

impl MutualTls {
    /// From PEM text: the CA's certificate, this service's certificate and its key.
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Self {
        Self {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        }
    }

    /// Reads the CA certificate and this service's certificate and key from files.
    pub fn load(ca: &Path, own: &KeyPairFiles) -> anyhow::Result<Self> {
        Ok(Self {
            ca: Certificate::from_pem(read(ca)?),
            identity: own.identity()?,
        })
    }

    /// The server side: present our certificate, require one the CA issued from every caller.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The client side, calling the service named `peer`: present our certificate, accept only
    /// a server certificate the CA issued for `peer`.
    pub fn client(&self, peer: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer)
    }

    /// Connects now to the internal listener of `peer` at `url` (`https://host:port`) with
    /// [`MutualTls::client`] (tools and tests; the order service builds its own lazy channels).
    pub async fn connect(
        &self,
        url: impl Into<String>,
        peer: &str,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        tonic::transport::Endpoint::from_shared(url.into())?
            .tls_config(self.client(peer))?
            .connect()
            .await
    }
}

/// TLS on a listener that does not ask callers for certificates (public and admin).
#[derive(Debug, Clone)]
pub struct ServerTls(Identity);

impl ServerTls {
    /// Reads the certificate and key.
    pub fn load(files: &KeyPairFiles) -> anyhow::Result<Self> {
        Ok(Self(files.identity()?))
    }

    /// TLS of the public and the admin listener from their settings (clap requires each
    /// certificate with its key): `tls` serves both, `admin_tls` the admin listener alone and
    /// wins there; `None` means plaintext.
    pub fn for_listeners(
        tls: (Option<&PathBuf>, Option<&PathBuf>),
        admin_tls: (Option<&PathBuf>, Option<&PathBuf>),
    ) -> anyhow::Result<(Option<Self>, Option<Self>)> {
        let load = |pair: (Option<&PathBuf>, Option<&PathBuf>)| match pair {
            (Some(cert), Some(key)) => Self::load(&KeyPairFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .map(Some),
            _ => Ok(None),
        };
        let public = load(tls)?;
        let admin = load(admin_tls)?.or_else(|| public.clone());
        Ok((public, admin))
    }

    /// The server configuration.
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.0.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// Whether a DER certificate is valid for the DNS name `name` (its subject alternative names).
/// The chain was verified during the handshake; this only reads whom it was issued to.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// A server interceptor that lets through only callers whose verified client certificate names
/// `peer`: no certificate is `UNAUTHENTICATED`, another service's is `PERMISSION_DENIED`.
#[derive(Debug, Clone)]
pub struct RequirePeer(Arc<str>);

impl RequirePeer {
    /// Only the service named `peer` may call.
    pub fn new(peer: &str) -> Self {
        Self(peer.into())
    }
}

impl Interceptor for RequirePeer {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
            return Err(Status::unauthenticated(
                "the internal API needs a client certificate from the cluster CA",
            ));
        };
        if !certificate_names(leaf, &self.0) {
            tracing::debug!(expected = %self.0, "internal call with another service's certificate");
            return Err(Status::permission_denied(format!(
                "only {} may call the internal API",
                self.0
            )));
        }
        Ok(request)
    }
}

/// A throwaway certificate authority for one cluster and the certificates it issues.
pub struct ClusterCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

/// One issued certificate and its key, as PEM.
#[derive(Clone)]
pub struct IssuedPem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedPem(..)")
    }
}

impl ClusterCa {
    /// A new CA (ECDSA P-256), valid for ten years, named `common_name`.
    pub fn generate(common_name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = params.not_before + time_years(10);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA's certificate (what every service trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for the service `name`, valid for `name` and for `extra_names` (for
    /// example `localhost`, so the same file can serve TLS to local clients), usable as both a
    /// server and a client certificate, valid for two years.
    pub fn issue(&self, name: &str, extra_names: &[&str]) -> anyhow::Result<IssuedPem> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = std::iter::once(name)
            .chain(extra_names.iter().copied())
            .map(str::to_owned)
            .collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = params.not_before + time_years(2);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` and, for each name, `<name>.pem` and `<name>.key` (mode 0600) into `dir`.
    /// The CA's own key is not written: nothing can issue more certificates for this cluster.
    pub fn write(&self, dir: &Path, names: &[&str]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("ca.pem"), &self.cert_pem)?;
        for name in names {
            let issued = self.issue(name, &["localhost", "127.0.0.1"])?;
            let files = KeyPairFiles::in_dir(dir, name);
            std::fs::write(&files.cert, &issued.cert)?;
            write_private(&files.key, &issued.key)?;
        }
        Ok(())
    }
}

fn time_years(years: i64) -> time::Duration {
    time::Duration::days(365 * years)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    #[test]
    fn issued_certificates_name_their_service_only() {
        let ca = ClusterCa::generate("test CA").expect("ca");
        let order = ca.issue("order", &[]).expect("issue");
        let store = ca.issue("store", &["localhost"]).expect("issue");
        assert!(certificate_names(&der(&order.cert), "order"));
        assert!(!certificate_names(&der(&order.cert), "store"));
        assert!(certificate_names(&der(&store.cert), "store"));
        assert!(certificate_names(&der(&store.cert), "localhost"));
        assert!(!certificate_names(&der(&store.cert), "order"));
        assert!(!certificate_names(&der(ca.cert_pem()), "order"));
    }

    #[test]
    fn written_files_load_and_keys_are_private() {
        let dir = std::env::temp_dir().join(format!("certs-{}", uuid::Uuid::new_v4().simple()));
        ClusterCa::generate("test CA")
            .expect("ca")
            .write(&dir, &["order", "store"])
            .expect("write");
        let tls = MutualTls::load(&dir.join("ca.pem"), &KeyPairFiles::in_dir(&dir, "order"));
        assert!(tls.is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("store.key"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
        let missing = MutualTls::load(&dir.join("nope.pem"), &KeyPairFiles::in_dir(&dir, "x"));
        let msg = format!("{:#}", missing.expect_err("missing file"));
        assert!(msg.contains("sagactl certs"), "{msg}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
