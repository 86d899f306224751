//! A DestinationRule's `tls` (Istio's `ClientTLSSettings`) and a
//! ServiceEntry's `subjectAltNames`, checked into [`TlsPolicy`].
//!
//! Every field either does what Istio documents or is an error: a
//! certificate setting that silently did nothing (`caCertificates` under
//! `DISABLE`, a client key under `SIMPLE`) would leave a user believing a
//! connection is verified or authenticated when it is not. Files are only
//! named here; [`crate::tls`] reads them, and its errors point back at the
//! field through [`ConfigFile::at`].

use std::net::IpAddr;
use std::path::PathBuf;

use serde_saphyr::Spanned;

use crate::config::checks::{dns_name_problem, subject_alt_names};
use crate::config::ctx::{Ctx, Doc};
use crate::config::model::{ClientIdentity, ConfigFile, TlsOrigination, TlsPolicy};
use crate::config::raw;

const ONLY_ORIGINATING: &str =
    "only used when originating TLS; set mode: SIMPLE (or MUTUAL) or remove it";

/// `parent` is the policy's path, like `spec.trafficPolicy`.
pub(super) fn validate(ctx: &mut Ctx, doc: &Doc, parent: &str, t: &raw::ClientTls) -> TlsPolicy {
    let parent = format!("{parent}.tls");
    let parent = parent.as_str();
    let field = |key: &str| format!("{parent}.{key}");
    if let Some(v) = &t.credential_name {
        ctx.key(
            doc,
            parent,
            "credentialName",
            v,
            "credentialName names a Kubernetes Secret, which a node-local redirector does not read; \
             give clientCertificate, privateKey and caCertificates as file paths instead",
        );
    }
    let mode_field = field("mode");
    let (originate, mutual) = match &t.mode {
        None => (false, false),
        Some(m) => match m.value.as_str() {
            "DISABLE" => (false, false),
            "SIMPLE" => (true, false),
            "MUTUAL" => (true, true),
            "ISTIO_MUTUAL" => {
                ctx.value(
                    doc,
                    m,
                    mode_field,
                    "tls mode ISTIO_MUTUAL is not supported: it presents the workload's mesh identity, \
                     and there is no mesh here; use SIMPLE, or MUTUAL with clientCertificate and privateKey",
                );
                return TlsPolicy::Disable;
            }
            other => {
                ctx.value(
                    doc,
                    m,
                    mode_field,
                    format!("unknown tls mode {other:?}; expected DISABLE, SIMPLE or MUTUAL"),
                );
                return TlsPolicy::Disable;
            }
        },
    };
    let sni = t.sni.as_ref().and_then(|sni| {
        let problem = if sni.value.parse::<IpAddr>().is_ok() {
            Some("sni must be a host name, never an IP address".to_owned())
        } else {
            dns_name_problem(&sni.value)
        };
        match problem {
            Some(p) => {
                ctx.value(doc, sni, field("sni"), p);
                None
            }
            None => Some(sni.value.clone()),
        }
    });
    let mut file = |key: &str, v: &Option<Spanned<String>>| {
        let v = v.as_ref()?;
        if v.value.is_empty() {
            ctx.value(doc, v, field(key), format!("{key} must be a file path"));
            return None;
        }
        Some(ConfigFile {
            path: PathBuf::from(&v.value),
            at: ctx.locate(doc, v, &field(key)),
        })
    };
    let ca_certificates = file("caCertificates", &t.ca_certificates);
    let ca_crl = file("caCrl", &t.ca_crl);
    let certificate = file("clientCertificate", &t.client_certificate);
    let private_key = file("privateKey", &t.private_key);
    let subject_alt_names = t
        .subject_alt_names
        .as_ref()
        .map(|s| subject_alt_names(ctx, doc, &field("subjectAltNames"), s))
        .unwrap_or_default();
    let insecure = t.insecure_skip_verify.as_ref().filter(|v| v.value);

    if !originate {
        // Without origination these would silently do nothing.
        for (key, v) in [
            ("sni", &t.sni),
            ("caCertificates", &t.ca_certificates),
            ("caCrl", &t.ca_crl),
            ("clientCertificate", &t.client_certificate),
            ("privateKey", &t.private_key),
        ] {
            if let Some(v) = v {
                ctx.key(doc, parent, key, v, ONLY_ORIGINATING);
            }
        }
        if let Some(v) = &t.subject_alt_names {
            ctx.key(doc, parent, "subjectAltNames", v, ONLY_ORIGINATING);
        }
        if let Some(v) = insecure {
            ctx.key(doc, parent, "insecureSkipVerify", v, ONLY_ORIGINATING);
        }
        return TlsPolicy::Disable;
    }
    let client = if mutual {
        let missing: Vec<&str> = [
            ("clientCertificate", &t.client_certificate),
            ("privateKey", &t.private_key),
        ]
        .into_iter()
        .filter_map(|(key, v)| v.is_none().then_some(key))
        .collect();
        if let (false, Some(m)) = (missing.is_empty(), &t.mode) {
            ctx.value(
                doc,
                m,
                mode_field,
                format!(
                    "tls mode MUTUAL needs {}: the PEM files of the certificate chain and key the \
                     proxy presents to the endpoint",
                    missing.join(" and ")
                ),
            );
        }
        certificate
            .zip(private_key)
            .map(|(certificate, private_key)| ClientIdentity {
                certificate,
                private_key,
            })
    } else {
        for (key, v) in [
            ("clientCertificate", &t.client_certificate),
            ("privateKey", &t.private_key),
        ] {
            if let Some(v) = v {
                ctx.key(
                    doc,
                    parent,
                    key,
                    v,
                    "only used with tls mode MUTUAL (SIMPLE presents no client certificate); \
                     set mode: MUTUAL or remove it",
                );
            }
        }
        None
    };
    if let Some(v) = insecure {
        for (key, set) in [
            ("caCertificates", t.ca_certificates.is_some()),
            ("caCrl", t.ca_crl.is_some()),
            ("subjectAltNames", !subject_alt_names.is_empty()),
        ] {
            if set {
                ctx.key(
                    doc,
                    parent,
                    "insecureSkipVerify",
                    v,
                    format!(
                        "insecureSkipVerify: true turns certificate verification off, so {key} would be \
                         ignored; remove one of them"
                    ),
                );
            }
        }
    }
    TlsPolicy::Originate(Box::new(TlsOrigination {
        sni,
        ca_certificates,
        ca_crl,
        client,
        subject_alt_names,
        insecure_skip_verify: insecure.is_some(),
    }))
}
