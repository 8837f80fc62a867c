//! What the snapshotter parses from outside: its config (TOML, and overlaybd's JSON),
//! containerd's `List` filters (then matched against labels from the input), image references
//! and TurboOCI annotations from labels, `containerd --version` output, and a metadata record
//! read back from its store. Parsers never panic; a parsed filter matches without panicking.
#![no_main]
use std::collections::BTreeMap;

use snapshotter::filter::{Fields, Filters};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 6 {
        0 => {
            let _ = snapshotter::config::Config::parse(&text, "fuzz");
        }
        1 => {
            let _ = snapshotter::compat::from_aci_json(&text, "fuzz");
        }
        2 => {
            // Filters, one per line, then labels `k=v` from the part after a NUL.
            let (f, l) = text.split_once('\0').unwrap_or((&text, ""));
            let filters: Vec<String> = f.lines().map(str::to_string).collect();
            if let Ok(fs) = Filters::parse(&filters) {
                let labels: BTreeMap<String, String> = l
                    .lines()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let _ = fs.matches(&Fields {
                    name: "n",
                    parent: "",
                    kind: "committed",
                    labels: &labels,
                });
            }
        }
        3 => {
            if let Ok(r) = overlaybd_oci::reference::Reference::parse(&text) {
                let _ = r.repo_blob_url_over("https");
            }
            let labels: BTreeMap<String, String> = text
                .lines()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let _ = overlaybd_oci::annotation::turbo_oci_target(&labels);
        }
        4 => {
            let _ = snapshotter::containerd_config::version_of(&text);
        }
        _ => {
            let _ = snapshotter::store::decode("fuzz", rest);
        }
    }
});
