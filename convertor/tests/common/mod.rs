//! Test support: a real distribution registry on 127.0.0.1, images built by the tests (layer
//! tars, gzip, config, OCI manifest) and pushed through a [`Store`], tool checks.
#![allow(dead_code, unused_imports)]

use convertor::oci::{self, media, Descriptor, Document, Manifest};
use convertor::remote::{Remote, RemoteOptions};
use convertor::store::Store;

pub use test_support::layer::{busybox_layer, gzip, host_layer, TarBuilder};
pub use test_support::{is_root, require, require_tool, run, use_mkfs_erofs};

/// The test registry, reached as a convertor [`Store`].
pub struct Registry(pub test_support::registry::Registry);

impl std::ops::Deref for Registry {
    type Target = test_support::registry::Registry;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Registry {
    pub fn start() -> Option<Registry> {
        Self::start_auth(None)
    }

    /// A registry that wants Basic credentials `(user, password)` when given.
    pub fn start_auth(basic: Option<(&str, &str)>) -> Option<Registry> {
        test_support::registry::Registry::start(basic).map(Registry)
    }

    /// A repository of this registry over plain HTTP (`push` asks for push rights).
    pub fn remote(&self, repo: &str, push: bool) -> Remote {
        let opts = RemoteOptions {
            plain_http: true,
            ..Default::default()
        };
        Remote::open(&self.addr, repo, &opts, push).unwrap()
    }
}

/// The image manifest `reference` of `store` (panics on an index).
pub fn manifest(store: &dyn Store, reference: &str) -> Manifest {
    let (b, mt) = store.get_manifest(reference).unwrap();
    match oci::parse_document(&b, mt.as_deref()).unwrap() {
        Document::Manifest(m) => *m,
        Document::Index(_) => panic!("expected a manifest"),
    }
}

/// Pushes an image of `layers` (uncompressed tars, gzip-compressed in the image) and returns
/// its manifest's digest.
pub fn push_image(store: &dyn Store, tag: &str, layers: &[Vec<u8>]) -> String {
    push_image_as(store, Some(tag), layers, false).0
}

/// The same with Docker's media types when `docker`; returns the manifest's digest and size.
pub fn push_image_as(
    store: &dyn Store,
    tag: Option<&str>,
    layers: &[Vec<u8>],
    docker: bool,
) -> (String, u64) {
    let (layer_mt, config_mt, manifest_mt) = if docker {
        (
            media::DOCKER_LAYER_GZIP,
            media::DOCKER_CONFIG,
            media::DOCKER_MANIFEST,
        )
    } else {
        (
            media::OCI_LAYER_GZIP,
            media::OCI_CONFIG,
            media::OCI_MANIFEST,
        )
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        diff_ids.push(oci::sha256_digest(l));
        let z = gzip(l);
        let d = oci::sha256_digest(&z);
        store.put_blob(&d, &z).unwrap();
        descs.push(Descriptor {
            media_type: layer_mt.into(),
            digest: d,
            size: z.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        });
        history.push(serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("layer {i}")}));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let cb = serde_json::to_vec(&config).unwrap();
    let cd = oci::sha256_digest(&cb);
    store.put_blob(&cd, &cb).unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(manifest_mt.into()),
        artifact_type: None,
        config: Descriptor {
            media_type: config_mt.into(),
            digest: cd,
            size: cb.len() as u64,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        },
        layers: descs,
        subject: None,
        annotations: None,
    };
    let mb = serde_json::to_vec(&m).unwrap();
    store.put_manifest(tag, manifest_mt, &mb).unwrap();
    (oci::sha256_digest(&mb), mb.len() as u64)
}

/// Pushes an OCI index of `(architecture, manifest digest, size)` under `tag`.
pub fn push_index(store: &dyn Store, tag: &str, manifests: &[(&str, String, u64)]) -> String {
    let idx = oci::Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests: manifests
            .iter()
            .map(|(arch, d, size)| Descriptor {
                media_type: media::OCI_MANIFEST.into(),
                digest: d.clone(),
                size: *size,
                urls: None,
                annotations: None,
                platform: Some(oci::Platform {
                    architecture: arch.to_string(),
                    os: "linux".into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                }),
                artifact_type: None,
            })
            .collect(),
        annotations: None,
    };
    let b = serde_json::to_vec(&idx).unwrap();
    store.put_manifest(Some(tag), media::OCI_INDEX, &b).unwrap();
    oci::sha256_digest(&b)
}
