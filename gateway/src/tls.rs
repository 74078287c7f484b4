//! TLS with rustls: the listeners' server config (certificates chosen by SNI, ALPN h2 and
//! http/1.1) and the upstreams' client configs (CA bundle, optional client certificate).

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use rustls::{
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ClientConfig, RootCertStore, ServerConfig,
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

use crate::config::{CertificateConfig, TlsConfig, TlsVersion, UpstreamTlsConfig};

/// The system CA bundle (Debian's ca-certificates), for upstreams that name no CA.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

/// A certificate chain with its key, checked to belong together, and the host names the leaf
/// is valid for (its DNS subject alternative names, lower case).
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

pub fn load_certified_key(c: &CertificateConfig) -> Result<LoadedCert, String> {
    let certs = load_certs(&c.cert)?;
    let key = load_key(&c.key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unsupported private key: {e}", c.key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} and {}: the key does not belong to the certificate: {e}",
            c.cert.display(),
            c.key.display()
        )
    })?;
    let names = leaf_names(&certified.cert[0])
        .map_err(|e| format!("{}: cannot read the certificate: {e}", c.cert.display()))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}

fn leaf_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // No SAN: the common name, as old certificates carry it.
        for cn in cert.subject().iter_common_name() {
            if let Ok(n) = cn.as_str() {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Chooses a certificate by SNI: an exact name, else a wildcard one label up, else the default.
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys())
            .field("wildcard", &self.wildcard.keys())
            .finish()
    }
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.');
        if let Some(k) = self.exact.get(name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The listeners' TLS config: every certificate of `tls`, chosen by SNI (the first one is the
/// default), ALPN h2 and http/1.1, TLS 1.2 (unless `min_version` is 1.3) and 1.3.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for c in &tls.certificates {
        let loaded = load_certified_key(c)?;
        for name in &loaded.names {
            let map = match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(name.clone()),
            };
            // The first certificate that names a host wins, as with the default.
            map.or_insert_with(|| loaded.key.clone());
        }
        default.get_or_insert(loaded.key);
    }
    let default = default.ok_or("proxy.tls.certificates: at least one is needed")?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            exact,
            wildcard,
            default,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Ok(ticketer) = ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

/// The client config for an upstream pool: its CA bundle (or the system's) and its client
/// certificate if any. (hyper-rustls sets ALPN for the HTTP versions the pool speaks.)
pub fn client_config(tls: &UpstreamTlsConfig) -> Result<ClientConfig, String> {
    let ca = tls.ca.clone().unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: bad CA certificate: {e}", ca.display()))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let c = CertificateConfig {
                cert: cert.clone(),
                key: key.clone(),
            };
            // Checks that the key belongs to the chain before handing both to rustls.
            load_certified_key(&c)?;
            builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| format!("{}: client certificate: {e}", cert.display()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], dir: &Path, file: &str) -> CertificateConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = CertificateConfig {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&c.cert, cert.pem()).unwrap();
        std::fs::write(&c.key, key.serialize_pem()).unwrap();
        c
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_certified_key(&cert(&["a.example"], dir.path(), "a")).unwrap();
        let w = load_certified_key(&cert(&["*.w.example", "w.example"], dir.path(), "w")).unwrap();
        assert_eq!(w.names, ["*.w.example", "w.example"]);
        let resolver = SniResolver {
            exact: HashMap::from([
                ("a.example".to_string(), a.key.clone()),
                ("w.example".to_string(), w.key.clone()),
            ]),
            wildcard: HashMap::from([("w.example".to_string(), w.key.clone())]),
            default: a.key.clone(),
        };
        let same = |x: &Arc<CertifiedKey>, y: &Arc<CertifiedKey>| Arc::ptr_eq(x, y);
        assert!(same(&resolver.pick(Some("A.Example.")), &a.key));
        assert!(same(&resolver.pick(Some("x.w.example")), &w.key));
        assert!(same(&resolver.pick(Some("w.example")), &w.key));
        // A wildcard covers one label only.
        assert!(same(&resolver.pick(Some("y.x.w.example")), &a.key));
        assert!(same(&resolver.pick(None), &a.key));
    }

    #[test]
    fn mismatched_or_missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = cert(&["a.example"], dir.path(), "a");
        let b = cert(&["b.example"], dir.path(), "b");
        let crossed = CertificateConfig {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let err = load_certified_key(&crossed).err().unwrap();
        assert!(err.contains("does not belong"), "{err}");
        let missing = CertificateConfig {
            cert: dir.path().join("nope.pem"),
            key: a.key.clone(),
        };
        let err = load_certified_key(&missing).err().unwrap();
        assert!(err.contains("nope.pem"), "{err}");
        std::fs::write(dir.path().join("empty.pem"), "not pem").unwrap();
        let err = load_certs(&dir.path().join("empty.pem")).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
