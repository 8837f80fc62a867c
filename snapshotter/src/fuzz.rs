//! Body of the `snapshotter_input` fuzz target (and the unit test that runs it over
//! mutations): what the snapshotter parses from outside its process must answer or refuse,
//! never panic. The first byte picks the parser: 0 its TOML config, 1 overlaybd's JSON
//! config, 2 containerd's `List` filters (one per line) then, after a NUL, labels `k=v` (one
//! per line) that a parsed filter is matched against, 3 an image reference and the labels of
//! a TurboOCI layer, 4 `containerd --version` output, 5 a record of its metadata store.

use std::collections::BTreeMap;

use crate::filter::{Fields, Filters};

fn labels(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn input(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 6 {
        0 => {
            let _ = crate::config::Config::parse(&text, "fuzz");
        }
        1 => {
            let _ = crate::compat::from_aci_json(&text, "fuzz");
        }
        2 => {
            // Filters, one per line, then labels `k=v` from the part after a NUL.
            let (f, l) = text.split_once('\0').unwrap_or((&text, ""));
            let filters: Vec<String> = f.lines().map(str::to_string).collect();
            if let Ok(fs) = Filters::parse(&filters) {
                let _ = fs.matches(&Fields {
                    name: "n",
                    parent: "",
                    kind: "committed",
                    labels: &labels(l),
                });
            }
        }
        3 => {
            if let Ok(r) = overlaybd_oci::reference::Reference::parse(&text) {
                let _ = r.repo_blob_url_over("https");
            }
            let _ = overlaybd_oci::annotation::turbo_oci_target(&labels(&text));
        }
        4 => {
            let _ = crate::containerd_config::version_of(&text);
        }
        _ => {
            let _ = crate::store::decode("fuzz", rest);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fuzz_body_survives_mutated_inputs() {
        let conf = include_bytes!("../../deploy/config/overlaybd-snapshotter.toml");
        let seeds: Vec<Vec<u8>> = vec![
            [&[0u8][..], conf].concat(),
            b"\x01{\"root\":\"/var/lib/x\",\"address\":\"/run/x.sock\",\"rwMode\":\"overlayfs\",\"logLevel\":\"info\",\"autoRemoveDev\":false}".to_vec(),
            b"\x02labels.\"containerd.io/snapshot.ref\",kind==committed\nname~=^sha256:[0-9a-f]+$\nparent!=\"\"\0containerd.io/snapshot.ref=sha256:ab\nx=y".to_vec(),
            format!(
                "\x03127.0.0.1:5000/library/app@sha256:{}\ncontainerd.io/snapshot/overlaybd/fastoci/target-digest=sha256:{}",
                "0f".repeat(32),
                "1e".repeat(32)
            )
            .into_bytes(),
            b"\x04containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7".to_vec(),
            b"\x05{\"id\":3,\"kind\":\"committed\",\"parent\":\"p\",\"labels\":{\"a\":\"b\"},\"created\":1,\"updated\":2,\"storage\":\"remote\",\"size\":4096,\"inodes\":1}".to_vec(),
        ];
        for (k, seed) in seeds.iter().enumerate() {
            super::input(seed);
            // The first byte, which picks the parser, is kept.
            for m in test_support::mutations(seed, 1000, k as u64 + 1) {
                super::input(&m);
            }
        }
    }
}
