//! TLS for the operator's HTTP clients, built here with the ring provider and handed to reqwest
//! preconfigured: no process-wide crypto provider is installed, so nothing depends on which
//! part of the program builds a client first.
//!
//! Trusted roots: Mozilla's (`webpki-roots`; the operator image is `FROM scratch` and has no
//! system trust store) plus an optional PEM bundle (`--ca-file`), for a private CA.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    pki_types::{pem, pem::PemObject, CertificateDer},
    ClientConfig, RootCertStore,
};

/// Why a client configuration cannot be built from a PEM bundle.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("not a PEM certificate bundle: {0}")]
    NotPem(#[source] pem::Error),
    #[error("a certificate of the bundle cannot be trusted: {0}")]
    Untrusted(#[source] rustls::Error),
    #[error("the bundle holds no PEM certificate")]
    NoCertificate,
    #[error("cannot configure TLS: {0}")]
    Protocols(#[source] rustls::Error),
}

/// Why the configuration of `--ca-file` cannot be built; the operator does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The bundle read from `path` is refused.
    #[error("{}: {source}", .path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: TlsError,
    },
    /// Without a bundle.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The client configuration, trusting Mozilla's roots and the certificates of `extra_pem`.
pub fn client_config(extra_pem: Option<&[u8]>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(cert.map_err(TlsError::NotPem)?)
                .map_err(TlsError::Untrusted)?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::NoCertificate);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// [`client_config`] with the bundle read from `ca_file`, when one is given.
pub fn load(ca_file: Option<&Path>) -> Result<ClientConfig, TlsConfigError> {
    let Some(path) = ca_file else {
        return Ok(client_config(None)?);
    };
    let pem = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    client_config(Some(&pem)).map_err(|source| TlsConfigError::Bundle {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_bundle_is_added_to_the_roots() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let two = format!("{}{}", ca.cert.pem(), ca.cert.pem());
        assert!(client_config(Some(two.as_bytes())).is_ok());
        let err = client_config(Some(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot be trusted"), "{err}");
    }

    #[test]
    fn a_bundle_without_certificates_is_refused_with_its_path() {
        assert!(client_config(Some(b"not a certificate"))
            .unwrap_err()
            .to_string()
            .contains("no PEM certificate"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("no PEM"), "{err}");
        let err = load(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
        assert!(load(None).is_ok());
    }
}
