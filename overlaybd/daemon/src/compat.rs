//! overlaybd's own daemon config (`/etc/overlaybd/overlaybd.json`, read by overlaybd-tcmu),
//! for a node that swaps overlaybd's node components for these: the settings that mean the
//! same thing here are taken, every other one is named in a warning, and what overlaybd does
//! not have (the API socket, device state) keeps this daemon's defaults.

use std::path::PathBuf;

use serde_json::Value;

use crate::config::DaemonConfig;
use crate::error::{Error, Result};

/// overlaybd's default path of that file.
pub const OVERLAYBD_JSON: &str = "/etc/overlaybd/overlaybd.json";

/// `text` (overlaybd.json) as a config, with one warning per setting not taken.
pub fn from_overlaybd_json(text: &str, what: &str) -> Result<(DaemonConfig, Vec<String>)> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    let Value::Object(top) = v else {
        return Err(Error::Invalid(format!("{what}: not a JSON object")));
    };
    let mut c = DaemonConfig::default();
    let mut warnings = Vec::new();
    let bad = |key: &str, v: &Value, want: &str| {
        Error::Invalid(format!("{what}: {key} is {v}, not {want}"))
    };
    // Legacy top-level keys and the grouped ones; a grouped one wins, as in overlaybd.
    let (mut log_level, mut cache_type, mut cache_dir, mut cache_gb, mut credential_file) =
        (None, None, None, None, None);
    let (mut legacy_level, mut legacy_type, mut legacy_dir, mut legacy_gb, mut legacy_cred) =
        (None, None, None, None, None);
    for (k, v) in &top {
        match k.as_str() {
            "logLevel" => legacy_level = Some(v.as_u64().ok_or_else(|| bad(k, v, "0..3"))?),
            "logPath" => warnings.push(format!(
                "{k}: not used; the daemon logs to stderr (the journal under systemd)"
            )),
            "cacheType" => legacy_type = Some(str_of(v).ok_or_else(|| bad(k, v, "a string"))?),
            "registryCacheDir" => legacy_dir = Some(str_of(v).ok_or_else(|| bad(k, v, "a path"))?),
            "registryCacheSizeGB" => {
                legacy_gb = Some(v.as_u64().ok_or_else(|| bad(k, v, "a number of GiB"))?)
            }
            "credentialFilePath" => {
                legacy_cred = Some(str_of(v).ok_or_else(|| bad(k, v, "a path"))?)
            }
            "logConfig" => {
                for (k2, v2) in obj(k, v, what)? {
                    match k2.as_str() {
                        "logLevel" => {
                            log_level = Some(v2.as_u64().ok_or_else(|| bad("logConfig.logLevel", v2, "0..3"))?)
                        }
                        "logPath" if v2.as_str().is_some_and(|s| !s.is_empty()) => warnings.push(
                            "logConfig.logPath: not used; the daemon logs to stderr (the journal under systemd)"
                                .into(),
                        ),
                        "logPath" | "logSizeMB" | "logRotateNum" => {}
                        _ => warnings.push(unknown(&format!("logConfig.{k2}"))),
                    }
                }
            }
            "cacheConfig" => {
                for (k2, v2) in obj(k, v, what)? {
                    let key = format!("cacheConfig.{k2}");
                    match k2.as_str() {
                        "cacheType" => {
                            cache_type = Some(str_of(v2).ok_or_else(|| bad(&key, v2, "a string"))?)
                        }
                        "cacheDir" => {
                            cache_dir = Some(str_of(v2).ok_or_else(|| bad(&key, v2, "a path"))?)
                        }
                        "cacheSizeGB" => {
                            cache_gb = Some(
                                v2.as_u64()
                                    .ok_or_else(|| bad(&key, v2, "a number of GiB"))?,
                            )
                        }
                        "refillSize" | "blockSize" => warnings.push(format!(
                            "{key}: not used; this cache fetches and stores whole compressed blocks"
                        )),
                        _ => warnings.push(unknown(&key)),
                    }
                }
            }
            "credentialConfig" => {
                let o = obj(k, v, what)?;
                let mode = o.get("mode").and_then(Value::as_str).unwrap_or("");
                match mode {
                    "" | "file" => {
                        if let Some(p) = o
                            .get("path")
                            .and_then(Value::as_str)
                            .filter(|p| !p.is_empty())
                        {
                            credential_file = Some(p.to_string());
                        }
                    }
                    m => warnings.push(format!(
                        "credentialConfig.mode {m:?}: not supported; credentials come from a \
                         Docker config.json (docker_config) or the registry's hosts.toml"
                    )),
                }
            }
            "p2pConfig" => {
                let o = obj(k, v, what)?;
                if o.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    let addr = o
                        .get("address")
                        .and_then(Value::as_str)
                        .unwrap_or("http://localhost:9731/accelerator");
                    c.p2p_agent = if addr.contains("://") {
                        addr.to_string()
                    } else {
                        format!("http://{addr}")
                    };
                }
            }
            "exporterConfig" => {
                let o = obj(k, v, what)?;
                if o.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    let port = o.get("port").and_then(Value::as_u64).unwrap_or(9863);
                    c.metrics_address = format!("127.0.0.1:{port}");
                    if let Some(p) = o.get("uriPrefix").and_then(Value::as_str) {
                        if p != "/metrics" {
                            warnings.push(format!(
                                "exporterConfig.uriPrefix {p:?}: metrics are served at /metrics"
                            ));
                        }
                    }
                    warnings.push(format!(
                        "exporterConfig: metrics are served on 127.0.0.1:{port} only, with this \
                         daemon's metric names (docs/daemon.md)"
                    ));
                }
            }
            "prefetchConfig" => {
                let o = obj(k, v, what)?;
                if let Some(n) = o.get("concurrency").and_then(Value::as_u64) {
                    c.prefetch_concurrency = n.max(1) as usize;
                }
            }
            "gzipCacheConfig" => {
                if v.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    warnings.push(
                        "gzipCacheConfig: TurboOCI (gzip) layers are not served by this daemon yet"
                            .into(),
                    );
                }
            }
            "download" => {
                if v.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    warnings.push(
                        "download: background whole-blob download is not done here; blocks are \
                         fetched when read (and prefetched from a trace)"
                            .into(),
                    );
                }
            }
            "ioEngine" | "enableAudit" | "auditPath" | "enableThread" | "registryFsVersion"
            | "userAgent" => warnings.push(format!("{k}: not used by overlaybd-rs")),
            "certConfig" | "serviceConfig" => {
                warnings.push(format!("{k}: not supported by overlaybd-rs"))
            }
            _ => warnings.push(unknown(k)),
        }
    }
    let log_level = log_level.or(legacy_level);
    let cache_type = cache_type.or(legacy_type);
    let cache_dir = cache_dir.or(legacy_dir);
    let cache_gb = cache_gb.or(legacy_gb);
    let credential_file = credential_file.or(legacy_cred);
    if let Some(l) = log_level {
        c.log = match l {
            0 => "debug",
            1 => "info",
            2 => "warn",
            _ => "error",
        }
        .into();
    }
    match cache_type.as_deref() {
        None | Some("") | Some("file") => {}
        Some(t) => warnings.push(format!(
            "cacheType {t:?}: this daemon's cache is a file cache in cacheDir"
        )),
    }
    if let Some(d) = cache_dir {
        c.cache_dir = PathBuf::from(d);
    } else {
        c.cache_dir = "/opt/overlaybd/registry_cache".into();
    }
    c.cache_size_mb = cache_gb.unwrap_or(4).max(1) * 1024;
    if let Some(f) = credential_file {
        c.docker_config = PathBuf::from(f);
    }
    c.validate()
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    Ok((c, warnings))
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn obj<'a>(k: &str, v: &'a Value, what: &str) -> Result<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::Invalid(format!("{what}: {k} is {v}, not an object")))
}

fn unknown(k: &str) -> String {
    format!("{k}: not an overlaybd setting this daemon knows; ignored")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// overlaybd's sample config (`src/example_config/overlaybd.json` in containerd/overlaybd
    /// at 0edcc6b7), which its packages install.
    const SAMPLE: &str = r#"{
    "logConfig": {
        "logLevel": 1,
        "logPath": "/var/log/overlaybd.log"
    },
    "cacheConfig": {
        "cacheType": "file",
        "cacheDir": "/opt/overlaybd/registry_cache",
        "cacheSizeGB": 4
    },
    "gzipCacheConfig": {
        "enable": true,
        "cacheDir": "/opt/overlaybd/gzip_cache",
        "cacheSizeGB": 4
    },
    "credentialConfig": {
        "mode": "file",
        "path": "/opt/overlaybd/cred.json"
    },
    "ioEngine": 0,
    "download": {
        "enable": true,
        "delay": 600,
        "delayExtra": 30,
        "maxMBps": 100
    },
    "p2pConfig": {
        "enable": false,
        "address": "localhost:19145/dadip2p"
    },
    "exporterConfig": {
        "enable": false,
        "uriPrefix": "/metrics",
        "port": 9863,
        "updateInterval": 60000000
    },
    "enableAudit": true,
    "auditPath": "/var/log/overlaybd-audit.log",
    "registryFsVersion": "v2"
}"#;

    #[test]
    fn overlaybds_sample_config_maps_to_the_same_settings_and_names_the_rest() {
        let (c, w) = from_overlaybd_json(SAMPLE, "overlaybd.json").unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/opt/overlaybd/registry_cache"));
        assert_eq!(c.cache_size_mb, 4096);
        assert_eq!(c.docker_config, PathBuf::from("/opt/overlaybd/cred.json"));
        assert_eq!(c.log, "info");
        assert_eq!(c.p2p_agent, "");
        assert_eq!(c.metrics_address, "");
        // What overlaybd has no word for keeps this daemon's default.
        let d = DaemonConfig::default();
        assert_eq!((c.socket, c.state_dir), (d.socket, d.state_dir));
        for k in [
            "logConfig.logPath",
            "gzipCacheConfig",
            "ioEngine",
            "enableAudit",
            "auditPath",
            "download",
            "registryFsVersion",
        ] {
            assert!(
                w.iter().any(|w| w.starts_with(k)),
                "{k} not named in {w:#?}"
            );
        }
        // Settings that are off or mean the same are not warned about.
        for k in [
            "p2pConfig",
            "exporterConfig",
            "cacheConfig",
            "credentialConfig",
        ] {
            assert!(!w.iter().any(|w| w.starts_with(k)), "{k}: {w:#?}");
        }
    }

    #[test]
    fn p2p_metrics_legacy_keys_and_log_levels() {
        let (c, w) = from_overlaybd_json(
            r#"{"p2pConfig": {"enable": true, "address": "localhost:19145/dadip2p"},
                "exporterConfig": {"enable": true, "port": 9900, "uriPrefix": "/m"},
                "registryCacheDir": "/data/cache", "registryCacheSizeGB": 20,
                "credentialFilePath": "/etc/cred.json", "logLevel": 3,
                "prefetchConfig": {"concurrency": 4}, "newThing": 1}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.p2p_agent, "http://localhost:19145/dadip2p");
        assert_eq!(c.metrics_address, "127.0.0.1:9900");
        assert_eq!(c.cache_dir, PathBuf::from("/data/cache"));
        assert_eq!(c.cache_size_mb, 20 * 1024);
        assert_eq!(c.docker_config, PathBuf::from("/etc/cred.json"));
        assert_eq!(c.log, "error");
        assert_eq!(c.prefetch_concurrency, 4);
        assert!(w.iter().any(|w| w.contains("uriPrefix")), "{w:#?}");
        assert!(w.iter().any(|w| w.starts_with("newThing")), "{w:#?}");
        // The grouped key wins over the legacy one, as in overlaybd.
        let (c, _) = from_overlaybd_json(
            r#"{"cacheConfig": {"cacheDir": "/new"}, "registryCacheDir": "/old"}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/new"));
    }

    #[test]
    fn bad_values_are_errors_that_name_the_key() {
        for (text, word) in [
            ("[]", "not a JSON object"),
            ("{\"cacheConfig\": 3}", "cacheConfig"),
            (
                "{\"cacheConfig\": {\"cacheSizeGB\": \"big\"}}",
                "cacheConfig.cacheSizeGB",
            ),
            (
                "{\"cacheConfig\": {\"cacheDir\": \"relative\"}}",
                "cache_dir",
            ),
            ("{\"logConfig\": {\"logLevel\": -1}}", "logConfig.logLevel"),
            ("{", "t:"),
        ] {
            let e = from_overlaybd_json(text, "t").unwrap_err().to_string();
            assert!(e.contains(word), "{text}: {e}");
        }
    }
}
