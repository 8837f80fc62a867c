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
    let mut r = Reader {
        what,
        warnings: Vec::new(),
        c: DaemonConfig::default(),
        grouped: Shared::default(),
        legacy: Shared::default(),
    };
    for (k, v) in &top {
        r.top_level(k, v)?;
    }
    r.finish()
}

/// Settings overlaybd has in two places: grouped (`cacheConfig.cacheDir`) and legacy
/// top-level (`registryCacheDir`); a grouped one wins, as in overlaybd.
#[derive(Default)]
struct Shared {
    log_level: Option<u64>,
    cache_type: Option<String>,
    cache_dir: Option<String>,
    cache_gb: Option<u64>,
    credentials: Option<String>,
}

struct Reader<'a> {
    what: &'a str,
    warnings: Vec<String>,
    c: DaemonConfig,
    grouped: Shared,
    legacy: Shared,
}

const LOG_PATH: &str = "not used; the daemon logs to stderr (the journal under systemd)";

impl Reader<'_> {
    fn bad(&self, key: &str, v: &Value, want: &str) -> Error {
        Error::Invalid(format!("{}: {key} is {v}, not {want}", self.what))
    }
    fn num(&self, key: &str, v: &Value, want: &str) -> Result<u64> {
        v.as_u64().ok_or_else(|| self.bad(key, v, want))
    }
    fn string(&self, key: &str, v: &Value, want: &str) -> Result<String> {
        str_of(v).ok_or_else(|| self.bad(key, v, want))
    }
    fn obj<'v>(&self, key: &str, v: &'v Value) -> Result<&'v serde_json::Map<String, Value>> {
        v.as_object().ok_or_else(|| self.bad(key, v, "an object"))
    }

    fn top_level(&mut self, k: &str, v: &Value) -> Result<()> {
        match k {
            "logLevel" => self.legacy.log_level = Some(self.num(k, v, "0..3")?),
            "logPath" => self.warnings.push(format!("{k}: {LOG_PATH}")),
            "cacheType" => self.legacy.cache_type = Some(self.string(k, v, "a string")?),
            "registryCacheDir" => self.legacy.cache_dir = Some(self.string(k, v, "a path")?),
            "registryCacheSizeGB" => {
                self.legacy.cache_gb = Some(self.num(k, v, "a number of GiB")?)
            }
            "credentialFilePath" => self.legacy.credentials = Some(self.string(k, v, "a path")?),
            "logConfig" => self.log_config(self.obj(k, v)?)?,
            "cacheConfig" => self.cache_config(self.obj(k, v)?)?,
            "credentialConfig" => {
                let o = self.obj(k, v)?;
                match o.get("mode").and_then(Value::as_str).unwrap_or("") {
                    "" | "file" => {
                        if let Some(p) = o.get("path").and_then(Value::as_str) {
                            if !p.is_empty() {
                                self.grouped.credentials = Some(p.to_string());
                            }
                        }
                    }
                    m => self.warnings.push(format!(
                        "credentialConfig.mode {m:?}: not supported; credentials come from a \
                         Docker config.json (docker_config) or the registry's hosts.toml"
                    )),
                }
            }
            "p2pConfig" => {
                let o = self.obj(k, v)?;
                if o.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    let addr = o
                        .get("address")
                        .and_then(Value::as_str)
                        .unwrap_or("http://localhost:9731/accelerator");
                    self.c.p2p_agent = if addr.contains("://") {
                        addr.to_string()
                    } else {
                        format!("http://{addr}")
                    };
                }
            }
            "exporterConfig" => self.exporter_config(self.obj(k, v)?),
            "prefetchConfig" => {
                if let Some(n) = self.obj(k, v)?.get("concurrency").and_then(Value::as_u64) {
                    self.c.prefetch_concurrency = n.max(1) as usize;
                }
            }
            "gzipCacheConfig" | "download" => {
                if v.get("enable").and_then(Value::as_bool).unwrap_or(false) {
                    self.warnings.push(if k == "download" {
                        "download: background whole-blob download is not done here; blocks \
                         are fetched when read (and prefetched from a trace)"
                            .into()
                    } else {
                        "gzipCacheConfig: TurboOCI's inflated bytes go to the main cache \
                         (cache_dir, cache_size_mb), not to a pool of their own"
                            .into()
                    });
                }
            }
            "ioEngine" | "enableAudit" | "auditPath" | "enableThread" | "registryFsVersion"
            | "userAgent" => self.warnings.push(format!("{k}: not used by overlaybd-rs")),
            "certConfig" | "serviceConfig" => self
                .warnings
                .push(format!("{k}: not supported by overlaybd-rs")),
            _ => self.warnings.push(unknown(k)),
        }
        Ok(())
    }

    fn log_config(&mut self, o: &serde_json::Map<String, Value>) -> Result<()> {
        for (k, v) in o {
            match k.as_str() {
                "logLevel" => {
                    self.grouped.log_level = Some(self.num("logConfig.logLevel", v, "0..3")?)
                }
                "logPath" if v.as_str().is_some_and(|s| !s.is_empty()) => {
                    self.warnings.push(format!("logConfig.logPath: {LOG_PATH}"))
                }
                "logPath" | "logSizeMB" | "logRotateNum" => {}
                _ => self.warnings.push(unknown(&format!("logConfig.{k}"))),
            }
        }
        Ok(())
    }

    fn cache_config(&mut self, o: &serde_json::Map<String, Value>) -> Result<()> {
        for (k, v) in o {
            let key = format!("cacheConfig.{k}");
            match k.as_str() {
                "cacheType" => self.grouped.cache_type = Some(self.string(&key, v, "a string")?),
                "cacheDir" => self.grouped.cache_dir = Some(self.string(&key, v, "a path")?),
                "cacheSizeGB" => {
                    self.grouped.cache_gb = Some(self.num(&key, v, "a number of GiB")?)
                }
                "refillSize" | "blockSize" => self.warnings.push(format!(
                    "{key}: not used; this cache fetches and stores whole compressed blocks"
                )),
                _ => self.warnings.push(unknown(&key)),
            }
        }
        Ok(())
    }

    fn exporter_config(&mut self, o: &serde_json::Map<String, Value>) {
        if !o.get("enable").and_then(Value::as_bool).unwrap_or(false) {
            return;
        }
        let port = o.get("port").and_then(Value::as_u64).unwrap_or(9863);
        self.c.metrics_address = format!("127.0.0.1:{port}");
        if let Some(p) = o.get("uriPrefix").and_then(Value::as_str) {
            if p != "/metrics" {
                self.warnings.push(format!(
                    "exporterConfig.uriPrefix {p:?}: metrics are served at /metrics"
                ));
            }
        }
        self.warnings.push(format!(
            "exporterConfig: metrics are served on 127.0.0.1:{port} only, with this daemon's \
             metric names (docs/daemon.md)"
        ));
    }

    fn finish(mut self) -> Result<(DaemonConfig, Vec<String>)> {
        let (g, l) = (self.grouped, self.legacy);
        let mut c = self.c;
        if let Some(level) = g.log_level.or(l.log_level) {
            c.log = match level {
                0 => "debug",
                1 => "info",
                2 => "warn",
                _ => "error",
            }
            .into();
        }
        match g.cache_type.or(l.cache_type).as_deref() {
            None | Some("") | Some("file") => {}
            Some(t) => self.warnings.push(format!(
                "cacheType {t:?}: this daemon's cache is a file cache in cacheDir"
            )),
        }
        c.cache_dir = PathBuf::from(
            g.cache_dir
                .or(l.cache_dir)
                .unwrap_or_else(|| "/opt/overlaybd/registry_cache".into()),
        );
        c.cache_size_mb = g.cache_gb.or(l.cache_gb).unwrap_or(4).max(1) * 1024;
        if let Some(f) = g.credentials.or(l.credentials) {
            c.docker_config = PathBuf::from(f);
        }
        c.validate()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.what)))?;
        Ok((c, self.warnings))
    }
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
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
